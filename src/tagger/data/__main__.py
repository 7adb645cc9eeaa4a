"""``python -m tagger.data``: describe a ticket file, or build the built-in dataset."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tagger.data.validation import SchemaError


def _describe(args: argparse.Namespace) -> int:
    from tagger.data.cache import load_tickets
    from tagger.data.describe import describe, format_description

    started = time.perf_counter()
    tickets = load_tickets(args.path, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                           require_labels=not args.unlabelled)
    stats = describe(tickets, worst=args.worst)
    stats["source"] = str(args.path)
    print(format_description(stats, title=f"{args.path}  (loaded in {time.perf_counter() - started:.2f}s)"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(stats, indent=2))
        print(f"wrote {args.json}")
    if args.quarantine and tickets.report.quarantined:
        import pandas as pd

        pd.DataFrame(tickets.report.rows()).to_csv(args.quarantine, index=False)
        print(f"wrote {len(tickets.report.quarantined):,} quarantined rows to {args.quarantine}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from tagger.synth.build import build_dataset
    from tagger.synth.config import BuildConfig

    cfg = BuildConfig.from_config(seed=args.seed, n_tickets=args.n_tickets, n_accounts=args.n_accounts)
    path = build_dataset(cfg, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path}.build.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tagger.data``."""
    parser = argparse.ArgumentParser(prog="python -m tagger.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("describe", help="statistics and validation report of a ticket parquet file")
    d.add_argument("path", type=Path, help="ticket parquet file (schema in docs/data.md)")
    d.add_argument("--json", metavar="OUT", help="also write the statistics as JSON to OUT")
    d.add_argument("--quarantine", metavar="CSV", help="write every quarantined row to CSV")
    d.add_argument("--worst", type=int, default=5, help="accounts listed by null-embedding share")
    d.add_argument("--cache-dir", default=None, help="parse cache (default data/cache/tickets)")
    d.add_argument("--no-cache", action="store_true", help="parse afresh, write no cache entry")
    d.add_argument("--unlabelled", action="store_true", help="the file has no contact_reason column")
    d.set_defaults(run=_describe)

    b = sub.add_parser("build", help="build the built-in dataset from the bundled public corpora")
    b.add_argument("--out", type=Path, default=Path("data/tickets.parquet"))
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--n-tickets", type=int, default=50_000)
    b.add_argument("--n-accounts", type=int, default=60)
    b.epilog = "Every other setting: conf/data/default.yaml (build:)."
    b.set_defaults(run=_build)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (SchemaError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
