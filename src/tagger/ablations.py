"""Ablations of the shared model: each design choice switched off in turn, on the same split.

    python -m tagger.ablations [--only NAME ...] [extra hydra overrides ...]

Writes results/ablations/ablations.md and .json (one train.py run per variant, baselines off).
"""

from __future__ import annotations

import argparse
import json

from hydra import compose, initialize_config_dir

from tagger.model.variants import VARIANTS
from tagger.paths import PROJECT_ROOT
from tagger.training import run


def main(argv: list[str] | None = None) -> int:
    """Run the variants and write the table."""
    parser = argparse.ArgumentParser(
        prog="python -m tagger.ablations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run these variants only")
    parser.add_argument("--out", default="results/ablations")
    parser.add_argument("--resume", action="store_true", help="reuse variants that already have results")
    parser.add_argument("overrides", nargs="*", help="hydra overrides applied to every variant")
    args = parser.parse_args(argv)
    out_dir = PROJECT_ROOT / args.out
    rows = {}
    for name in args.only or list(VARIANTS):
        run_dir = f"{args.out}/{_slug(name)}"
        done = PROJECT_ROOT / run_dir / "metrics.json"
        if args.resume and done.exists():
            rows[name] = _row(name, json.loads(done.read_text())["models"]["shared"])
            continue
        overrides = [
            *args.overrides,
            *VARIANTS[name],
            "compare_with=[]",
            "save_model=false",
            "refit=false",  # scored on validation, which a refit learns from: the backtest compares refits
            f"output_dir={run_dir}",
            "trainer.enable_progress_bar=false",
        ]
        with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        rows[name] = _row(name, run(cfg)["models"]["shared"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablations.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "ablations.md").write_text(_markdown(rows))
    print(_markdown(rows))
    return 0


def _row(name: str, result: dict) -> dict:
    return {
        "overrides": VARIANTS[name],
        "overall": result["overall"],
        "small_merchants": result["small_merchants"],
        "best_epoch": result["fit"]["best_epoch"],
        "epochs": result["fit"]["epochs"],
        "fit_seconds": result["fit_seconds"],
    }


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _markdown(rows: dict) -> str:
    lines = [
        "# Ablations of the shared model",
        "",
        "train.py's validation slice of the built-in dataset: the 21 days before the final holdout (the "
        "last 14 days, which no ablation sees); every row trains from scratch. These choices are made here, "
        "so the backtest's final-holdout fold is the only figure no choice has touched.",
        "Command: `python -m tagger.ablations`",
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
