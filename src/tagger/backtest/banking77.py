"""Banking77's official train/test split as one merchant: the shared model against the baselines on
a public split, beside the published figure.

    python -m tagger.backtest.banking77 [key=value ...]      # conf/banking77.yaml

Each utterance is a one-sentence ticket of one merchant, embedded with all-MiniLM-L6-v2 (frozen, as
everywhere here). A stratified share of train.csv (``val_share``) is the validation slice every
choice is made on (epochs, temperature, a baseline's grid point, thresholds); then every model is
refit on all of train.csv and scored once on test.csv, which nothing looked at before. The models,
their protocol and their scoring are the backtest's own (:func:`tagger.backtest.run.fold_fit`): the
shared model once per seed of ``backtest.seeds`` and their ensemble (what train.py serves). With one
merchant, intervals resample tickets (paired, the same draws for every model).

Writes ``output_dir``/metrics.json and report.md.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from tagger.backtest.report import markdown_table, render
from tagger.backtest.run import (
    ensemble_fit,
    fold_fit,
    model_configs,
    stack_fit,
    stack_members,
)
from tagger.backtest.scoring import MerchantBootstrap
from tagger.backtest.summaries import ENSEMBLE
from tagger.data.labels import normalise_label
from tagger.data.splits import Split
from tagger.data.tickets import Tickets
from tagger.embed import SentenceEmbedder
from tagger.paths import command_config, resolve, shown

DAY = 86_400.0
START = 1_672_531_200.0  # 2023-01-01: the split has no times; train.csv is "before", test.csv "after"


def split_tickets(cfg: DictConfig) -> tuple[Tickets, Tickets, Tickets, Tickets]:
    """``(train, val, window, test)``: train.csv less a stratified ``val_share``, that share, all of
    train.csv (what a refit learns from) and test.csv, as one-sentence tickets of one merchant."""
    sources = resolve(cfg.sources_dir)
    frames = {name: pd.read_csv(sources / f"{name}.csv") for name in ("train", "test")}
    for name, frame in frames.items():
        if missing := {"text", "label"} - set(frame.columns):
            raise ValueError(f"{sources / name}.csv: missing column(s) {sorted(missing)}")
    embedder = SentenceEmbedder(resolve(cfg.data.sentence_cache_dir))
    texts = pd.concat([f["text"] for f in frames.values()]).astype(str).tolist()
    vectors = np.asarray(embedder.embed(texts, progress=True), np.float32)
    rng = np.random.default_rng(cfg.seed)
    train = frames["train"]
    val_mask = np.zeros(len(train), bool)
    for rows in train.groupby("label").indices.values():  # stratified: every label in both parts
        val_mask[rng.choice(rows, max(1, round(cfg.val_share * len(rows))), replace=False)] = True
    n_train = len(train)

    def tickets(frame: pd.DataFrame, rows: np.ndarray, offset: int, at: float) -> Tickets:
        out = Tickets.from_vectors(
            [str(cfg.account_id)] * len(rows), [vectors[offset + i][None] for i in rows]
        )
        out.meta["ticket_id"] = [f"{at:.0f}-{i}" for i in rows]
        out.meta["unix_timestamp"] = at
        out.meta["label"] = frame["label"].iloc[rows].astype(str).map(normalise_label).to_numpy()
        return out

    return (
        tickets(train, np.flatnonzero(~val_mask), 0, START),
        tickets(train, np.flatnonzero(val_mask), 0, START + DAY),
        tickets(train, np.arange(n_train), 0, START),
        tickets(frames["test"], np.arange(len(frames["test"])), n_train, START + 2 * DAY),
    )


def run(cfg: DictConfig) -> dict:
    """Fit, choose, refit and score every model of ``backtest.models`` on the split."""
    started = time.perf_counter()
    train, val, window, test = split_tickets(cfg)
    data = Split(train, val, window, test, START + DAY, START + 2 * DAY, bool(cfg.refit))
    configs = model_configs(cfg)
    seeds = [int(s) for s in cfg.backtest.seeds]
    frames: dict[str, list[pd.DataFrame]] = {}
    members, fits = [], {}
    jobs = [(name, seed) for name in configs for seed in (seeds if name == "shared" else [None])]
    for name, seed in tqdm(jobs, desc="banking77", unit="fit"):
        fit = fold_fit(cfg, name, configs[name], seed, data)
        frames.setdefault(name, []).append(fit.test)
        fits.setdefault(name, fit)  # the first seed's, for the stacks
        members += [fit] if name == "shared" else []
    if cfg.backtest.ensemble and len(members) > 1:
        fits[ENSEMBLE] = ensemble_fit(cfg, members, data)
        frames[ENSEMBLE] = [fits[ENSEMBLE].test]
    stacks = stack_members(cfg)
    for name, names in stacks.items():
        frames[name] = [stack_fit(cfg, name, [fits[m] for m in names], data).test]
    targets = [float(t) for t in cfg.backtest.precision_targets]
    boot = MerchantBootstrap(frames, targets, int(cfg.backtest.min_merchants))
    subjects = ["shared", ENSEMBLE, *stacks]
    baselines = [n for n in frames if n not in subjects]
    # the point estimates with one merchant as the unit: macro-F1 over its labels is defined
    estimates = MerchantBootstrap(frames, targets, min_merchants=1).estimates()
    strongest = max(baselines, key=lambda n: estimates[n]["accuracy"], default=None)
    pairs = [(s, strongest) for s in subjects if s in frames and strongest]
    intervals = boot.intervals(int(cfg.backtest.bootstrap), int(cfg.seed), pairs=pairs)
    out = {
        "split": {
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "labels": int(train.meta["label"].nunique()),
            "sources": shown(resolve(cfg.sources_dir)),
        },
        "intervals": intervals.describe(),
        "models": {name: {"estimate": estimates[name], "ci95": intervals.ci[name]} for name in frames},
        "strongest_baseline": strongest,
        "differences": {f"{a} minus {b}": values for (a, b), values in intervals.differences.items()},
        "published": OmegaConf.to_container(cfg.published, resolve=True),
        "seeds": seeds,
        "minutes": (time.perf_counter() - started) / 60,
    }
    out_dir = resolve(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(out, indent=2, default=float))
    (out_dir / "report.md").write_text(report(out))
    print(report(out))
    print(f"wrote {shown(out_dir / 'report.md')}")
    return out


def report(out: dict) -> str:
    """The figures as one markdown page (templates/banking77.md.j2)."""
    pub = out["published"]
    models = []
    for name, m in out["models"].items():
        e = m["estimate"]
        coverage = f"{e['coverage_at_95_precision']:.3f} ({e['precision_at_95_target']:.3f})"
        accuracy = _with_ci(e["accuracy"], m["ci95"]["accuracy"])
        models.append([name, accuracy, f"{e['macro_f1']:.3f}", f"{e['top3_accuracy']:.3f}", coverage])
    models.append([f"published: {pub['source']}", f"{pub['accuracy']:.3f}", "", "", ""])
    differences = [
        [name, *(f for k in ("accuracy", "coverage_at_95_precision") for f in _difference(d[k]))]
        for name, d in out["differences"].items()
    ]
    columns = ["model", "accuracy", "macro-F1", "top-3", "coverage @95% (realised precision)"]
    tables = {
        "models_table": markdown_table(models, columns),
        "differences_table": markdown_table(
            differences, ["difference", "accuracy", "95% interval", "coverage @95%", "95% interval"]
        ),
    }
    return render("banking77.md.j2", {**out, **tables})


def _difference(paired: dict) -> tuple[str, str]:
    """A paired difference and its interval, signed."""
    return f"{paired['difference']:+.3f}", _ci(paired["ci95"])


def _ci(ci: list[float]) -> str:
    """A difference's interval, signed."""
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _with_ci(value: float, ci: list[float]) -> str:
    """A figure and its interval."""
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tagger.backtest.banking77``."""
    try:
        cfg = command_config("banking77", sys.argv[1:] if argv is None else argv, __doc__)
    except SystemExit as stop:
        return int(stop.code or 0)
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
