"""Rolling-origin folds: train on the past, test on the following days, step forward in time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tagger.data.splits import DAY, end_of_day


@dataclass(frozen=True)
class Fold:
    """One fold: a training window, an optional gap, then a test window (times in seconds)."""

    index: int
    train_start: float
    train_end: float  # exclusive
    test_start: float
    test_end: float  # exclusive, except the last fold, which keeps the latest ticket

    def masks(self, ts: np.ndarray, last: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks of the training and test tickets of ``ts``."""
        train = (ts >= self.train_start) & (ts < self.train_end)
        test = (ts >= self.test_start) & ((ts <= self.test_end) if last else (ts < self.test_end))
        return train, test

    def validation_end(self, align: bool) -> float | None:
        """Where the training window's validation slice is counted back from: the window's end when
        splits are aligned to midnights (the test start), else its latest ticket (None)."""
        return self.train_end if align else None

    def describe(self) -> dict:
        """The window bounds as ISO dates."""

        def iso(t: float) -> str:
            return pd.to_datetime(t, unit="s", utc=True).isoformat()[:19]

        return {
            "fold": self.index,
            "train_start": iso(self.train_start),
            "train_end": iso(self.train_end),
            "test_start": iso(self.test_start),
            "test_end": iso(self.test_end),
        }


def rolling_folds(
    ts: np.ndarray,
    n_folds: int,
    test_days: float,
    window: str = "expanding",
    train_days: float | None = None,
    gap_days: float = 0.0,
    align: bool = False,
) -> list[Fold]:
    """``n_folds`` consecutive test windows of ``test_days`` ending at the latest ticket (``align``:
    at the midnight after it, so that every boundary falls on a UTC midnight).

    ``window="expanding"`` trains on everything before the test window (less the gap);
    ``"sliding"`` on the ``train_days`` before it.
    """
    if window not in ("expanding", "sliding"):
        raise ValueError(f"window must be expanding or sliding, not {window!r}")
    if window == "sliding" and not train_days:
        raise ValueError("a sliding window needs train_days")
    first, last = float(np.min(ts)), end_of_day(float(np.max(ts)), align)
    folds = []
    for i in range(n_folds):
        test_end = last - (n_folds - 1 - i) * test_days * DAY
        test_start = test_end - test_days * DAY
        train_end = test_start - gap_days * DAY
        train_start = first if window == "expanding" else train_end - train_days * DAY
        if train_end <= first:
            raise ValueError(
                f"fold {i}: no training data before {pd.to_datetime(train_end, unit='s')}; "
                "use fewer folds or shorter test windows"
            )
        folds.append(Fold(i, max(train_start, first), train_end, test_start, test_end))
    return folds


def configured_folds(ts: np.ndarray, cfg) -> list[Fold]:
    """The folds the ``backtest`` and ``data`` config groups of ``cfg`` describe."""
    bt = cfg.backtest
    align = bool(cfg.data.align_days)
    return rolling_folds(ts, bt.n_folds, bt.test_days, bt.window, bt.get("train_days"), bt.gap_days, align)
