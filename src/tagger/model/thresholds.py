"""Confidence thresholds chosen on validation outcomes: the lowest confidence that reaches a
precision target, per account where it has enough validation tickets, globally otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
