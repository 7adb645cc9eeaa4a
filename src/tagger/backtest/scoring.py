"""Backtest statistics over per-ticket outcomes: confidence thresholds chosen on validation,
paired bootstrap resamples and their intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tagger.metrics import class_codes, macro_f1_score


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, min_support: int = 20
) -> float:
    """The lowest confidence threshold whose auto-tagged set has precision >= ``target``
    (at least ``min_support`` tickets); ``inf`` (tag nothing) when none has."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], correct[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ok = (precision >= target) & (np.arange(1, len(hits) + 1) >= min_support)
    # the set {confidence >= t} must end where the confidence changes
    ends = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.array([], bool)
    ok &= ends
    return float(conf[np.flatnonzero(ok)[-1]]) if ok.any() else float("inf")


class Thresholds:
    """Per-account confidence thresholds for each precision target, chosen on validation
    outcomes; accounts with too few validation tickets use the global threshold."""

    def __init__(self, val: pd.DataFrame, targets: list[float], min_account: int = 30):
        self.targets = targets
        self.global_ = {}
        self.per_account: dict[float, dict[str, float]] = {}
        answered = val[~val["abstained"]]
        for t in targets:
            self.global_[t] = choose_threshold(
                answered["confidence"].to_numpy(), answered["correct"].to_numpy(), t
            )
            self.per_account[t] = {
                a: choose_threshold(g["confidence"].to_numpy(), g["correct"].to_numpy(), t, min_support=10)
                for a, g in answered.groupby("account_id")
                if len(g) >= min_account
            }

    def to_dict(self) -> dict:
        """JSON-ready: ``{"targets": [...], "global": {target: t}, "per_account": {target: {account: t}}}``
        (an infinite threshold, tag nothing, is written as null)."""

        def clean(t: float) -> float | None:
            return None if not np.isfinite(t) else float(t)

        return {
            "targets": self.targets,
            "global": {str(t): clean(v) for t, v in self.global_.items()},
            "per_account": {str(t): {a: clean(v) for a, v in d.items()} for t, d in self.per_account.items()},
        }

    def of(self, frame: pd.DataFrame) -> dict[float, np.ndarray]:
        """Each row's threshold for each target."""
        return {
            t: frame["account_id"].map(self.per_account[t]).fillna(self.global_[t]).to_numpy(float)
            for t in self.targets
        }


BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "top3_accuracy")


def bootstrap(frames: dict[str, pd.DataFrame], n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` paired resamples of the test tickets (the same rows for every model):
    ``{model: array [n, 3]}`` of accuracy, macro-F1 and top-3 accuracy."""
    rng = np.random.default_rng(seed)
    size = len(next(iter(frames.values())))
    prepared = {
        name: (*class_codes(f), f["correct"].to_numpy(), f["top3_hit"].to_numpy())
        for name, f in frames.items()
    }
    out = {name: np.zeros((n, len(BOOTSTRAP_METRICS))) for name in frames}
    for i in range(n):
        idx = rng.integers(0, size, size)
        for name, (true, pred, correct, top3) in prepared.items():
            out[name][i] = [correct[idx].mean(), macro_f1_score(true[idx], pred[idx]), top3[idx].mean()]
    return out


def interval(samples: np.ndarray, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse percentile) bootstrap interval around ``estimate``.

    Not the plain percentile interval: a resample holds fewer distinct labels, so resampled
    macro-F1 is biased upwards and its percentile interval can miss the estimate itself; the
    basic interval reflects that bias back."""
    lo, hi = np.nanpercentile(samples, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(2 * estimate - hi), float(2 * estimate - lo)
