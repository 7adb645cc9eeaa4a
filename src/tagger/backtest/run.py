"""What ``python backtest.py`` does: rolling-origin folds, every model refit per fold, pooled metrics.

Inside each fold only the training window is used to fit: the latest ``data.val_days`` of it
are the validation slice (early stopping, temperature, confidence thresholds), the rest trains
every model. The test window is only ever predicted.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tagger.backtest.cold_start import (
    Taxonomy,
    learning_curve,
    name_seen_elsewhere,
    zero_shot_summary,
)
from tagger.backtest.folds import configured_folds
from tagger.backtest.report import write_report
from tagger.backtest.scoring import Intervals, MerchantBootstrap, interval_metrics
from tagger.data.dataset import load_dataset
from tagger.data.splits import DAY, Split
from tagger.data.tickets import Tickets
from tagger.estimators import load_model_config, make_estimator
from tagger.metrics import AGE_BUCKETS, model_age, outcomes, summary
from tagger.model.base import Estimator
from tagger.model.cold_start import with_labels
from tagger.model.ensemble import SeedEnsemble
from tagger.model.selection import Tuned
from tagger.model.stacking import ProbabilityMean
from tagger.model.thresholds import Thresholds, threshold_method
from tagger.model.variants import VARIANTS, with_experiment
from tagger.paths import resolve, shown
from tagger.protocol import Fitted, choose, fit_choose_refit

ENSEMBLE = SeedEnsemble.name  # the mean of the shared model's seeds (backtest.ensemble)
SLICES = ("no_embeddings", "new_label", "new_account", "merchant_size", "label_frequency", "model_age")


def stack_members(cfg: DictConfig) -> dict[str, list[str]]:
    """``{stack name: member model names}`` of ``backtest.stacks`` (each a list of two or more model
    names, "shared ensemble" included), named by its members joined with " + ". A stack with a
    member this run does not fit (``backtest.models`` narrowed, one seed) is left out."""
    bt = cfg.backtest
    seeds = bt.get("seeds") or [cfg.seed]
    known = {
        *bt.models,
        *([ENSEMBLE] if bt.get("ensemble") and "shared" in bt.models and len(seeds) > 1 else []),
        *(f"shared[{variant}]" for variant in bt.get("ablations") or []),
    }
    stacks = {}
    for members in bt.get("stacks") or []:
        members = [str(m) for m in members]
        if len(members) < 2:
            raise ValueError(f"backtest.stacks: {members} needs two or more models")
        if set(members) <= known:
            stacks[" + ".join(members)] = members
    return stacks


def model_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """``{name: run config}`` of every compared model: the run config with that model's ``model``
    (a baseline's from conf/model/NAME.yaml), and for each ablation of the shared model the run
    config as ``+experiment=NAME`` composes it (its callbacks and trainer included)."""
    out: dict[str, DictConfig] = {}
    shared = copy.deepcopy(cfg)
    # one fit per seed of backtest.seeds: their ensemble is scored beside them (backtest.ensemble)
    shared.model.members = 1
    for name in cfg.backtest.models:
        if name == "shared":
            if cfg.model.name != "shared":
                raise ValueError("backtest.models names 'shared' but model= selects another model")
            out[name] = shared
        else:
            out[name] = copy.deepcopy(cfg)
            out[name].model = OmegaConf.create(load_model_config(name))
    for variant in cfg.backtest.get("ablations") or []:
        if variant not in VARIANTS:
            raise ValueError(f"unknown ablation {variant!r}: {', '.join(VARIANTS)}")
        out[f"shared[{variant}]"] = with_experiment(shared, VARIANTS[variant])
    return out


@dataclass
class Collected:
    """What the folds produced. ``frames``: each model's test outcomes, fold by fold (the first
    seed's for a seeded model); ``more_seeds``: the other seeds' (headline metrics only);
    ``before_refit``: each model's selection fit scored on the same tickets; ``named``: scored with
    every merchant's declared taxonomy; ``window``/``test``: the last fold's (the learning curve's)."""

    frames: dict[str, list[pd.DataFrame]]
    more_seeds: dict[str, dict[int, list[pd.DataFrame]]]
    before_refit: dict[str, list[pd.DataFrame]]
    named: dict[str, list[pd.DataFrame]]
    fold_rows: list[dict]
    fold_info: list[dict]
    window: Tickets | None = None
    test: Tickets | None = None


def run_backtest(cfg: DictConfig) -> dict:
    """Run every fold, write the report; returns metrics.json's content."""
    started = time.perf_counter()
    single_process(cfg)
    tickets = load_dataset(cfg.data)
    folds = configured_folds(tickets.meta["unix_timestamp"].to_numpy(), cfg)
    configs = model_configs(cfg)
    # the shared model (and its ablations) is fit once per seed; baselines are deterministic
    seeds = [int(s) for s in (cfg.backtest.get("seeds") or [cfg.seed])]
    seeded = [name for name in configs if _seeded(name)]
    taxonomy = Taxonomy(resolve(cfg.data.path), tickets.meta)
    got = _run_folds(cfg, tickets, folds, configs, seeds, seeded, taxonomy)
    targets = list(cfg.backtest.precision_targets)
    output_dir = resolve(cfg.output_dir)
    pooled = {name: pd.concat(parts, ignore_index=True) for name, parts in got.frames.items()}
    named = {name: pd.concat(parts, ignore_index=True) for name, parts in got.named.items()}
    cold_start, curve = _cold_start(cfg, got, pooled, named, taxonomy, configs, targets, output_dir)
    # headline metrics: every seed's outcomes; everything else (slices, per merchant, plots, cold
    # start) reads pooled, the first seed's
    runs = {
        name: {
            seeds[0] if name in seeded else None: frame,
            **{s: pd.concat(parts, ignore_index=True) for s, parts in got.more_seeds.get(name, {}).items()},
        }
        for name, frame in pooled.items()
    }
    stacks = stack_members(cfg)
    baselines = [n for n in pooled if n not in seeded and n != ENSEMBLE and n not in stacks]
    pairs = [("shared", b) for b in baselines] if "shared" in pooled else []
    if ENSEMBLE in pooled:
        pairs += [(ENSEMBLE, b) for b in [*baselines, "shared"]]
    for name, names in stacks.items():
        pairs += [(name, b) for b in dict.fromkeys([*baselines, *names])]
    pairs += [(v, "shared") for v in _variant_names(pooled)]
    intervals = _intervals(cfg, {name: list(r.values()) for name, r in runs.items()}, targets, pairs)
    models = {
        name: _model_metrics(name, frame, runs[name], name in seeded, intervals, got.fold_rows, targets)
        for name, frame in pooled.items()
    }
    before = {name: pd.concat(parts, ignore_index=True) for name, parts in got.before_refit.items()}
    per_merchant = _per_merchant(pooled, targets)
    result = {
        "models": models,
        "seeds": seeds,
        "seeded_models": seeded,
        "intervals": _describe(intervals),
        "paired_bootstrap": _comparison(models, intervals, baselines, targets)
        if pairs and baselines
        else None,
        "ensemble": _ensemble(models, intervals, baselines, targets),
        "stacks": _stacks(models, intervals, baselines, targets, stacks),
        "variants": _variants(models, intervals, targets),
        "final_holdout": _final_holdout(cfg, folds[-1], runs, baselines, pairs, targets, stacks),
        "refit": _refit_effect(cfg, pooled, before, targets) if before else None,
        "staleness": _staleness({**pooled, **{f"{n} (no refit)": f for n, f in before.items()}}),
        "cold_start": cold_start,
        "folds": got.fold_info,
        "per_merchant_coverage_at_95_precision": {
            name: dict(zip(g["account_id"], g["coverage_at_95_precision"], strict=True))
            for name, g in per_merchant.groupby("model")
        },
        "data": {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest, "tickets": len(tickets)},
        "seconds": time.perf_counter() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    _write_outputs(output_dir, result, got.fold_rows, per_merchant, runs, before, named, seeds, seeded, curve)
    write_report(result, pooled, per_merchant, output_dir, before)
    print((output_dir / "report.md").read_text().split("\n## ", 2)[1][:4000])
    print(
        f"\nwrote {output_dir}/report.md, metrics.json, folds.csv, per_merchant.csv, outcomes.parquet, plots"
    )
    return result


def _run_folds(
    cfg: DictConfig,
    tickets: Tickets,
    folds: list,
    configs: dict[str, DictConfig],
    seeds: list[int],
    seeded: list[str],
    taxonomy: Taxonomy,
) -> Collected:
    """Fit, choose, refit and score every model on every fold."""
    ts = tickets.meta["unix_timestamp"].to_numpy()
    align = bool(cfg.data.get("align_days", False))
    refit = bool(cfg.get("refit", False))
    got = Collected(
        {name: [] for name in configs}, {n: {s: [] for s in seeds[1:]} for n in seeded}, {}, {}, [], []
    )
    fits = len(configs) + len(seeded) * (len(seeds) - 1)
    progress = tqdm(total=len(folds) * fits, desc="backtest", unit="fit")
    for fold in folds:
        train_mask, test_mask = fold.masks(ts, last=fold.index == len(folds) - 1)
        got.window, got.test = window, test = tickets.subset(train_mask), tickets.subset(test_mask)
        data = Split.of_window(
            window,
            cfg.data.val_days,
            align,
            refit,
            test=test,
            val_end=fold.validation_end(align),
            window_end=fold.train_end,
            index=fold.index,
        )
        split = data.record
        got.fold_info.append(
            {
                **fold.describe(),
                "train_tickets": split["train_tickets"],
                "val_tickets": split["val_tickets"],
                "refit_tickets": len(window) if refit else None,
                "test_tickets": len(test),
            }
        )
        fitted: dict[str, tuple] = {}
        fold_fits: dict[str, FoldFit] = {}  # each model's fit (the first seed's), for the stacks
        members: list[FoldFit] = []  # the shared model's fits, one per seed, for the ensemble
        for name, run_cfg in configs.items():
            progress.set_postfix_str(f"fold {fold.index} {name}")
            fit = fold_fit(cfg, name, run_cfg, seeds[0] if name in seeded else None, data)
            got.frames[name].append(fit.test)
            if fit.before_refit is not None:
                got.before_refit.setdefault(name, []).append(fit.before_refit)
            fitted[name] = fit.served, fit.thresholds
            fold_fits[name] = fit
            got.fold_rows.extend(fit.rows)
            members += [fit] if name == "shared" else []
            progress.update()
        if "shared" in fitted and (cfg.backtest.get("cold_start") or {}).get("declare_names"):
            for name, frame in _declared(fitted, taxonomy.at(fold.test_end), taxonomy, data).items():
                got.named.setdefault(name, []).append(frame)
        for name in seeded:
            for seed in seeds[1:]:
                progress.set_postfix_str(f"fold {fold.index} {name} seed {seed}")
                fit = fold_fit(cfg, name, configs[name], seed, data)
                got.more_seeds[name][seed].append(fit.test)
                got.fold_rows.extend(fit.rows)
                members += [fit] if name == "shared" else []
                progress.update()
        combined = []
        if cfg.backtest.get("ensemble") and len(members) > 1:
            fold_fits[ENSEMBLE] = ensemble_fit(cfg, members, data)
            combined.append((ENSEMBLE, fold_fits[ENSEMBLE]))
        for name, names in stack_members(cfg).items():
            combined.append((name, stack_fit(cfg, name, [fold_fits[m] for m in names], data)))
        for name, fit in combined:
            got.frames.setdefault(name, []).append(fit.test)
            got.before_refit.setdefault(name, []).append(fit.before_refit)
            got.fold_rows.extend(fit.rows)
    progress.close()
    return got


def _declared(fitted: dict[str, tuple], declared: dict, taxonomy: Taxonomy, data: Split) -> dict:
    """Each model that can take names, given every merchant's whole declared taxonomy at the test
    window's end, scored on the test window: ``shared+names`` and the zero-shot ``names``."""
    test = data.test
    rows = test.meta[["account_id", "label"]].astype(str).reset_index(drop=True)
    # which test labels the model's training data names elsewhere, or whose intent it lacks: the
    # same rows for every model, so computed once
    seen = data.seen.meta
    flags = {
        "name_seen_elsewhere": name_seen_elsewhere(rows, seen),
        "intent_unseen": taxonomy.intent_unseen(rows, seen),
    }
    out = {}
    for name, (estimator, thresholds) in fitted.items():
        if name == "shared":
            named = with_labels(estimator, declared)  # PyTorch: label updates need the model
        elif name == "names":
            named = _chosen(estimator).with_candidates(declared)
        else:
            continue
        scored = _fold_outcomes(named, test, data.seen, data.index, thresholds, data.trained_until)
        out[f"{name}+names" if name == "shared" else name] = scored.assign(**flags)
    return out


def _cold_start(
    cfg, got: Collected, pooled, named, taxonomy, configs, targets, output_dir
) -> tuple[dict, pd.DataFrame]:
    """The declared-taxonomy and zero-shot figures, and the learning curve on the last fold."""
    cold_start = {}
    if "shared+names" in named:
        named_all = named["shared+names"]
        cold_start = {
            "candidates": taxonomy.source,
            "overall": _scored(named_all, targets),
            "zero_shot": zero_shot_summary(named_all, pooled["shared"], named.get("names")),
        }
    curve = pd.DataFrame()
    cold = cfg.backtest.get("cold_start") or {}
    if cold.get("learning_curve") and cold.learning_curve.labels and "shared" in configs:
        curve = learning_curve(cfg, got.window, got.test, configs, output_dir / "logs" / "learning_curve")
        cold_start["learning_curve"] = curve.to_dict(orient="records")
    return cold_start, curve


def _model_metrics(
    name: str,
    frame: pd.DataFrame,
    runs: dict,
    seeded: bool,
    intervals: Intervals | None,
    fold_rows: list[dict],
    targets: list[float],
) -> dict:
    """One model's metrics.json entry: the mean over seeds, its interval, each seed, each fold, slices."""
    per_seed = {s: _scored(f, targets) for s, f in runs.items()}
    return {
        "overall": _mean_over_seeds(list(per_seed.values())),
        "ci95": intervals.ci[name] if intervals else {},
        **(
            {"seeds": {str(s): v for s, v in per_seed.items()}, "seed_spread": _spread(per_seed)}
            if seeded
            else {}
        ),
        "folds": [r for r in fold_rows if r["model"] == name],
        "slices": {
            column: {str(value): _scored(part, targets) for value, part in frame.groupby(column)}
            for column in SLICES
        },
    }


def _write_outputs(
    output_dir, result, fold_rows, per_merchant, runs, before, named, seeds, seeded, curve
) -> None:
    """metrics.json, folds.csv, per_merchant.csv, outcomes.parquet (every run, the selection fits,
    the declared-taxonomy runs) and learning_curve.csv."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    pd.DataFrame(fold_rows).astype({"seed": "Int64"}).to_csv(output_dir / "folds.csv", index=False)
    per_merchant.to_csv(output_dir / "per_merchant.csv", index=False)
    named_part = [frame.assign(model=f"{name} (declared taxonomy)") for name, frame in named.items()]
    every_run = [
        f.assign(model=n, seed=pd.Series(s, index=f.index, dtype="Int64"))  # a baseline's seed is null
        for n, r in runs.items()
        for s, f in r.items()
    ]
    unrefit = [
        f.assign(
            model=f"{n} (no refit)",
            seed=pd.Series(seeds[0] if n in seeded else None, index=f.index, dtype="Int64"),
        )
        for n, f in before.items()
    ]
    pd.concat([*every_run, *unrefit, *named_part]).to_parquet(output_dir / "outcomes.parquet", index=False)
    if len(curve):
        curve.to_csv(output_dir / "learning_curve.csv", index=False)


def single_process(cfg: DictConfig) -> None:
    """Refuse a multi-process trainer: the backtest fits dozens of models one after another, and a
    worker rank has no fold of its own to score (train.py is where DDP trains one model)."""
    trainer = cfg.trainer
    if "ddp" in str(trainer.get("strategy", "auto")) or int(trainer.get("num_nodes", 1) or 1) > 1:
        raise ValueError("the backtest runs on one process: trainer.strategy=auto (DDP is for train.py)")


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


def _seeded(name: str) -> bool:
    """Whether ``name`` is the shared model or one of its ablations (fit once per seed)."""
    return name == "shared" or name.startswith("shared[")


def _variant_names(names) -> list[str]:
    """The ablations of the shared model among ``names`` (none without the shared model itself)."""
    return [n for n in names if _seeded(n) and n != "shared"] if "shared" in names else []


@dataclass
class FoldFit:
    """One model fit in one fold: what is scored (``served``: the refit, or with ``refit: false``
    the selection fit), its thresholds (chosen on validation by the selection fit), its test
    outcomes, folds.csv rows, and the selection fit's own test outcomes when a refit replaced it."""

    served: Estimator
    thresholds: Thresholds
    test: pd.DataFrame
    rows: list[dict]
    before_refit: pd.DataFrame | None
    selection: Estimator  # the selection fit itself (the ensemble averages the seeds')


def fold_fit(cfg: DictConfig, name: str, run_cfg: DictConfig, seed: int | None, data: Split) -> FoldFit:
    """Fit one model on a fold's training slice, choose on its validation slice, refit on the whole
    window (``refit: true``) and score the test window (:func:`~tagger.protocol.fit_choose_refit`).
    ``run_cfg`` is the model's run config (:func:`model_configs`); ``seed`` overrides its ``seed``
    for this fit (None: a deterministic baseline, as it is).

    The confidence thresholds come from the selection fit's validation outcomes (out of sample)
    and are carried over to the refit, as its temperature is; the report checks the precision they
    realise on the test windows."""
    output_dir = resolve(cfg.output_dir)
    # a variant's logs and checkpoints apart from the shared model's of the same fold and seed
    tag = "" if name == "shared" else "-" + "".join(c if c.isalnum() else "_" for c in name).strip("_")
    where = f"fold{data.index}" if seed is None else f"fold{data.index}{tag}-seed{seed}"
    fit_cfg = run_cfg if seed is None else OmegaConf.merge(run_cfg, {"seed": seed})
    model_cfg = OmegaConf.to_container(fit_cfg.model, resolve=True)
    estimator = make_estimator(model_cfg, fit_cfg, log_dir=output_dir / "logs" / where)
    fitted = fit_choose_refit(estimator, data, list(cfg.backtest.precision_targets), threshold_method(cfg))
    return _scored_fit(cfg, name, fitted, data, where, seed)


def _scored_fit(
    cfg: DictConfig, name: str, fitted: Fitted, data: Split, where: str, seed: int | None = None
) -> FoldFit:
    """The served model of ``fitted`` scored on the test window with the thresholds its selection
    fit chose on validation (the selection fit too when a refit replaced it); the seed and fit times
    go into folds.csv (none for the ensemble, which is not fit)."""
    bt = cfg.backtest
    output_dir = resolve(cfg.output_dir)
    targets = list(bt.precision_targets)
    estimator, served, thresholds = fitted.selection, fitted.served, fitted.thresholds
    predictor, parity = _runtime(served, bt.runtime, data.val, output_dir / "onnx" / where)
    test_out = _fold_outcomes(predictor, data.test, data.seen, data.index, thresholds, data.trained_until)
    common = {"fold": data.index, "seed": seed}
    rows = [
        {
            "model": name,
            **common,
            "refit": data.refit,
            "fit_seconds": fitted.fit_seconds,
            "refit_seconds": fitted.refit_seconds,
            **_fit_record(estimator),
            **{f"refit_{k}": v for k, v in _fit_record(served).items() if k == "convergence" and data.refit},
            **parity,
            **_scored(test_out, targets),
        }
    ]
    before = None
    if data.refit:
        before = _fold_outcomes(estimator, data.test, data.train, data.index, thresholds, data.val_start)
        rows.append(
            {"model": f"{name} (no refit)", **common, "refit": False, "fit_seconds": fitted.fit_seconds}
            | _scored(before, targets)
        )
    return FoldFit(served, thresholds, test_out, rows, before, estimator)


def ensemble_fit(cfg: DictConfig, members: list[FoldFit], data: Split) -> FoldFit:
    """The seeds' fits in a fold as one model (:class:`SeedEnsemble`), scored like every model:
    thresholds from the selection fits combined, the refits combined served."""
    return _combined_fit(cfg, ENSEMBLE, SeedEnsemble, members, data, f"fold{data.index}-ensemble")


def stack_fit(cfg: DictConfig, name: str, members: list[FoldFit], data: Split) -> FoldFit:
    """Fitted models averaged as one (:class:`ProbabilityMean`, equal weights), scored like every
    model: thresholds from the selection fits averaged, the refits averaged served."""
    where = f"fold{data.index}-{name.replace(' ', '')}"
    return _combined_fit(cfg, name, ProbabilityMean, members, data, where)


def _combined_fit(cfg: DictConfig, name: str, combine, members: list[FoldFit], data: Split, where: str):
    """``combine(selection fits)`` chooses the thresholds, ``combine(refits)`` is served and scored."""
    selection, served = combine([m.selection for m in members]), combine([m.served for m in members])
    fitted = choose(selection, served, data, list(cfg.backtest.precision_targets), threshold_method(cfg))
    return _scored_fit(cfg, name, fitted, data, where)


def _chosen(estimator: Estimator) -> Estimator:
    """The fitted estimator itself, or the one a tuned baseline chose."""
    return estimator.best if isinstance(estimator, Tuned) else estimator


def _fit_record(estimator: Estimator) -> dict:
    """folds.csv columns of what a baseline chose on the fold's validation slice (and in how many
    fits), and how an iterative fit converged."""
    record = estimator.fit_record()
    return {k: json.dumps(v) if isinstance(v, dict) else v for k, v in record.items()}


def _fold_outcomes(
    predictor, test: Tickets, seen: Tickets, fold: int, thresholds: Thresholds, trained_until: float
) -> pd.DataFrame:
    """Every test ticket's outcome in a fold, with each row's confidence threshold per precision
    target and the model's age for it (days since the end of its training data ``seen``)."""
    # chance levels count the labels the predictor chooses among (a label table with declared
    # labels has more than training shows); an ONNX predictor has the training labels
    table = getattr(predictor, "table", None)
    out = outcomes(predictor.predict(test), test, seen.meta, None if table is None else table.sizes())
    out.insert(0, "fold", fold)
    out["model_age_days"], out["model_age"] = model_age(test.meta["unix_timestamp"].to_numpy(), trained_until)
    for level, prefix in (("leaf", ""), ("parent", "parent_")):
        for target, values in thresholds.of(out, level).items():
            out[f"{prefix}threshold_{round(target * 100)}"] = values
    return out


def _mean_over_seeds(summaries: list[dict]) -> dict:
    """One summary from each seed's: the mean of every metric (a count all seeds share stays as it is)."""
    out = {}
    for key, first in summaries[0].items():
        values = [s[key] for s in summaries]
        same_count = isinstance(first, int) and all(v == first for v in values)
        out[key] = first if same_count else float(np.mean(values))
    return out


def _spread(per_seed: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Per metric, the spread over seeds: ``sd`` (n - 1; nan for one seed), ``min`` and ``max``."""
    first = next(iter(per_seed.values()))
    out = {}
    for key in (k for k, v in first.items() if isinstance(v, float)):
        values = np.array([s[key] for s in per_seed.values()], float)
        out[key] = {
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def _comparison(
    models: dict,
    intervals: Intervals | None,
    baselines: list[str],
    targets: list[float],
    subject: str = "shared",
) -> dict:
    """``subject`` (the shared model) minus each baseline, and minus the strongest baseline on each
    metric (the best point estimate there), with the paired merchant-clustered intervals."""
    # precision at a target says whether the threshold held, not which model is better: not compared
    metrics = [m for m in interval_metrics(targets) if "precision_at_" not in m]
    shared = models[subject]["overall"]
    against: dict[str, dict[str, dict]] = {}
    for b in baselines:
        against[b] = {}
        for m in metrics:
            entry = {"difference": shared[m] - models[b]["overall"][m]}
            if intervals:
                paired = intervals.differences[(subject, b)][m]
                entry.update({"ci95": paired["ci95"], "excludes_zero": paired["excludes_zero"]})
            against[b][m] = entry
    strongest = {}
    for m in metrics:
        best = max(baselines, key=lambda b: np.nan_to_num(models[b]["overall"][m], nan=-np.inf))
        strongest[m] = {
            "baseline": best,
            "baseline_value": models[best]["overall"][m],
            "shared_value": shared[m],
            **against[best][m],
        }
    return {"strongest": strongest, "against": against}


def _final_holdout(
    cfg: DictConfig,
    fold,
    runs: dict,
    baselines: list[str],
    pairs: list,
    targets: list[float],
    stacks: dict[str, list[str]],
) -> dict | None:
    """The last fold alone when its test window lies inside the final holdout (``data.holdout_days``),
    which train.py, the ablations and every design choice never saw: its own figures, clustered
    intervals and comparison against the strongest baseline on each metric."""
    holdout_days = float(cfg.data.get("holdout_days", 0) or 0)
    if not holdout_days or fold.test_end - fold.test_start > holdout_days * DAY + 1:
        return None
    last = {name: {s: f[f["fold"] == fold.index] for s, f in r.items()} for name, r in runs.items()}
    intervals = _intervals(cfg, {name: list(r.values()) for name, r in last.items()}, targets, pairs)
    models = {
        name: {
            "overall": _mean_over_seeds([_scored(f, targets) for f in r.values()]),
            "ci95": intervals.ci[name] if intervals else {},
        }
        for name, r in last.items()
    }
    return {
        **fold.describe(),
        "models": models,
        "intervals": _describe(intervals),
        "comparison": _comparison(models, intervals, baselines, targets) if pairs and baselines else None,
        "ensemble": _ensemble(models, intervals, baselines, targets),
        "stacks": _stacks(models, intervals, baselines, targets, stacks),
        "variants": _variants(models, intervals, targets),
    }


def _variants(models: dict, intervals: Intervals | None, targets: list[float]) -> dict:
    """Each variant of the shared model (``backtest.ablations``) minus the shared model, paired."""
    return {
        v: _comparison(models, intervals, ["shared"], targets, subject=v)["against"]["shared"]
        for v in _variant_names(models)
    }


def _stacks(
    models: dict, intervals: Intervals | None, baselines: list[str], targets: list[float], stacks: dict
) -> dict:
    """Each stack against the strongest baseline on each metric and against each of its members
    (paired intervals)."""
    return {
        name: {
            "members": names,
            "comparison": _comparison(models, intervals, baselines, targets, subject=name),
            "against_members": {
                m: _comparison(models, intervals, [m], targets, subject=name)["against"][m] for m in names
            },
        }
        for name, names in stacks.items()
        if name in models and baselines
    }


def _ensemble(
    models: dict, intervals: Intervals | None, baselines: list[str], targets: list[float]
) -> dict | None:
    """The ensemble of seeds against the strongest baseline on each metric and against the shared
    model it averages (paired intervals); None without an ensemble."""
    if ENSEMBLE not in models or not baselines:
        return None
    return {
        "comparison": _comparison(models, intervals, baselines, targets, subject=ENSEMBLE),
        "against_shared": _comparison(models, intervals, ["shared"], targets, subject=ENSEMBLE)["against"][
            "shared"
        ],
    }


def _refit_effect(
    cfg: DictConfig, pooled: dict[str, pd.DataFrame], before: dict[str, pd.DataFrame], targets: list[float]
) -> dict:
    """Each model refit on the whole window against its own selection fit (the first seed's), on the
    same test tickets: both summaries and the paired merchant-clustered interval of the difference."""
    frames = {}
    for name, frame in before.items():
        frames[name], frames[f"{name} (no refit)"] = [pooled[name]], [frame]
    pairs = [(name, f"{name} (no refit)") for name in before]
    intervals = _intervals(cfg, frames, targets, pairs)
    return {
        name: {
            "refit": _scored(pooled[name], targets),
            "no_refit": _scored(frame, targets),
            "difference": intervals.differences[(name, f"{name} (no refit)")] if intervals else None,
        }
        for name, frame in before.items()
    }


def _staleness(frames: dict[str, pd.DataFrame]) -> dict:
    """Per model, its test tickets by the model's age at each (days since its training data ends):
    a refit model's test window is its days 0-13, a selection fit's (21 days staler) its days 21-34."""
    order = {name: i for i, (_, _, name) in enumerate(AGE_BUCKETS)}
    out = {}
    for name, frame in frames.items():
        parts = sorted(frame.groupby("model_age"), key=lambda kv: order.get(kv[0], len(order)))
        out[name] = {
            str(age): {
                k: v
                for k, v in summary(part).items()
                if k in ("n", "accuracy", "macro_f1_account_mean", "n_new_label", "n_new_account")
            }
            for age, part in parts
        }
    return out


def _intervals(
    cfg: DictConfig, frames: dict[str, list[pd.DataFrame]], targets: list[float], pairs: list
) -> Intervals | None:
    """The configured merchant-clustered bootstrap (``backtest.bootstrap`` resamples, ``ci_method``)
    of ``frames`` (each model's outcome frames, one per seed) and of ``pairs``' differences; None
    when the bootstrap is off."""
    bt = cfg.backtest
    if not bt.bootstrap:
        return None
    boot = MerchantBootstrap(frames, targets, int(bt.get("min_merchants", 10)))
    return boot.intervals(bt.bootstrap, cfg.seed, bt.get("ci_method", "percentile"), pairs=pairs)


def _describe(intervals: Intervals | None) -> dict | None:
    """metrics.json's account of how the intervals were made."""
    if intervals is None:
        return None
    return {
        "description": intervals.describe(),
        "unit": intervals.unit,
        "method": intervals.method,
        "resamples": intervals.resamples,
        "merchants": intervals.merchants,
        "level": intervals.level,
        "paired": f"the same {intervals.unit} draws for every model and seed",
        "seeds": "a model with several seeds: the mean over seeds of its metric on each draw",
        "undefined_resamples": intervals.undefined,
    }


def _row_thresholds(frame: pd.DataFrame, targets: list[float], level: str = "") -> dict[float, np.ndarray]:
    """Each row's threshold per target (``level`` "parent_": one level up)."""
    return {t: frame[f"{level}threshold_{round(t * 100)}"].to_numpy(float) for t in targets}


def _scored(frame: pd.DataFrame, targets: list[float]) -> dict:
    """:func:`summary` of outcome rows with their leaf and parent thresholds."""
    return summary(frame, _row_thresholds(frame, targets), _row_thresholds(frame, targets, "parent_"))


def _per_merchant(pooled: dict[str, pd.DataFrame], targets: list[float]) -> pd.DataFrame:
    rows = []
    for name, frame in pooled.items():
        for account, part in frame.groupby("account_id"):
            s = _scored(part, targets)
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
