"""The backtest's statistics: each model's metrics over seeds, folds and slices, the paired comparisons
(against the baselines, the shared model, a stack's members, a model's own selection fit), the final
holdout, staleness and the per-merchant table, from the test outcomes the folds produced
(:mod:`tagger.backtest.run`). The bootstrap itself is :mod:`tagger.backtest.scoring`'s."""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from tagger.backtest.scoring import Intervals, MerchantBootstrap, interval_metrics
from tagger.data.splits import DAY
from tagger.metrics import AGE_BUCKETS, summary
from tagger.model.ensemble import SeedEnsemble

ENSEMBLE = SeedEnsemble.name  # the mean of the shared model's seeds (backtest.ensemble)
SLICES = ("no_embeddings", "new_label", "new_account", "merchant_size", "label_frequency", "model_age")


def is_seeded(name: str) -> bool:
    """Whether ``name`` is the shared model or one of its ablations (fit once per seed)."""
    return name == "shared" or name.startswith("shared[")


def variant_names(names) -> list[str]:
    """The ablations of the shared model among ``names`` (none without the shared model itself)."""
    return [n for n in names if is_seeded(n) and n != "shared"] if "shared" in names else []


def comparison_pairs(
    names: list[str], seeded: list[str], stacks: dict[str, list[str]]
) -> tuple[list[str], list[tuple[str, str]]]:
    """``(baselines, pairs)``: the models that are baselines (neither seeded, the ensemble nor a
    stack), and every (subject, other) pair whose paired difference is bootstrapped: the shared
    model, the ensemble and each stack against the baselines (the ensemble also against the shared
    model, a stack against its members), each variant against the shared model."""
    baselines = [n for n in names if n not in seeded and n != ENSEMBLE and n not in stacks]
    pairs = [("shared", b) for b in baselines] if "shared" in names else []
    if ENSEMBLE in names:
        pairs += [(ENSEMBLE, b) for b in [*baselines, "shared"]]
    for name, members in stacks.items():
        pairs += [(name, b) for b in dict.fromkeys([*baselines, *members])]
    pairs += [(v, "shared") for v in variant_names(names)]
    return baselines, pairs


def summarise(
    cfg: DictConfig,
    runs: dict[str, dict],
    before: dict[str, pd.DataFrame],
    fold_rows: list[dict],
    seeds: list[int],
    seeded: list[str],
    stacks: dict[str, list[str]],
    last_fold,
) -> dict:
    """metrics.json's statistics, ``models`` to ``staleness`` in its order. ``runs``: each model's
    pooled test outcomes per seed (the first is what slices, plots and the per-merchant table read;
    None the key of a baseline's); ``before``: each model's selection fit's outcomes (the first
    seed's) when a refit replaced it; ``fold_rows``: folds.csv's rows; ``last_fold``: the fold whose
    test window may be the final holdout."""
    targets = list(cfg.backtest.precision_targets)
    pooled = {name: next(iter(r.values())) for name, r in runs.items()}
    baselines, pairs = comparison_pairs(list(runs), seeded, stacks)
    intervals = configured_intervals(
        cfg, {name: list(r.values()) for name, r in runs.items()}, targets, pairs
    )
    models = {
        name: model_metrics(name, r, name in seeded, intervals, fold_rows, targets)
        for name, r in runs.items()
    }
    return {
        "models": models,
        "seeds": seeds,
        "seeded_models": seeded,
        "intervals": describe_intervals(intervals),
        "paired_bootstrap": comparison(models, intervals, baselines, targets)
        if pairs and baselines
        else None,
        "ensemble": ensemble_comparison(models, intervals, baselines, targets),
        "stacks": stack_comparisons(models, intervals, baselines, targets, stacks),
        "variants": variant_comparisons(models, intervals, targets),
        "final_holdout": final_holdout(cfg, last_fold, runs, baselines, pairs, targets, stacks),
        "refit": refit_effect(cfg, pooled, before, targets) if before else None,
        "staleness": staleness({**pooled, **{f"{n} (no refit)": f for n, f in before.items()}}),
    }


def model_metrics(
    name: str,
    runs: dict,
    seeded: bool,
    intervals: Intervals | None,
    fold_rows: list[dict],
    targets: list[float],
) -> dict:
    """One model's metrics.json entry: the mean over seeds, its interval, each seed, each fold, and
    the slices of the first seed's outcomes."""
    per_seed = {s: scored(f, targets) for s, f in runs.items()}
    frame = next(iter(runs.values()))
    return {
        "overall": mean_over_seeds(list(per_seed.values())),
        "ci95": intervals.ci[name] if intervals else {},
        **(
            {"seeds": {str(s): v for s, v in per_seed.items()}, "seed_spread": seed_spread(per_seed)}
            if seeded
            else {}
        ),
        "folds": [r for r in fold_rows if r["model"] == name],
        "slices": {
            column: {str(value): scored(part, targets) for value, part in frame.groupby(column)}
            for column in SLICES
        },
    }


def mean_over_seeds(summaries: list[dict]) -> dict:
    """One summary from each seed's: the mean of every metric (a count all seeds share stays as it is)."""
    out = {}
    for key, first in summaries[0].items():
        values = [s[key] for s in summaries]
        same_count = isinstance(first, int) and all(v == first for v in values)
        out[key] = first if same_count else float(np.mean(values))
    return out


def seed_spread(per_seed: dict[int, dict]) -> dict[str, dict[str, float]]:
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


def comparison(
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


def final_holdout(
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
    holdout_days = float(cfg.data.holdout_days)
    if not holdout_days or fold.test_end - fold.test_start > holdout_days * DAY + 1:
        return None
    last = {name: {s: f[f["fold"] == fold.index] for s, f in r.items()} for name, r in runs.items()}
    intervals = configured_intervals(
        cfg, {name: list(r.values()) for name, r in last.items()}, targets, pairs
    )
    models = {
        name: {
            "overall": mean_over_seeds([scored(f, targets) for f in r.values()]),
            "ci95": intervals.ci[name] if intervals else {},
        }
        for name, r in last.items()
    }
    return {
        **fold.describe(),
        "models": models,
        "intervals": describe_intervals(intervals),
        "comparison": comparison(models, intervals, baselines, targets) if pairs and baselines else None,
        "ensemble": ensemble_comparison(models, intervals, baselines, targets),
        "stacks": stack_comparisons(models, intervals, baselines, targets, stacks),
        "variants": variant_comparisons(models, intervals, targets),
    }


def variant_comparisons(models: dict, intervals: Intervals | None, targets: list[float]) -> dict:
    """Each variant of the shared model (``backtest.ablations``) minus the shared model, paired."""
    return {
        v: comparison(models, intervals, ["shared"], targets, subject=v)["against"]["shared"]
        for v in variant_names(models)
    }


def stack_comparisons(
    models: dict, intervals: Intervals | None, baselines: list[str], targets: list[float], stacks: dict
) -> dict:
    """Each stack against the strongest baseline on each metric and against each of its members
    (paired intervals)."""
    return {
        name: {
            "members": names,
            "comparison": comparison(models, intervals, baselines, targets, subject=name),
            "against_members": {
                m: comparison(models, intervals, [m], targets, subject=name)["against"][m] for m in names
            },
        }
        for name, names in stacks.items()
        if name in models and baselines
    }


def ensemble_comparison(
    models: dict, intervals: Intervals | None, baselines: list[str], targets: list[float]
) -> dict | None:
    """The ensemble of seeds against the strongest baseline on each metric and against the shared
    model it averages (paired intervals); None without an ensemble."""
    if ENSEMBLE not in models or not baselines:
        return None
    return {
        "comparison": comparison(models, intervals, baselines, targets, subject=ENSEMBLE),
        "against_shared": comparison(models, intervals, ["shared"], targets, subject=ENSEMBLE)["against"][
            "shared"
        ],
    }


def refit_effect(
    cfg: DictConfig, pooled: dict[str, pd.DataFrame], before: dict[str, pd.DataFrame], targets: list[float]
) -> dict:
    """Each model refit on the whole window against its own selection fit (the first seed's), on the
    same test tickets: both summaries and the paired merchant-clustered interval of the difference."""
    frames = {}
    for name, frame in before.items():
        frames[name], frames[f"{name} (no refit)"] = [pooled[name]], [frame]
    pairs = [(name, f"{name} (no refit)") for name in before]
    intervals = configured_intervals(cfg, frames, targets, pairs)
    return {
        name: {
            "refit": scored(pooled[name], targets),
            "no_refit": scored(frame, targets),
            "difference": intervals.differences[(name, f"{name} (no refit)")] if intervals else None,
        }
        for name, frame in before.items()
    }


def staleness(frames: dict[str, pd.DataFrame]) -> dict:
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


def configured_intervals(
    cfg: DictConfig, frames: dict[str, list[pd.DataFrame]], targets: list[float], pairs: list
) -> Intervals | None:
    """The configured merchant-clustered bootstrap (``backtest.bootstrap`` resamples, ``ci_method``)
    of ``frames`` (each model's outcome frames, one per seed) and of ``pairs``' differences; None
    when the bootstrap is off."""
    bt = cfg.backtest
    if not bt.bootstrap:
        return None
    boot = MerchantBootstrap(frames, targets, int(bt.min_merchants))
    return boot.intervals(bt.bootstrap, cfg.seed, bt.ci_method, pairs=pairs)


def describe_intervals(intervals: Intervals | None) -> dict | None:
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


def scored(frame: pd.DataFrame, targets: list[float]) -> dict:
    """:func:`~tagger.metrics.summary` of outcome rows with their leaf and parent thresholds."""
    return summary(frame, _row_thresholds(frame, targets), _row_thresholds(frame, targets, "parent_"))


def per_merchant(pooled: dict[str, pd.DataFrame], targets: list[float]) -> pd.DataFrame:
    """per_merchant.csv: every model's n, accuracy, macro-F1 and coverages, merchant by merchant."""
    rows = []
    for name, frame in pooled.items():
        for account, part in frame.groupby("account_id"):
            s = scored(part, targets)
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


def per_merchant_coverage(table: pd.DataFrame) -> dict[str, dict]:
    """metrics.json's per-merchant coverage at 95% precision of every model, from :func:`per_merchant`."""
    return {
        name: dict(zip(g["account_id"], g["coverage_at_95_precision"], strict=True))
        for name, g in table.groupby("model")
    }
