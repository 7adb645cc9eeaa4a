"""What ``python backtest.py`` does: rolling-origin folds, every model refit per fold, pooled metrics.

Inside each fold only the training window is used to fit: the latest ``data.val_days`` of it
are the validation slice (early stopping, temperature, confidence thresholds), the rest trains
every model. The test window is only ever predicted.

This module runs the folds and fits; the statistics are :mod:`tagger.backtest.summaries`', the data
files :mod:`tagger.backtest.outputs`', report.md :mod:`tagger.backtest.report`'s and the figures
:mod:`tagger.backtest.plots`'.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tagger.backtest.cold_start import (
    Taxonomy,
    learning_curve,
    name_seen_elsewhere,
    zero_shot_summary,
)
from tagger.backtest.folds import Fold, configured_folds
from tagger.backtest.outputs import every_outcome, write_outputs
from tagger.backtest.plots import write_plots
from tagger.backtest.report import write_report
from tagger.backtest.summaries import (
    ENSEMBLE,
    is_seeded,
    per_merchant,
    per_merchant_coverage,
    scored,
    summarise,
)
from tagger.data.dataset import load_dataset
from tagger.data.splits import Split
from tagger.data.tickets import Tickets
from tagger.estimators import load_model_config, make_estimator
from tagger.metrics import model_age, outcomes
from tagger.model.base import Estimator
from tagger.model.cold_start import with_labels
from tagger.model.ensemble import SeedEnsemble
from tagger.model.selection import Tuned
from tagger.model.stacking import ProbabilityMean
from tagger.model.thresholds import Thresholds, threshold_method
from tagger.model.variants import VARIANTS, with_experiment
from tagger.paths import resolve, shown
from tagger.protocol import Fitted, choose, fit_choose_refit


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

    def add(self, name: str, fit: FoldFit) -> None:
        """One model's fit in a fold (the first seed's, or a combination of fits): its test
        outcomes, its selection fit's when a refit replaced it, and its folds.csv rows."""
        self.frames.setdefault(name, []).append(fit.test)
        if fit.before_refit is not None:
            self.before_refit.setdefault(name, []).append(fit.before_refit)
        self.fold_rows.extend(fit.rows)


def run_backtest(cfg: DictConfig) -> dict:
    """Run every fold, write the report; returns metrics.json's content."""
    started = time.perf_counter()
    single_process(cfg)
    tickets = load_dataset(cfg.data)
    folds = configured_folds(tickets.meta["unix_timestamp"].to_numpy(), cfg)
    configs = model_configs(cfg)
    # the shared model (and its ablations) is fit once per seed; baselines are deterministic
    seeds = [int(s) for s in (cfg.backtest.get("seeds") or [cfg.seed])]
    seeded = [name for name in configs if is_seeded(name)]
    taxonomy = Taxonomy(resolve(cfg.data.path), tickets.meta)
    got = _run_folds(cfg, tickets, folds, configs, seeds, seeded, taxonomy)
    output_dir = resolve(cfg.output_dir)
    pooled, named = _pooled(got.frames), _pooled(got.named)
    cold_start, curve = _cold_start(cfg, got, pooled, named, taxonomy, configs, output_dir)
    # headline metrics: every seed's outcomes; everything else (slices, per merchant, plots, cold
    # start) reads pooled, the first seed's
    runs = {
        name: {seeds[0] if name in seeded else None: frame, **_pooled(got.more_seeds.get(name, {}))}
        for name, frame in pooled.items()
    }
    before = _pooled(got.before_refit)
    merchants = per_merchant(pooled, list(cfg.backtest.precision_targets))
    result = {
        **summarise(cfg, runs, before, got.fold_rows, seeds, seeded, stack_members(cfg), folds[-1]),
        "cold_start": cold_start,
        "folds": got.fold_info,
        "per_merchant_coverage_at_95_precision": per_merchant_coverage(merchants),
        "data": {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest, "tickets": len(tickets)},
        "seconds": time.perf_counter() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    outcomes_all = every_outcome(runs, before, named, seeds[0], seeded)
    write_outputs(output_dir, result, got.fold_rows, merchants, outcomes_all, curve)
    write_report(result, pooled, output_dir, bool(before))
    write_plots(result, pooled, merchants, output_dir, before)
    print((output_dir / "report.md").read_text().split("\n## ", 2)[1][:4000])
    print(
        f"\nwrote {output_dir}/report.md, metrics.json, folds.csv, per_merchant.csv, outcomes.parquet, plots"
    )
    return result


def _pooled(parts: dict) -> dict[str, pd.DataFrame]:
    """Each entry's outcome frames (one per fold) as one."""
    return {key: pd.concat(frames, ignore_index=True) for key, frames in parts.items()}


def _run_folds(
    cfg: DictConfig,
    tickets: Tickets,
    folds: list[Fold],
    configs: dict[str, DictConfig],
    seeds: list[int],
    seeded: list[str],
    taxonomy: Taxonomy,
) -> Collected:
    """Fit, choose, refit and score every model on every fold."""
    got = Collected(
        {name: [] for name in configs}, {n: {s: [] for s in seeds[1:]} for n in seeded}, {}, {}, [], []
    )
    fits = len(configs) + len(seeded) * (len(seeds) - 1)
    progress = tqdm(total=len(folds) * fits, desc="backtest", unit="fit")
    for fold in folds:
        data = _fold_data(cfg, tickets, fold, fold.index == len(folds) - 1, got)
        fold_fits: dict[str, FoldFit] = {}  # each model's fit (the first seed's), for the stacks
        members: list[FoldFit] = []  # the shared model's fits, one per seed, for the ensemble
        for name, run_cfg in configs.items():
            progress.set_postfix_str(f"fold {fold.index} {name}")
            fold_fits[name] = fit = fold_fit(cfg, name, run_cfg, seeds[0] if name in seeded else None, data)
            got.add(name, fit)
            members += [fit] if name == "shared" else []
            progress.update()
        if "shared" in fold_fits and (cfg.backtest.get("cold_start") or {}).get("declare_names"):
            for name, frame in _declared(fold_fits, taxonomy.at(fold.test_end), taxonomy, data).items():
                got.named.setdefault(name, []).append(frame)
        for name in seeded:
            for seed in seeds[1:]:
                progress.set_postfix_str(f"fold {fold.index} {name} seed {seed}")
                fit = fold_fit(cfg, name, configs[name], seed, data)
                got.more_seeds[name][seed].append(fit.test)
                got.fold_rows.extend(fit.rows)
                members += [fit] if name == "shared" else []
                progress.update()
        for name, fit in _combined(cfg, fold_fits, members, data):
            got.add(name, fit)
    progress.close()
    return got


def fold_split(cfg: DictConfig, tickets: Tickets, fold: Fold, last: bool) -> Split:
    """The fold's training window (split into train and validation) and its test window: the one
    split of a fold, for the backtest and the text-overlap audit alike."""
    align = bool(cfg.data.align_days)
    train_mask, test_mask = fold.masks(tickets.meta["unix_timestamp"].to_numpy(), last=last)
    return Split.of_window(
        tickets.subset(train_mask),
        cfg.data.val_days,
        align,
        bool(cfg.refit),
        test=tickets.subset(test_mask),
        val_end=fold.validation_end(align),
        window_end=fold.train_end,
        index=fold.index,
    )


def _fold_data(cfg: DictConfig, tickets: Tickets, fold: Fold, last: bool, got: Collected) -> Split:
    """The fold's training window split into train and validation (and the whole window, to refit),
    and its test window; its description goes into ``got.fold_info``, the two windows into
    ``got.window`` and ``got.test`` (the last fold's are the learning curve's)."""
    data = fold_split(cfg, tickets, fold, last)
    got.window, got.test = window, test = data.window, data.test
    refit = data.refit
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
    return data


def _combined(
    cfg: DictConfig, fold_fits: dict[str, FoldFit], members: list[FoldFit], data: Split
) -> list[tuple[str, FoldFit]]:
    """The fold's combinations of fitted models, none of them fit itself: the ensemble of the shared
    model's seeds (``members``), then each stack of ``backtest.stacks``."""
    combined = []
    if cfg.backtest.get("ensemble") and len(members) > 1:
        fold_fits[ENSEMBLE] = ensemble_fit(cfg, members, data)
        combined.append((ENSEMBLE, fold_fits[ENSEMBLE]))
    for name, names in stack_members(cfg).items():
        combined.append((name, stack_fit(cfg, name, [fold_fits[m] for m in names], data)))
    return combined


def _declared(fold_fits: dict[str, FoldFit], declared: dict, taxonomy: Taxonomy, data: Split) -> dict:
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
    for name, fit in fold_fits.items():
        if name == "shared":
            named = with_labels(fit.served, declared)  # PyTorch: label updates need the model
        elif name == "names":
            named = _chosen(fit.served).with_candidates(declared)
        else:
            continue
        scored_named = _fold_outcomes(named, test, data.seen, data.index, fit.thresholds, data.trained_until)
        out[f"{name}+names" if name == "shared" else name] = scored_named.assign(**flags)
    return out


def _cold_start(
    cfg: DictConfig,
    got: Collected,
    pooled: dict[str, pd.DataFrame],
    named: dict[str, pd.DataFrame],
    taxonomy: Taxonomy,
    configs: dict[str, DictConfig],
    output_dir: Path,
) -> tuple[dict, pd.DataFrame]:
    """The declared-taxonomy and zero-shot figures, and the learning curve on the last fold."""
    cold_start = {}
    if "shared+names" in named:
        named_all = named["shared+names"]
        cold_start = {
            "candidates": taxonomy.source,
            "overall": scored(named_all, list(cfg.backtest.precision_targets)),
            "zero_shot": zero_shot_summary(named_all, pooled["shared"], named.get("names")),
        }
    curve = pd.DataFrame()
    cold = cfg.backtest.get("cold_start") or {}
    if cold.get("learning_curve") and cold.learning_curve.labels and "shared" in configs:
        curve = learning_curve(cfg, got.window, got.test, configs, output_dir / "logs" / "learning_curve")
        cold_start["learning_curve"] = curve.to_dict(orient="records")
    return cold_start, curve


def single_process(cfg: DictConfig) -> None:
    """Refuse a multi-process trainer: the backtest fits dozens of models one after another, and a
    worker rank has no fold of its own to score (train.py is where DDP trains one model)."""
    trainer = cfg.trainer
    if "ddp" in str(trainer.strategy) or int(trainer.get("num_nodes") or 1) > 1:
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
            **scored(test_out, targets),
        }
    ]
    before = None
    if data.refit:
        before = _fold_outcomes(estimator, data.test, data.train, data.index, thresholds, data.val_start)
        rows.append(
            {"model": f"{name} (no refit)", **common, "refit": False, "fit_seconds": fitted.fit_seconds}
            | scored(before, targets)
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
