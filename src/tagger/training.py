"""What ``python train.py`` does: split by time, fit the main model and the baselines, compare, save.

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
from tagger.data.splits import holdout_split, time_split
from tagger.data.tickets import Tickets
from tagger.estimators import load_model_config, make_estimator, search_record
from tagger.metrics import outcomes, summary
from tagger.model.base import Estimator, Predictions
from tagger.paths import resolve, shown

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


def evaluate(pred: Predictions, val: Tickets, train: Tickets) -> tuple[dict, pd.DataFrame]:
    """Metrics overall, on merchants with fewer than 200 training tickets and on tickets with
    embeddings; and the per-ticket outcomes they come from."""
    out = outcomes(pred, val, train.meta)
    small = out["account_train_tickets"].to_numpy() < SMALL_MERCHANT
    return {
        "overall": summary(out),
        "small_merchants": summary(out[small]),
        "with_embeddings": summary(out[~out["no_embeddings"].to_numpy()]),
    }, out


def run(cfg: DictConfig) -> dict:
    """Train and compare every configured model; returns (and writes) the metrics."""
    tickets = load_dataset(cfg.data)
    align = bool(cfg.data.get("align_days", False))
    development, holdout = holdout_split(tickets, cfg.data.get("holdout_days", 0), align)
    train, val, split = time_split(development, cfg.data.val_days, align)
    split.update(holdout)
    print(_split_words(split, holdout))
    output_dir = resolve(cfg.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {}
    saved = None
    for model_cfg in model_configs(cfg):
        name = model_cfg["name"]
        print(f"\n== {name} ==")
        fitted = _fit_and_score(cfg, model_cfg, train, val, development, output_dir)
        if fitted is None:
            return {}  # a DDP worker: rank 0 evaluates and saves
        served, results[name], val_outcomes = fitted
        if name == "shared" and cfg.save_model:
            saved = _save(cfg, served, results[name], val_outcomes, tickets.digest, split, stamp)
            print(f"saved {saved}")
    out = {
        "models": results,
        "split": split,
        "data": {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest},
        "model_dir": shown(saved) if saved else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(out, indent=2, default=str))
    print("\n" + format_table(results))
    for line in _fit_lines(results, bool(cfg.get("refit", False))):
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


def _fit_and_score(cfg: DictConfig, model_cfg: dict, train, val, development, output_dir):
    """Fit one model on ``train`` choosing on ``val``, refit it on ``development`` when configured,
    and score the selection fit on ``val``: (the model to serve, its metrics record, the validation
    outcomes), or None on a DDP worker rank."""
    estimator = make_estimator(model_cfg, cfg, log_dir=output_dir / "logs")
    started = time.perf_counter()
    estimator.fit(train, val)
    fit_seconds = time.perf_counter() - started
    served, refit_seconds = estimator, 0.0
    if cfg.get("refit", False):
        # the choices are made (epoch, temperature, C or k); what is saved learns from every
        # ticket before the holdout, the validation weeks' new labels and merchants included.
        # Under DDP every rank takes part in the refit's fit, so no rank leaves before it
        started = time.perf_counter()
        served = estimator.refit(development)
        refit_seconds = time.perf_counter() - started
    if not getattr(estimator, "fit_info", {}).get("is_global_zero", True):
        return None
    started = time.perf_counter()
    pred = estimator.predict(val)
    predict_seconds = time.perf_counter() - started
    metrics, val_outcomes = evaluate(pred, val, train)
    record = {
        **metrics,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        **(
            {"fit": estimator.fit_info, "temperature": estimator.temperature}
            if hasattr(estimator, "fit_info")
            else {}
        ),
        **search_record(estimator),
        "refit": refit_record(served, refit_seconds) if served is not estimator else None,
    }
    return served, record, val_outcomes


def _save(cfg: DictConfig, served, record: dict, val_outcomes, digest: str, split: dict, stamp: str) -> Path:
    """The served shared model, its config, data record, metrics and thresholds under models_dir."""
    from tagger.model.artifacts import save_shared
    from tagger.model.thresholds import Thresholds, threshold_method

    thresholds = Thresholds(val_outcomes, list(cfg.precision_targets), threshold_method(cfg))
    data = {
        "file": str(resolve(cfg.data.path)),
        "sha256": digest,
        "split": split,
        "cache_dir": str(resolve(cfg.data.cache_dir)),
    }
    return save_shared(
        served,
        resolve(cfg.models_dir) / f"shared-{stamp}",
        OmegaConf.to_yaml(cfg, resolve=True),
        data,
        record,
        thresholds.to_dict(),
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
