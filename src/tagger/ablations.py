"""Ablations of the shared model: each design choice switched off in turn, on the same split.

    python -m tagger.ablations                      # every conf/experiment/*.yaml, then the table
    python -m tagger.ablations only=[mean_pooling,max_pooling] data.path=/x.parquet
    python -m tagger.ablations report=true          # the table from the runs already there

Settings: conf/ablations.yaml (only, resume, report); any other ``key=value`` is a train.py override
applied to every variant.

Each variant is a Hydra experiment config (conf/experiment/NAME.yaml); the runs are one Hydra
multirun of train.py with baselines, model saving and the refit off:

    python train.py -m "+experiment=glob(*)" compare_with=[] save_model=false refit=false

Each writes ablations_dir/NAME/metrics.json; this command then writes ablations_dir/ablations.md
and .json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tagger.model.variants import experiments
from tagger.paths import PROJECT_ROOT, command_config, compose_config, resolve

# scored on validation, which a refit learns from: the backtest compares refits; one fit per variant
# (an ensemble of seeds would hide a variant's effect behind the seeds' and cost members x the time)
FIXED = [
    "compare_with=[]",
    "save_model=false",
    "refit=false",
    "trainer.enable_progress_bar=false",
    "model.members=1",
]


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
    argv = sys.argv[1:] if argv is None else argv
    own = set(OmegaConf.to_container(compose_config("ablations")))
    mine = [a for a in argv if a.split("=", 1)[0] in own or a in ("-h", "--help") or "=" not in a]
    overrides = [a for a in argv if a not in mine]
    try:
        cfg = command_config("ablations", mine, __doc__)
    except SystemExit as stop:  # --help, or a mistake said in one line
        return int(stop.code or 0)
    out_dir = _ablations_dir(overrides)
    only = [str(s) for s in cfg.only]
    unknown = sorted(set(only) - set(by_slug))
    if unknown:
        print(
            f"unknown experiments {unknown}: conf/experiment/ has {', '.join(sorted(by_slug))}",
            file=sys.stderr,
        )
        return 2
    slugs = _ordered(only or list(by_slug))
    todo = [s for s in slugs if not (cfg.resume and (out_dir / s / "metrics.json").exists())]
    if todo and not cfg.report:
        done = subprocess.run(multirun_command(todo, overrides), cwd=PROJECT_ROOT)
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
