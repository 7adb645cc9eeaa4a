"""Ablations of the shared model: each design choice switched off in turn, on the same split.

    python -m tagger.ablations                      # every conf/experiment/*.yaml, then the table
    python -m tagger.ablations --only mean_pooling,max_pooling data.path=/x.parquet
    python -m tagger.ablations --report             # the table from the runs already there

Each variant is a Hydra experiment config (conf/experiment/NAME.yaml); the runs are one Hydra
multirun of train.py with baselines, model saving and the refit off:

    python train.py -m "+experiment=glob(*)" compare_with=[] save_model=false refit=false

Each writes ablations_dir/NAME/metrics.json; this command then writes ablations_dir/ablations.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tagger.model.variants import experiments
from tagger.paths import PROJECT_ROOT, resolve

# scored on validation, which a refit learns from: the backtest compares refits
FIXED = ["compare_with=[]", "save_model=false", "refit=false", "trainer.enable_progress_bar=false"]


def multirun_command(names: list[str], overrides: list[str]) -> list[str]:
    """The train.py multirun over the experiment configs ``names``."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        "-m",
        f"+experiment={','.join(names)}",
        *FIXED,
        *overrides,
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the variants (a Hydra multirun) and write the table."""
    by_slug = {slug: name for name, slug in experiments().items()}
    parser = argparse.ArgumentParser(
        prog="python -m tagger.ablations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated experiments to run (of: {', '.join(sorted(by_slug))})"
    )
    parser.add_argument("--resume", action="store_true", help="skip experiments that already have results")
    parser.add_argument("--report", action="store_true", help="only write the table from existing runs")
    parser.add_argument("overrides", nargs="*", help="hydra overrides applied to every variant")
    args = parser.parse_args(argv)
    out_dir = _ablations_dir(args.overrides)
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(by_slug))
    if unknown:
        parser.error(f"unknown experiments {unknown}: conf/experiment/ has {', '.join(sorted(by_slug))}")
    slugs = _ordered(only or list(by_slug))
    todo = [s for s in slugs if not (args.resume and (out_dir / s / "metrics.json").exists())]
    if todo and not args.report:
        done = subprocess.run(multirun_command(todo, args.overrides), cwd=PROJECT_ROOT)
        if done.returncode:
            return done.returncode
    rows = {}
    for slug in slugs:
        metrics = out_dir / slug / "metrics.json"
        if metrics.exists():
            rows[by_slug[slug]] = _row(slug, json.loads(metrics.read_text())["models"]["shared"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablations.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "ablations.md").write_text(_markdown(rows))
    print(_markdown(rows))
    return 0


def _ablations_dir(overrides: list[str]) -> Path:
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("ablations_dir=")]
    return resolve(given[-1] if given else "results/ablations")


def _ordered(slugs: list[str]) -> list[str]:
    return sorted(slugs, key=lambda s: (s != "default", s))  # the default first: the others read against it


def _row(slug: str, result: dict) -> dict:
    from tagger.model.variants import variant_overrides

    return {
        "experiment": slug,
        "overrides": variant_overrides(slug),
        "overall": result["overall"],
        "small_merchants": result["small_merchants"],
        "best_epoch": result["fit"]["best_epoch"],
        "epochs": result["fit"]["epochs"],
        "fit_seconds": result["fit_seconds"],
    }


def _markdown(rows: dict) -> str:
    lines = [
        "# Ablations of the shared model",
        "",
        "train.py's validation slice of the built-in dataset: the 21 days before the final holdout (the "
        "last 14 days, which no ablation sees); every row trains from scratch. These choices are made here, "
        "so the backtest's final-holdout fold is the only figure no choice has touched.",
        "Command: `python -m tagger.ablations` (a Hydra multirun of train.py over conf/experiment/*.yaml)",
        "",
        "| variant | accuracy | macro-F1 | macro-F1 (account mean) | top-3 | acc <200 | F1 <200 "
        "| best epoch / run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        o, s = r["overall"], r["small_merchants"]
        lines.append(
            f"| {name} | {o['accuracy']:.3f} | {o['macro_f1']:.3f} | {o['macro_f1_account_mean']:.3f} | "
            f"{o['top3_accuracy']:.3f} | {s['accuracy']:.3f} | {s['macro_f1']:.3f} | "
            f"{r['best_epoch']} / {r['epochs']} |"
        )
    lines += ["", "<200: merchants with fewer than 200 training tickets."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
