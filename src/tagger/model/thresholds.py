"""Confidence thresholds that keep a precision promise: chosen on validation outcomes with a finite-
sample bound, per merchant shrunk toward the global one, and one level up the label tree.

The global threshold of a precision target is the lowest point of a label-blind grid (quantiles of
the validation confidences) at which the one-sided Clopper-Pearson lower bound (level ``delta``) of
the precision of the tickets at or above it reaches the target. The point estimate alone (the old
rule) picks the threshold where validation precision happens to touch the target and falls short on
new tickets often (in at least 10 of 40 simulated draws, tests/test_thresholds.py); the bound leaves
the margin that sampling needs. It is pointwise, not uniform over the grid (a Bonferroni bound over
50 nested sets would be, at a far higher cost in coverage), so the promise is kept with probability
about, not at least, ``1 - delta`` on tickets like the validation slice's. A merchant's threshold is
the lowest grid point at which its own precision, shrunk toward the global bound with ``kappa``
pseudo-tickets (a beta-binomial posterior mean), reaches the target: a merchant with little evidence
keeps the global threshold, one with plenty earns its own. A merchant with fewer than
``min_account`` validation tickets uses the global one.

The parent level (``Shipping`` for ``Shipping::Delay``) gets its own thresholds, chosen the same way
on the tickets the leaf threshold leaves unanswered, so leaf answers and parent answers each keep
the promise and so does their union.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVELS = ("leaf", "parent")


@dataclass(frozen=True)
class ThresholdMethod:
    """How thresholds are chosen: ``delta`` (the chance a bound fails), ``grid`` points, ``kappa``
    (pseudo-tickets of the global curve in a merchant's), ``min_support`` (the fewest tickets a
    threshold may rest on), ``min_account`` (validation tickets a merchant needs for its own)."""

    delta: float = 0.1
    grid: int = 50
    kappa: float = 100.0
    min_support: int = 20
    min_account: int = 30


def threshold_grid(confidence: np.ndarray, points: int) -> np.ndarray:
    """Candidate thresholds, ascending: quantiles of ``confidence`` (labels are not looked at, so the
    grid is fixed before any precision is)."""
    if not len(confidence):
        return np.zeros(0)
    return np.unique(np.quantile(confidence, np.linspace(0.0, 1.0, points, endpoint=False)))


def _counts(confidence: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tickets at or above each grid threshold and how many of them are correct."""
    order = np.argsort(confidence)
    conf, hits = confidence[order], correct[order].astype(float)
    start = np.searchsorted(conf, grid, side="left")
    suffix = np.r_[np.cumsum(hits[::-1])[::-1], 0.0]
    return (len(conf) - start).astype(float), suffix[start]


def lower_bound(hits: np.ndarray, n: np.ndarray, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a proportion (``level``: the chance it fails); 0
    where ``n`` is 0."""
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(level, hits, n - hits + 1)
    return np.where((n > 0) & (hits > 0), np.nan_to_num(bound), 0.0)


def _bounded(
    confidence: np.ndarray, correct: np.ndarray, target: float, method: ThresholdMethod
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid, each grid point's precision lower bound, and where it reaches ``target`` on at
    least ``min_support`` tickets."""
    grid = threshold_grid(confidence, method.grid)
    n, hits = _counts(confidence, correct, grid)
    bound = lower_bound(hits, n, method.delta)
    return grid, bound, (bound >= target) & (n >= method.min_support)


def _lowest(grid: np.ndarray, ok: np.ndarray) -> float:
    """The lowest grid point where ``ok``; ``inf`` (tag nothing) where none is."""
    return float(grid[np.flatnonzero(ok)[0]]) if ok.any() else float("inf")


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, method: ThresholdMethod = ThresholdMethod()
) -> float:
    """The lowest grid threshold whose auto-tagged set has a precision lower bound >= ``target``
    (at least ``min_support`` tickets); ``inf`` (tag nothing) when none has."""
    grid, _, ok = _bounded(confidence, correct, target, method)
    return _lowest(grid, ok)


def answer_levels(
    confidence: np.ndarray,
    parent_confidence: np.ndarray | None,
    answered: np.ndarray,
    leaf: np.ndarray,
    parent: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The one answer rule, for the backtest's figures and the API's answers alike: which tickets are
    answered at the leaf (its confidence reaches the ``leaf`` threshold) and which one level up (the
    leaf unsure, the parent's confidence reaches ``parent``); an infinite threshold answers nothing,
    and without ``parent`` nothing is answered at the parent."""
    at_leaf = answered & (confidence >= leaf)
    if parent is None or parent_confidence is None:
        return at_leaf, np.zeros(len(at_leaf), bool)
    return at_leaf, answered & ~at_leaf & (parent_confidence >= parent)


def _level(frame: pd.DataFrame, level: str) -> tuple[np.ndarray, np.ndarray]:
    if level == "leaf":
        return frame["confidence"].to_numpy(float), frame["correct"].to_numpy(bool)
    return frame["parent_confidence"].to_numpy(float), frame["parent_answer_correct"].to_numpy(bool)


class Thresholds:
    """Per-merchant confidence thresholds of each precision target and level, chosen on validation
    outcomes (:func:`tagger.metrics.outcomes` rows)."""

    def __init__(self, val: pd.DataFrame, targets: list[float], method: ThresholdMethod = ThresholdMethod()):
        self.targets, self.method = list(targets), method
        self.global_: dict[str, dict[float, float]] = {level: {} for level in LEVELS}
        self.per_account: dict[str, dict[float, dict[str, float]]] = {level: {} for level in LEVELS}
        answered = val[~val["abstained"].to_numpy(bool)]
        has_parent = "parent_confidence" in answered
        for t in self.targets:
            self._choose(answered, "leaf", t)
            if has_parent:
                accounts = answered["account_id"].astype(str)
                leaf = accounts.map(self.per_account["leaf"][t]).fillna(self.global_["leaf"][t])
                self._choose(
                    answered[answered["confidence"].to_numpy(float) < leaf.to_numpy(float)], "parent", t
                )

    def _choose(self, frame: pd.DataFrame, level: str, target: float) -> None:
        method = self.method
        confidence, correct = _level(frame, level)
        grid, bound, ok = _bounded(confidence, correct, target, method)
        self.global_[level][target] = _lowest(grid, ok)
        prior = np.where(ok, bound, np.minimum(bound, target - 1e-9))  # never better than the bound
        own = {}
        groups = pd.Series(np.arange(len(frame))).groupby(frame["account_id"].astype(str).to_numpy())
        for account, rows in groups:  # one pass over the tickets, not one per merchant
            mine = rows.to_numpy()
            if len(mine) < method.min_account:
                continue
            n_m, hits_m = _counts(confidence[mine], correct[mine], grid)
            shrunk = (hits_m + method.kappa * prior) / (n_m + method.kappa)
            own[str(account)] = _lowest(grid, shrunk >= target)
        self.per_account[level][target] = own

    def to_dict(self) -> dict:
        """JSON-ready: ``{"targets", "global": {target: t}, "per_account": {target: {account: t}},
        "parent": {"global", "per_account"}, "method": {...}}`` (an infinite threshold, tag nothing,
        is written as null)."""

        def clean(t: float) -> float | None:
            return None if not np.isfinite(t) else float(t)

        def level(name: str) -> dict:
            return {
                "global": {str(t): clean(v) for t, v in self.global_[name].items()},
                "per_account": {
                    str(t): {a: clean(v) for a, v in d.items()} for t, d in self.per_account[name].items()
                },
            }

        return {
            "targets": self.targets,
            **level("leaf"),
            "parent": level("parent"),
            "method": vars(self.method),
        }

    def of(self, frame: pd.DataFrame, level: str = "leaf") -> dict[float, np.ndarray]:
        """Each row's threshold for each target at ``level`` (inf where none was chosen)."""
        accounts = frame["account_id"].astype(str)
        return {
            t: accounts.map(self.per_account[level].get(t, {}))
            .fillna(self.global_[level].get(t, np.inf))
            .to_numpy(float)
            for t in self.targets
        }


def threshold_method(cfg) -> ThresholdMethod:
    """The method of a root config's ``thresholds`` group (conf/thresholds); defaults without one."""
    values = cfg.get("thresholds") if cfg is not None else None
    return ThresholdMethod(**dict(values)) if values else ThresholdMethod()
