"""What ``python train.py`` does: split by time, fit the main model (and any baselines asked for
with ``compare_with``) by the one protocol (:mod:`tagger.protocol`), compare, save.

Each model is fit on the training slice and chooses what it must on the validation slice (epochs,
temperature, thresholds, a baseline's grid point); with ``refit: true`` it is then refit with those
choices on training and validation together, and that refit is what gets saved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from tagger.data.dataset import load_dataset
from tagger.data.splits import Split, holdout_split
from tagger.estimators import load_model_config, make_estimator, search_record
from tagger.metrics import summary
from tagger.model.base import Estimator
from tagger.model.thresholds import threshold_method
from tagger.paths import resolve, shown
from tagger.protocol import Fitted, fit_choose_refit

SMALL_MERCHANT = 200  # training tickets


def refit_record(served: Estimator, seconds: float) -> dict:
    """What the refit model learnt from: tickets, merchants and labels of the whole window."""
    table = served.table
    return {
        "seconds": seconds,
        "train_tickets": int(table.frame["n_train"].sum()),
        "accounts": table.n_accounts,
        "labels": len(table),
        **({"fit": served.fit_info} if hasattr(served, "fit_info") else {}),
    }


def model_configs(cfg: DictConfig) -> list[dict]:
    """The main model's config, then each baseline of ``compare_with`` from conf/model/NAME.yaml."""
    configs = [OmegaConf.to_container(cfg.model, resolve=True)]
    for name in cfg.get("compare_with") or []:
        if name != cfg.model.name:
            configs.append(load_model_config(name))
    return configs


def evaluate(out: pd.DataFrame) -> dict:
    """Metrics of outcome rows overall, on merchants with fewer than 200 training tickets and on
    tickets with embeddings."""
    small = out["account_train_tickets"].to_numpy() < SMALL_MERCHANT
    return {
        "overall": summary(out),
        "small_merchants": summary(out[small]),
        "with_embeddings": summary(out[~out["no_embeddings"].to_numpy()]),
    }


def run(cfg: DictConfig) -> dict:
    """Train and compare every configured model; returns (and writes) the metrics. On a worker rank
    of a multi-process fit: ``{"worker_rank": True}`` once its part (the main model's fits) is done."""
    tickets = load_dataset(cfg.data)
    align = bool(cfg.data.align_days)
    development, holdout = holdout_split(tickets, cfg.data.holdout_days, align)
    split = Split.of_window(development, cfg.data.val_days, align, bool(cfg.refit))
    record = {**split.record, **holdout}
    print(_split_words(record, holdout))
    output_dir = resolve(cfg.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {}
    saved = None
    for model_cfg in model_configs(cfg):
        name = model_cfg["name"]
        print(f"\n== {name} ==")
        estimator = make_estimator(model_cfg, cfg, log_dir=output_dir / "logs")
        fitted = fit_choose_refit(estimator, split, list(cfg.precision_targets), threshold_method(cfg))
        if not fitted.is_global_zero:
            return {"worker_rank": True}  # rank 0 scores, compares and saves
        results[name] = _record(fitted, split)
        if name == "shared" and cfg.save_model:
            saved = _save(cfg, fitted, results[name], tickets.digest, record, stamp)
            print(f"saved {saved}")
    out = {
        "models": results,
        "split": record,
        "data": {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest},
        "model_dir": shown(saved) if saved else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(out, indent=2, default=str))
    print("\n" + format_table(results))
    for line in _fit_lines(results, split.refit):
        print(line)
    print(f"\nwrote {output_dir / 'metrics.json'}")
    return {**out, "model_dir": str(saved) if saved else None}  # in process: the path as it is


def _split_words(split: dict, holdout: dict) -> str:
    return (
        f"split: {split['train_tickets']:,} training tickets before {split['cutoff'][:16]}, "
        f"{split['val_tickets']:,} validation tickets after"
        + (
            f"; the final holdout ({holdout['holdout_tickets']:,} tickets from "
            f"{holdout['holdout_start'][:16]}) is left out, for the backtest alone"
            if holdout["holdout_days"]
            else ""
        )
    )


def _record(fitted: Fitted, split: Split) -> dict:
    """One model's metrics.json entry: the selection fit scored on validation, what it chose, and
    what its refit learnt from."""
    metrics = evaluate(fitted.val_outcomes)
    selection = fitted.selection
    return {
        **metrics,
        "fit_seconds": fitted.fit_seconds,
        "predict_seconds": fitted.predict_seconds,
        **(
            {"fit": selection.fit_info, "temperature": selection.temperature}
            if hasattr(selection, "fit_info")
            else {}
        ),
        **search_record(selection),
        "refit": refit_record(fitted.served, fitted.refit_seconds or 0.0) if fitted.refitted else None,
    }


def _save(cfg: DictConfig, fitted: Fitted, record: dict, digest: str, split: dict, stamp: str) -> Path:
    """The served shared model, its config, data record, metrics and thresholds under models_dir."""
    from tagger.model.artifacts import save_shared

    data = {
        "file": str(resolve(cfg.data.path)),
        "sha256": digest,
        "split": split,
        "cache_dir": str(resolve(cfg.data.cache_dir)),
    }
    return save_shared(
        fitted.served,
        resolve(cfg.models_dir) / f"shared-{stamp}",
        OmegaConf.to_yaml(cfg, resolve=True),
        data,
        record,
        fitted.thresholds.to_dict(),
    )


def _fit_lines(results: dict, refit: bool) -> list[str]:
    """Epochs, speed and temperature of each fit, and what each refit learnt from."""
    lines = []
    for name, r in results.items():
        if "fit" in r:
            for who, f in _fits(name, r):
                lines.append(
                    f"{who}: {f['epochs']} epochs (best {f['best_epoch']}), "
                    f"{f['tickets_per_second']:,.0f} training tickets/s, "
                    f"temperature {f.get('temperature', r.get('temperature', 1.0)):.2f}"
                )
    for name, r in results.items():
        if r.get("refit"):
            f = r["refit"]
            lines.append(
                f"{name}: refit on the whole window, {f['train_tickets']:,} tickets, "
                f"{f['accounts']} merchants, {f['labels']:,} labels ({f['seconds']:.0f} s)"
            )
    if refit:
        lines.append(
            "(the table scores each model's fit before its refit, which has learnt from the validation slice)"
        )
    return lines


def _fits(name: str, record: dict) -> list[tuple[str, dict]]:
    """``(who, fit record)`` of a model's fit, or of each member of an ensemble of seeds."""
    members = record["fit"].get("members")
    if not members:
        return [(name, record["fit"])]
    return [(f"{name} member {i} (seed {m['seed']})", m) for i, m in enumerate(members)]


def format_table(results: dict) -> str:
    """The validation table: one row per model."""
    head = (
        f"{'model':<10} {'accuracy':>8} {'macro-F1':>8} {'top-3':>7} {'acc <200':>8} {'F1 <200':>8} "
        f"{'fit s':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        o, s = r["overall"], r["small_merchants"]
        lines.append(
            f"{name:<10} {o['accuracy']:>8.3f} {o['macro_f1']:>8.3f} {o['top3_accuracy']:>7.3f} "
            f"{s.get('accuracy', float('nan')):>8.3f} {s.get('macro_f1', float('nan')):>8.3f} "
            f"{r['fit_seconds']:>7.1f}"
        )
    lines.append(
        "(validation = the latest slice of time; <200 = merchants with fewer than 200 training tickets)"
    )
    return "\n".join(lines)
