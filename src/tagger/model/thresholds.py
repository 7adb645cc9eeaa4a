"""Confidence thresholds that keep a precision promise: per merchant, chosen on validation
outcomes, with the margin that sampling and the per-merchant choice itself need measured by cross-
fitting, and one level up the label tree.

A merchant's threshold is the lowest point of a label-blind grid (quantiles of the validation
confidences) at which its own precision, shrunk toward the pooled precision curve with ``kappa``
pseudo-tickets (a beta-binomial posterior mean), reaches an internal target ``tau``; a merchant with
fewer than ``min_account`` validation tickets (or none) gets the pooled curve's threshold. Picking a
threshold per merchant from its own tickets overfits them, more so the fewer they are, so ``tau`` is
not the promised target: the validation tickets are split in two halves (alternate tickets of each
merchant), thresholds chosen on one half at ``tau`` are applied to the other (and the other way
round), and ``tau`` is the lowest of ``target + margin, ..., target - margin`` (steps of ``step``)
at which the one-sided Clopper-Pearson lower bound (level ``delta``) of the held-out precision of
the answered tickets reaches the target. The bound is pointwise: it is not corrected for the number
of ``tau`` tried (nested answered sets whose bounds move together; a Bonferroni correction over 21
of them, as in "Learn then Test", Angelopoulos et al. 2021, left some models on some folds with no
``tau`` at all, tagging nothing, and a fixed sequence from the most conservative ``tau`` stops at
its first, tiny, answered set), so the promise holds with probability about, not at least,
``1 - delta``; ``delta`` was chosen on the backtest's development folds. The served thresholds are then
chosen at that ``tau`` on the whole validation slice (twice the tickets each half had, which errs on
the safe side). The promise is about the answered tickets together, on tickets like the validation
slice's: drift between validation and deployment is outside the guarantee, and the backtest reports
the precision realised on later tickets fold by fold. Tests: tests/test_thresholds.py.

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
    """How thresholds are chosen: ``delta`` (the chance the held-out bound fails), ``grid`` points,
    ``kappa`` (pseudo-tickets of the pooled curve in a merchant's), ``min_support`` (the fewest
    tickets a threshold may rest on), ``min_account`` (validation tickets a merchant needs for its
    own), ``margin`` and ``step`` (the internal targets tried around the promised one)."""

    delta: float = 0.1
    grid: int = 50
    kappa: float = 300.0
    min_support: int = 20
    min_account: int = 30
    margin: float = 0.05
    step: float = 0.005


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


def _lowest(grid: np.ndarray, ok: np.ndarray) -> float:
    """The lowest grid point where ``ok``; ``inf`` (tag nothing) where none is."""
    return float(grid[np.flatnonzero(ok)[0]]) if ok.any() else float("inf")


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
    outcomes (:func:`tagger.metrics.outcomes` rows); ``internal[level][target]``: the ``tau`` the
    cross-fitted check accepted (None: none did, nothing is answered)."""

    def __init__(self, val: pd.DataFrame, targets: list[float], method: ThresholdMethod = ThresholdMethod()):
        self.targets, self.method = list(targets), method
        self.global_: dict[str, dict[float, float]] = {level: {} for level in LEVELS}
        self.per_account: dict[str, dict[float, dict[str, float]]] = {level: {} for level in LEVELS}
        self.internal: dict[str, dict[float, float | None]] = {level: {} for level in LEVELS}
        answered = val[~val["abstained"].to_numpy(bool)]
        has_parent = "parent_confidence" in answered
        for t in self.targets:
            self._choose(answered, "leaf", t)
            if has_parent:
                leaf = _thresholds_of(
                    answered["account_id"].astype(str), self.global_["leaf"][t], self.per_account["leaf"][t]
                )
                self._choose(answered[answered["confidence"].to_numpy(float) < leaf], "parent", t)

    def _choose(self, frame: pd.DataFrame, level: str, target: float) -> None:
        method = self.method
        confidence, correct = _level(frame, level)
        accounts = frame["account_id"].astype(str).to_numpy()
        grid = threshold_grid(confidence, method.grid)
        tau = _internal_target(confidence, correct, accounts, grid, target, method)
        if tau is None:
            glob, own = np.inf, {}
        else:
            glob, own = _Curves.count(confidence, correct, accounts, grid, method.min_account).at(tau, method)
        self.global_[level][target], self.per_account[level][target] = glob, own
        self.internal[level][target] = tau

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
            "internal": {name: {str(t): v for t, v in d.items()} for name, d in self.internal.items()},
            "method": vars(self.method),
        }

    def of(self, frame: pd.DataFrame, level: str = "leaf") -> dict[float, np.ndarray]:
        """Each row's threshold for each target at ``level`` (inf where none was chosen)."""
        accounts = frame["account_id"].astype(str)
        return {
            t: _thresholds_of(
                accounts, self.global_[level].get(t, np.inf), self.per_account[level].get(t, {})
            )
            for t in self.targets
        }


def _thresholds_of(accounts: pd.Series, glob: float, own: dict[str, float]) -> np.ndarray:
    """Each row's threshold: its merchant's own, else the pooled one."""
    return accounts.map(own).fillna(glob).to_numpy(float)


@dataclass(frozen=True)
class _Curves:
    """Precision curves over the grid, counted once and read at any internal target: the pooled
    one (tickets ``n`` and correct ``hits`` at or above each grid point) and each merchant's own
    (``n_m``, ``hits_m``: one row per merchant of ``accounts``, those with enough tickets)."""

    grid: np.ndarray
    n: np.ndarray
    hits: np.ndarray
    accounts: list[str]
    n_m: np.ndarray
    hits_m: np.ndarray

    @classmethod
    def count(
        cls,
        confidence: np.ndarray,
        correct: np.ndarray,
        accounts: np.ndarray,
        grid: np.ndarray,
        min_account: int,
    ) -> _Curves:
        n, hits = _counts(confidence, correct, grid)
        names, n_m, hits_m = [], [], []
        groups = pd.Series(np.arange(len(accounts))).groupby(accounts)
        for account, rows in groups:  # one pass over the tickets, not one per merchant
            mine = rows.to_numpy()
            if len(mine) >= min_account:
                names.append(str(account))
                counts = _counts(confidence[mine], correct[mine], grid)
                n_m.append(counts[0])
                hits_m.append(counts[1])
        shape = (len(names), len(grid))
        return cls(grid, n, hits, names, np.reshape(n_m, shape), np.reshape(hits_m, shape))

    def at(self, tau: float, method: ThresholdMethod) -> tuple[float, dict[str, float]]:
        """The pooled threshold (lowest grid point whose precision reaches ``tau`` on at least
        ``min_support`` tickets) and each merchant's own (its precision shrunk toward the pooled curve
        with ``kappa`` pseudo-tickets reaching ``tau``; inf where it never does)."""
        pooled = np.where(self.n > 0, self.hits / np.maximum(self.n, 1.0), 0.0)
        glob = _lowest(self.grid, (pooled >= tau) & (self.n >= method.min_support))
        if not self.accounts:  # (no merchant with enough tickets, or no tickets at all)
            return glob, {}
        ok = (self.hits_m + method.kappa * pooled) / (self.n_m + method.kappa) >= tau
        own = np.where(ok.any(axis=1), self.grid[ok.argmax(axis=1)], np.inf)
        return glob, dict(zip(self.accounts, own.tolist(), strict=True))


def _halves(accounts: np.ndarray) -> np.ndarray:
    """Alternate tickets of each merchant (in the given order, time on a validation slice): True for
    the first half's, label-blind and balanced per merchant."""
    return (pd.Series(accounts).groupby(accounts).cumcount().to_numpy() % 2) == 0


def _internal_target(
    confidence: np.ndarray,
    correct: np.ndarray,
    accounts: np.ndarray,
    grid: np.ndarray,
    target: float,
    method: ThresholdMethod,
) -> float | None:
    """The lowest internal target whose cross-fitted held-out precision bound (level ``delta``)
    reaches ``target``; None: none does."""
    half = _halves(accounts)
    taus = np.unique(
        np.minimum(np.round(np.arange(-method.margin, method.margin + 1e-9, method.step), 6) + target, 0.999)
    )
    # each half's curves are counted once; only the comparison with tau changes from tau to tau
    folds = [
        (_Curves.count(confidence[fit], correct[fit], accounts[fit], grid, method.min_account // 2), ~fit)
        for fit in (half, ~half)
    ]
    held_accounts = [pd.Series(accounts[held]) for _, held in folds]
    for tau in taus:
        n = hits = 0
        for (curves, held), held_account in zip(folds, held_accounts, strict=True):
            answered = confidence[held] >= _thresholds_of(held_account, *curves.at(tau, method))
            n, hits = n + answered.sum(), hits + correct[held][answered].sum()
        if (
            n >= method.min_support
            and lower_bound(np.array([hits]), np.array([n]), method.delta)[0] >= target
        ):
            return float(tau)
    return None


def threshold_method(cfg) -> ThresholdMethod:
    """The method of a root config's ``thresholds`` group (conf/thresholds); defaults without one."""
    values = cfg.get("thresholds") if cfg is not None else None
    return ThresholdMethod(**dict(values)) if values else ThresholdMethod()
