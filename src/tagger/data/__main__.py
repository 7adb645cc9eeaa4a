"""``python -m tagger.data COMMAND [key=value ...]``: describe a ticket file, or build the built-in dataset.

    python -m tagger.data describe path=FILE [json=OUT.json] [quarantine=BAD.csv] [unlabelled=true]
    python -m tagger.data build [out=data/tickets.parquet] [data.build.seed=1 data.build.n_tickets=20000]

Settings: conf/describe.yaml and conf/build.yaml (whose build settings are conf/data/default.yaml's
``build:``); ``python -m tagger.data describe --help`` prints them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tagger.data.validation import SchemaError
from tagger.paths import command_config


def _describe(cfg: DictConfig) -> int:
    from tagger.data.cache import load_tickets
    from tagger.data.describe import describe, format_description

    started = time.perf_counter()
    path = Path(cfg.path)
    tickets = load_tickets(
        path, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache, require_labels=not cfg.unlabelled
    )
    stats = describe(tickets, worst=int(cfg.worst))
    stats["source"] = str(path)
    print(format_description(stats, title=f"{path}  (loaded in {time.perf_counter() - started:.2f}s)"))
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(stats, indent=2))
        print(f"wrote {cfg.json}")
    if cfg.quarantine and tickets.report.quarantined:
        import pandas as pd

        pd.DataFrame(tickets.report.rows()).to_csv(cfg.quarantine, index=False)
        print(f"wrote {len(tickets.report.quarantined):,} quarantined rows to {cfg.quarantine}")
    return 0


def _build(cfg: DictConfig) -> int:
    from tagger.synth.build import build_dataset
    from tagger.synth.config import build_config

    path = build_dataset(build_config(OmegaConf.to_container(cfg.data.build)), Path(cfg.out))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path}.build.json")
    return 0


COMMANDS = {"describe": _describe, "build": _build}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tagger.data``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        cfg = command_config(argv[0], argv[1:], __doc__)
    except SystemExit as stop:  # --help, or a mistake said in one line
        return int(stop.code or 0)
    if argv[0] == "describe" and OmegaConf.is_missing(cfg, "path"):
        print("python -m tagger.data describe: give the file as path=FILE", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](cfg)
    except (SchemaError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
