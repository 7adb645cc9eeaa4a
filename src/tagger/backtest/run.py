"""What ``python backtest.py`` does: rolling-origin folds, every model refit per fold, pooled metrics.

Inside each fold only the training window is used to fit: the latest ``data.val_days`` of it
are the validation slice (early stopping, temperature, confidence thresholds), the rest trains
every model. The test window is only ever predicted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tagger.ablations import VARIANTS
from tagger.backtest.cold_start import (
    account_label_counts,
    learning_curve,
    name_seen_elsewhere,
    with_declared_labels,
    zero_shot_summary,
)
from tagger.backtest.folds import rolling_folds
from tagger.backtest.report import write_report
from tagger.backtest.scoring import BOOTSTRAP_METRICS, Thresholds, bootstrap, interval
from tagger.data.dataset import load_dataset
from tagger.metrics import outcomes, summary
from tagger.paths import resolve, shown
from tagger.training import load_model_config, make_estimator, time_split

SLICES = ("no_embeddings", "new_label", "new_account", "merchant_size", "label_frequency")


def model_configs(cfg: DictConfig) -> dict[str, dict]:
    """``{name: model config}`` of every compared model, ablations of the shared model included."""
    out: dict[str, dict] = {}
    for name in cfg.backtest.models:
        if name == "shared":
            out[name] = OmegaConf.to_container(cfg.model, resolve=True)
            if out[name]["name"] != "shared":
                raise ValueError("backtest.models names 'shared' but model= selects another model")
        else:
            out[name] = load_model_config(name)
    for variant in cfg.backtest.get("ablations") or []:
        if variant not in VARIANTS:
            raise ValueError(f"unknown ablation {variant!r}: {', '.join(VARIANTS)}")
        model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
        model_overrides = [o.removeprefix("model.") for o in VARIANTS[variant] if o.startswith("model.")]
        model = OmegaConf.merge(model, OmegaConf.from_dotlist(model_overrides))
        out[f"shared[{variant}]"] = OmegaConf.to_container(model)
    return out


def run_backtest(cfg: DictConfig) -> dict:
    """Run every fold, write the report; returns metrics.json's content."""
    bt = cfg.backtest
    started = time.perf_counter()
    tickets = load_dataset(cfg.data)
    ts = tickets.meta["unix_timestamp"].to_numpy()
    folds = rolling_folds(ts, bt.n_folds, bt.test_days, bt.window, bt.get("train_days"), bt.gap_days)
    configs = model_configs(cfg)
    targets = list(bt.precision_targets)
    output_dir = resolve(cfg.output_dir)
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in configs}
    fold_rows, fold_info = [], []
    cold = bt.get("cold_start") or {}
    named_frames: list[pd.DataFrame] = []
    progress = tqdm(total=len(folds) * len(configs), desc="backtest", unit="fit")
    for fold in folds:
        train_mask, test_mask = fold.masks(ts, last=fold.index == len(folds) - 1)
        window, test = tickets.subset(train_mask), tickets.subset(test_mask)
        inner_train, inner_val, split = time_split(window, cfg.data.val_days)
        fold_info.append(
            {
                **fold.describe(),
                "train_tickets": split["train_tickets"],
                "val_tickets": split["val_tickets"],
                "test_tickets": len(test),
            }
        )
        for name, model_cfg in configs.items():
            progress.set_postfix_str(f"fold {fold.index} {name}")
            estimator = make_estimator(model_cfg, cfg, log_dir=output_dir / "logs" / f"fold{fold.index}")
            t0 = time.perf_counter()
            estimator.fit(inner_train, inner_val)
            if not getattr(estimator, "fit_info", {}).get("is_global_zero", True):
                return {}
            fit_seconds = time.perf_counter() - t0
            predictor, parity = _runtime(
                estimator, bt.runtime, inner_val, output_dir / "onnx" / f"fold{fold.index}"
            )
            thresholds = Thresholds(
                outcomes(predictor.predict(inner_val), inner_val, inner_train.meta),
                targets,
                bt.min_account_val,
            )
            test_out = _fold_outcomes(predictor, test, inner_train, fold.index, thresholds)
            frames[name].append(test_out)
            if name == "shared" and cold.get("declare_names"):
                named = with_declared_labels(estimator, test)  # PyTorch: label updates need the model
                named_out = _fold_outcomes(named, test, inner_train, fold.index, thresholds)
                named_out["n_account_labels"] = account_label_counts(named_out, named.table)
                named_out["name_seen_elsewhere"] = name_seen_elsewhere(named_out, inner_train.meta)
                named_frames.append(named_out)
            fold_rows.append(
                {
                    "model": name,
                    "fold": fold.index,
                    "fit_seconds": fit_seconds,
                    **parity,
                    **summary(test_out, _row_thresholds(test_out, targets)),
                }
            )
            progress.update()
    progress.close()
    pooled = {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}
    cold_start = {}
    if named_frames:
        named_all = pd.concat(named_frames, ignore_index=True)
        cold_start = {
            "overall": summary(named_all, _row_thresholds(named_all, targets)),
            "zero_shot": zero_shot_summary(named_all, pooled["shared"]),
        }
    curve = pd.DataFrame()
    if cold.get("learning_curve") and cold.learning_curve.labels and "shared" in configs:
        curve = learning_curve(cfg, window, test, configs, output_dir / "logs" / "learning_curve")
        cold_start["learning_curve"] = curve.to_dict(orient="records")

    samples = bootstrap(pooled, bt.bootstrap, cfg.seed) if bt.bootstrap else {}
    models = {}
    for name, frame in pooled.items():
        overall = summary(frame, _row_thresholds(frame, targets))
        ci = (
            {m: interval(samples[name][:, i], overall[m]) for i, m in enumerate(BOOTSTRAP_METRICS)}
            if samples
            else {}
        )
        models[name] = {
            "overall": overall,
            "ci95": ci,
            "folds": [r for r in fold_rows if r["model"] == name],
            "slices": {
                column: {
                    str(value): summary(part, _row_thresholds(part, targets))
                    for value, part in frame.groupby(column)
                }
                for column in SLICES
            },
        }
    baselines = [n for n in pooled if n != "shared" and not n.startswith("shared[")]
    comparison = None
    if "shared" in pooled and baselines:
        best = max(baselines, key=lambda n: models[n]["overall"]["macro_f1"])
        against = {b: _paired(models, samples, b) for b in baselines}
        comparison = {"baseline": best, **against[best], "against": against}
    per_merchant = _per_merchant(pooled, targets)
    result = {
        "models": models,
        "paired_bootstrap": comparison,
        "cold_start": cold_start,
        "folds": fold_info,
        "per_merchant_coverage_at_95_precision": {
            name: dict(zip(g["account_id"], g["coverage_at_95_precision"], strict=True))
            for name, g in per_merchant.groupby("model")
        },
        "data": {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest, "tickets": len(tickets)},
        "seconds": time.perf_counter() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    pd.DataFrame(fold_rows).to_csv(output_dir / "folds.csv", index=False)
    per_merchant.to_csv(output_dir / "per_merchant.csv", index=False)
    named_part = [named_all.assign(model="shared+names")] if named_frames else []
    pd.concat([*(f.assign(model=n) for n, f in pooled.items()), *named_part]).to_parquet(
        output_dir / "outcomes.parquet", index=False
    )
    if len(curve):
        curve.to_csv(output_dir / "learning_curve.csv", index=False)
    write_report(result, pooled, per_merchant, output_dir)
    print((output_dir / "report.md").read_text().split("\n## ", 2)[1][:4000])
    print(
        f"\nwrote {output_dir}/report.md, metrics.json, folds.csv, per_merchant.csv, outcomes.parquet, plots"
    )
    return result


def _runtime(estimator, runtime: str, val, export_dir: Path):
    """The predictor to score with: the estimator itself, or (``runtime=onnx``, shared models only)
    its ONNX export run by ONNX Runtime, checked against PyTorch on the validation slice."""
    if runtime == "torch" or not hasattr(estimator, "model"):
        return estimator, {}
    if runtime != "onnx":
        raise ValueError(f"backtest.runtime must be torch or onnx, not {runtime!r}")
    from tagger.serving.onnx_export import export_estimator
    from tagger.serving.onnx_predictor import OnnxPredictor

    with_embeddings = val.subset(val.meta["has_embeddings"].to_numpy())
    serving = export_estimator(estimator, export_dir, with_embeddings, {"model_version": export_dir.name})
    return OnnxPredictor(export_dir), {f"onnx_parity_{k}": v for k, v in serving["parity"].items()}


def _fold_outcomes(predictor, test, train, fold: int, thresholds: Thresholds) -> pd.DataFrame:
    """Every test ticket's outcome in a fold, with each row's confidence threshold per precision target."""
    out = outcomes(predictor.predict(test), test, train.meta)
    out.insert(0, "fold", fold)
    for target, values in thresholds.of(out).items():
        out[f"threshold_{round(target * 100)}"] = values
    return out


def _paired(models: dict, samples: dict, baseline: str) -> dict:
    """The shared model minus ``baseline`` on each bootstrap metric, with its paired 95% interval."""
    out = {}
    for i, metric in enumerate(BOOTSTRAP_METRICS):
        diff = models["shared"]["overall"][metric] - models[baseline]["overall"][metric]
        entry = {"difference": diff}
        if samples:
            lo, hi = interval(samples["shared"][:, i] - samples[baseline][:, i], diff)
            entry.update({"ci95": [lo, hi], "excludes_zero": bool(lo > 0 or hi < 0)})
        out[metric] = entry
    return out


def _row_thresholds(frame: pd.DataFrame, targets: list[float]) -> dict[float, np.ndarray]:
    return {t: frame[f"threshold_{round(t * 100)}"].to_numpy(float) for t in targets}


def _per_merchant(pooled: dict[str, pd.DataFrame], targets: list[float]) -> pd.DataFrame:
    rows = []
    for name, frame in pooled.items():
        for account, part in frame.groupby("account_id"):
            s = summary(part, _row_thresholds(part, targets))
            rows.append(
                {
                    "model": name,
                    "account_id": account,
                    "n": s["n"],
                    "accuracy": s["accuracy"],
                    "macro_f1": s["macro_f1"],
                    **{k: v for k, v in s.items() if k.startswith("coverage")},
                }
            )
    return pd.DataFrame(rows)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
