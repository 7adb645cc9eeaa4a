"""Backtest statistics over per-ticket outcomes: merchant-clustered paired bootstrap resamples
and their intervals (the confidence thresholds: :mod:`tagger.model.thresholds`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

from tagger.metrics import auto_tagged, class_codes

CI_METHODS = ("percentile", "bca")
# below this a spread or a difference is float rounding (a mean over seeds minus a baseline that
# scores the same), not a difference
_TOLERANCE = 1e-12
# the columns of merchant_statistics before the per-target ones; every bootstrapped metric is a
# ratio of two of their sums (own_macro_f1 / has_macro_f1 gives the mean over merchants)
_BASE_COLUMNS = ("n", "correct", "top3", "f1_sum", "classes", "own_macro_f1", "has_macro_f1")


def _key(target: float) -> str:
    """``0.95`` -> ``"95"``, as in ``threshold_95`` and ``coverage_at_95_precision``."""
    return f"{round(target * 100)}"


def interval_metrics(targets: Sequence[float]) -> tuple[str, ...]:
    """The metrics the bootstrap gives intervals for, named as :func:`tagger.metrics.summary` names them."""
    per_target = [
        name
        for t in targets
        for name in (
            f"coverage_at_{_key(t)}_precision",
            f"precision_at_{_key(t)}_target",
            f"hier_coverage_at_{_key(t)}_precision",
            f"hier_precision_at_{_key(t)}_target",
        )
    ]
    return ("accuracy", "macro_f1", "macro_f1_account_mean", "top3_accuracy", *per_target)


def merchant_statistics(
    frame: pd.DataFrame, targets: Sequence[float] = (), merchants: pd.Index | None = None
) -> pd.DataFrame:
    """Per merchant (index ``account_id``; ``merchants`` reorders it, an absent one is all zeros) the
    sums every bootstrapped metric is a ratio of: tickets ``n``, ``correct``, ``top3`` hits, the sum of
    its classes' F1 ``f1_sum`` and their number ``classes`` (classes seen in truth or prediction,
    abstentions no class, as :func:`tagger.metrics.macro_f1_score`), its own macro-F1 with
    ``has_macro_f1`` 1 where defined, and per precision target NN ``auto_NN`` (confidence >= the
    row's ``threshold_NN``, not abstained) and ``auto_correct_NN``, and ``hauto_NN`` and
    ``hauto_correct_NN`` of the answers at the leaf or one level up (``parent_threshold_NN``; none
    without that column).

    This is exact, not an approximation: a ticket is only ever predicted among its own merchant's
    labels and a class is an (account, label) key, so each class's F1 depends on one merchant's
    tickets only."""
    accounts = frame["account_id"].astype(str).to_numpy()
    true, pred = class_codes(frame)
    n_codes = int(max(true.max(initial=-1), pred.max(initial=-1))) + 1
    answered = pred >= 0
    support = np.bincount(true, minlength=n_codes)
    predicted = np.bincount(pred[answered], minlength=n_codes)
    hits = np.bincount(true[true == pred], minlength=n_codes)
    # an abstention's key is factorized too but never occurs: only classes in truth or prediction count
    seen = (support + predicted) > 0
    f1 = np.divide(2.0 * hits, support + predicted, out=np.zeros(n_codes), where=seen)
    code_account = np.empty(n_codes, object)
    code_account[true] = accounts
    code_account[pred[answered]] = accounts[answered]
    classes = (
        pd.DataFrame({"account_id": code_account[seen], "f1": f1[seen]})
        .groupby("account_id")["f1"]
        .agg(["sum", "size"])
    )
    rows = pd.DataFrame(
        {
            "account_id": accounts,
            "n": 1.0,
            "correct": (true == pred).astype(float),  # as accuracy_score counts it
            "top3": frame["top3_hit"].to_numpy(float),
        }
    )
    correct = frame["correct"].to_numpy(bool)
    per_target = []
    for t in targets:
        k = _key(t)
        parent = frame[f"parent_threshold_{k}"].to_numpy(float) if f"parent_threshold_{k}" in frame else None
        at_leaf, at_parent, right = auto_tagged(frame, frame[f"threshold_{k}"].to_numpy(float), parent)
        rows[f"auto_{k}"] = at_leaf.astype(float)
        rows[f"auto_correct_{k}"] = (at_leaf & correct).astype(float)
        rows[f"hauto_{k}"] = (at_leaf | at_parent).astype(float)
        rows[f"hauto_correct_{k}"] = right.astype(float)
        per_target += [f"auto_{k}", f"auto_correct_{k}", f"hauto_{k}", f"hauto_correct_{k}"]
    out = rows.groupby("account_id").sum()
    out["f1_sum"] = classes["sum"].reindex(out.index).fillna(0.0)
    out["classes"] = classes["size"].reindex(out.index).fillna(0).astype(float)
    has = out["classes"] > 0
    out["own_macro_f1"] = np.where(has, out["f1_sum"] / out["classes"].where(has, 1.0), 0.0)
    out["has_macro_f1"] = has.astype(float)
    out = out[[*_BASE_COLUMNS, *per_target]]
    return out if merchants is None else out.reindex(merchants, fill_value=0.0)


def _metrics_of(totals: np.ndarray, columns: Sequence[str], targets: Sequence[float]) -> np.ndarray:
    """Each metric of :func:`interval_metrics` from summed merchant statistics ``[..., columns]``;
    a ratio whose denominator is 0 (nothing auto-tagged) is nan."""
    c = {name: totals[..., i] for i, name in enumerate(columns)}
    with np.errstate(invalid="ignore", divide="ignore"):
        out = [
            c["correct"] / c["n"],
            c["f1_sum"] / c["classes"],
            c["own_macro_f1"] / c["has_macro_f1"],
            c["top3"] / c["n"],
        ]
        for t in targets:
            k = _key(t)
            out += [c[f"auto_{k}"] / c["n"], c[f"auto_correct_{k}"] / c[f"auto_{k}"]]
            out += [c[f"hauto_{k}"] / c["n"], c[f"hauto_correct_{k}"] / c[f"hauto_{k}"]]
    return np.stack(out, axis=-1)


def draw_counts(draws: np.ndarray, n_merchants: int) -> np.ndarray:
    """How often each merchant occurs in each row of merchant indices ``draws [..., k]``:
    ``[..., n_merchants]`` (a merchant drawn twice weighs twice: its tickets and classes twice)."""
    flat = draws.reshape(-1, draws.shape[-1])
    offsets = np.arange(len(flat))[:, None] * n_merchants
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * n_merchants)
    return counts.reshape(*draws.shape[:-1], n_merchants).astype(float)


@dataclass
class Intervals:
    """Bootstrap intervals of every model and of paired differences.

    ``ci[model][metric]`` and ``differences[(a, b)][metric]`` (a minus b: ``difference``, ``ci95``,
    ``excludes_zero``); ``undefined[model][metric]``: resamples where a ratio was 0/0 (nothing
    auto-tagged), left out of that metric's interval."""

    method: str
    resamples: int
    merchants: int
    level: float
    estimates: dict[str, dict[str, float]]
    ci: dict[str, dict[str, list[float]]]
    differences: dict[tuple[str, str], dict[str, dict]]
    undefined: dict[str, dict[str, int]]

    unit: str = "merchant"

    def describe(self) -> str:
        """The interval's kind in words, e.g. "merchant-clustered, 2000 resamples, percentile"."""
        if self.unit == "ticket":
            return (
                f"ticket-level (only {self.merchants} merchants: too few to resample), "
                f"{self.resamples} resamples, {self.method}; no interval for macro-F1"
            )
        return f"merchant-clustered, {self.resamples} resamples, {self.method}"


def _ticket_key(frame: pd.DataFrame) -> pd.Series:
    """One cluster per ticket (and fold, where a ticket could recur), equal across models."""
    fold = frame["fold"].astype(str) if "fold" in frame else ""
    return fold + ":" + frame["ticket_id"].astype(str)


class MerchantBootstrap:
    """Merchant-clustered, paired bootstrap of headline metrics from per-merchant sufficient statistics.

    Tickets of one merchant are not independent, so the resampling unit is the merchant: a resample
    draws merchants with replacement, each bringing all of its test tickets (of every fold, pooled).
    The same draws serve every model, so differences are paired. ``frames`` maps a model to its
    outcome frames, one per seed (a deterministic model has one); a model's statistic on the original
    sample is the mean over its seeds of the per-seed metric. A draw also draws the seeds with
    replacement (the same seed draw for every model with as many seeds), so an interval says how far
    another set of seeds could move the figure as well as other merchants.

    With fewer than ``min_merchants`` merchants a merchant resample says nothing (one merchant gives
    a point): the unit becomes the ticket (``unit == "ticket"``), each ticket its own cluster, and
    macro-F1, which is not a sum over tickets, gets no interval.
    """

    def __init__(
        self, frames: Mapping[str, Sequence[pd.DataFrame]], targets: Sequence[float], min_merchants: int = 10
    ):
        self.targets = list(targets)
        self.metrics = interval_metrics(self.targets)
        accounts = {a for parts in frames.values() for f in parts for a in f["account_id"].astype(str)}
        self.unit = "merchant" if len(accounts) >= min_merchants else "ticket"
        self.n_merchants = len(accounts)
        if self.unit == "ticket":  # every ticket its own cluster, the same key in every model's frame
            frames = {
                name: [f.assign(account_id=_ticket_key(f)) for f in parts] for name, parts in frames.items()
            }
            accounts = {a for parts in frames.values() for f in parts for a in f["account_id"]}
        self.merchants = pd.Index(sorted(accounts), name="account_id")
        self.columns: list[str] = []
        self.stats: dict[str, np.ndarray] = {}  # model -> [seeds, merchants, columns]
        for name, parts in frames.items():
            tables = [merchant_statistics(f, self.targets, self.merchants) for f in parts]
            self.columns = list(tables[0].columns)
            self.stats[name] = np.stack([t.to_numpy(float) for t in tables])

    def statistic(self, name: str, weights: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
        """Every metric of ``name`` with merchant ``weights [..., merchants]`` (how often each is
        drawn; all ones is the original sample): ``[..., metrics]``, the mean over its seeds, or over
        ``seeds [..., n_seeds]`` (how often each seed is drawn) when given."""
        totals = np.einsum("...m,smc->s...c", weights, self.stats[name])
        per_seed = _metrics_of(totals, self.columns, self.targets)
        if seeds is None or len(per_seed) == 1:
            return per_seed.mean(axis=0)
        share = seeds / seeds.sum(axis=-1, keepdims=True)
        return np.einsum("s...c,...s->...c", per_seed, share)

    def estimates(self) -> dict[str, dict[str, float]]:
        """Each model's metrics on the original sample (equal to :func:`tagger.metrics.summary`)."""
        ones = np.ones(len(self.merchants))
        return {
            name: dict(zip(self.metrics, self.statistic(name, ones).tolist(), strict=True))
            for name in self.stats
        }

    def distributions(self, n: int, seed: int, chunk: int = 1 << 22) -> dict[str, np.ndarray]:
        """``{model: [n, metrics]}`` over ``n`` draws of merchants, the same draws for every model."""
        rng = np.random.default_rng(seed)
        m = len(self.merchants)
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.stats}
        step = max(1, chunk // max(m, 1))  # bounds the [draws, merchants] weight matrix in memory
        n_seeds = sorted({len(s) for s in self.stats.values()})
        for start in range(0, n, step):
            size = min(step, n - start)
            weights = draw_counts(rng.integers(0, m, (size, m)), m)
            seeds = {s: draw_counts(rng.integers(0, s, (size, s)), s) for s in n_seeds}
            for name, table in self.stats.items():
                out[name].append(self.statistic(name, weights, seeds[len(table)]))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def intervals(
        self,
        n: int,
        seed: int,
        method: str = "percentile",
        level: float = 0.95,
        pairs: Sequence[tuple[str, str]] = (),
    ) -> Intervals:
        """Intervals of every model's metrics and of each pair's difference (first minus second)."""
        if method not in CI_METHODS:
            raise ValueError(f"ci_method must be one of {', '.join(CI_METHODS)}, not {method!r}")
        if self.unit == "ticket":  # BCa's jackknife would leave out one ticket at a time: m^2 work
            method = "percentile"
        samples = self.distributions(n, seed)
        estimates = self.estimates()
        ci: dict[str, dict[str, list[float]]] = {}
        undefined: dict[str, dict[str, int]] = {}
        for name in self.stats:
            ci[name] = {}
            for k, metric in enumerate(self.metrics):
                dist = samples[name][:, k]
                ci[name][metric] = self._interval(
                    dist, method, level, lambda w, a=name, k=k: self.statistic(a, w)[..., k]
                )
                if (missing := int((~np.isfinite(dist)).sum())) and np.isfinite(estimates[name][metric]):
                    undefined.setdefault(name, {})[metric] = missing
        differences: dict[tuple[str, str], dict[str, dict]] = {}
        for a, b in pairs:
            differences[(a, b)] = {}
            for k, metric in enumerate(self.metrics):
                diff = estimates[a][metric] - estimates[b][metric]
                lo, hi = self._interval(
                    samples[a][:, k] - samples[b][:, k],
                    method,
                    level,
                    lambda w, a=a, b=b, k=k: self.statistic(a, w)[..., k] - self.statistic(b, w)[..., k],
                )
                differences[(a, b)][metric] = {
                    "difference": diff,
                    "ci95": [lo, hi],
                    "excludes_zero": bool(lo > _TOLERANCE or hi < -_TOLERANCE),
                }
        if self.unit == "ticket":
            for metric in ("macro_f1", "macro_f1_account_mean"):  # per-ticket sums are not macro-F1
                for name in ci:
                    ci[name][metric], estimates[name][metric] = [float("nan")] * 2, float("nan")
                for values in differences.values():
                    values[metric].update(
                        difference=float("nan"), ci95=[float("nan")] * 2, excludes_zero=False
                    )
        merchants = self.n_merchants if self.unit == "ticket" else len(self.merchants)
        return Intervals(method, n, merchants, level, estimates, ci, differences, undefined, self.unit)

    def _interval(
        self,
        dist: np.ndarray,
        method: str,
        level: float,
        statistic: Callable[[np.ndarray], np.ndarray],
    ) -> list[float]:
        """The ``level`` interval from one bootstrap distribution (its nan resamples left out);
        ``statistic`` maps merchant weights to the metric, for BCa's jackknife."""
        finite = dist[np.isfinite(dist)]
        if not len(finite):
            return [float("nan"), float("nan")]
        if np.ptp(finite) <= _TOLERANCE:  # e.g. a model against itself: BCa's acceleration would be 0/0
            return [float(finite[0]), float(finite[0])]
        alpha = (1 - level) / 2
        if method == "percentile":
            lo, hi = np.quantile(finite, [alpha, 1 - alpha])
            return [float(lo), float(hi)]
        # BCa on these same draws: scipy adds the bias correction and the jackknife acceleration
        # (leaving out one merchant at a time); n_resamples=0 reuses our distribution
        m = len(self.merchants)
        result = stats.bootstrap(
            (np.arange(m),),
            lambda idx, axis=-1: statistic(draw_counts(np.asarray(idx), m)),
            n_resamples=0,
            bootstrap_result=SimpleNamespace(bootstrap_distribution=finite),
            method="BCa",
            confidence_level=level,
            vectorized=True,
            batch=max(1, (1 << 22) // m),
        )
        return [float(result.confidence_interval.low), float(result.confidence_interval.high)]
