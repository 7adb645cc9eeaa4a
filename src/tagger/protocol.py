"""The one training protocol: fit -> choose -> refit, then the caller scores.

Every model (the shared model and each baseline), in train.py, every backtest fold, Banking77 and
the learning curve alike, is fit on a :class:`~tagger.data.splits.Split`'s training slice and makes
its own choices on its validation slice (epochs, temperature, a baseline's grid point); the
confidence thresholds are then chosen on the same fit's validation outcomes; with ``refit`` it is
fit again with those choices on the whole window, and that refit is what is served and scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from tagger.data.splits import Split
from tagger.metrics import outcomes
from tagger.model.base import Estimator
from tagger.model.thresholds import ThresholdMethod, Thresholds


@dataclass
class Fitted:
    """What the protocol returns. ``selection``: the fit that chose on validation; ``served``: its
    refit (or itself with refit off); ``val_outcomes`` and ``thresholds``: the selection fit's
    validation outcomes and the thresholds chosen on them (None on a worker rank of a
    multi-process fit, which takes part in the fits and scores nothing)."""

    selection: Estimator
    served: Estimator
    val_outcomes: pd.DataFrame | None
    thresholds: Thresholds | None
    fit_seconds: float | None = None
    refit_seconds: float | None = None
    predict_seconds: float | None = None  # the selection fit's validation predictions
    is_global_zero: bool = True

    @property
    def refitted(self) -> bool:
        """Whether a refit replaced the selection fit."""
        return self.served is not self.selection


def choose(
    selection: Estimator, served: Estimator, split: Split, targets: list[float], method: ThresholdMethod
) -> Fitted:
    """The thresholds of ``selection``'s validation outcomes (scored as the reports score: a label or
    merchant unseen in the split's training slice is a miss), carried over to ``served``."""
    started = time.perf_counter()
    pred = selection.predict(split.val)
    predict_seconds = time.perf_counter() - started
    val_outcomes = outcomes(pred, split.val, split.train.meta)
    thresholds = Thresholds(val_outcomes, targets, method)
    return Fitted(selection, served, val_outcomes, thresholds, predict_seconds=predict_seconds)


def fit_choose_refit(
    estimator: Estimator, split: Split, targets: list[float], method: ThresholdMethod
) -> Fitted:
    """Fit ``estimator`` on ``split.train`` choosing on ``split.val``, refit it on ``split.window``
    when ``split.refit``, and choose its thresholds on validation."""
    started = time.perf_counter()
    estimator.fit(split.train, split.val)
    fit_seconds = time.perf_counter() - started
    served, refit_seconds = estimator, None
    if split.refit:
        # the choices are made (epochs, temperature, C or k); what is served learns from the whole
        # window, the validation days' new labels and merchants included. Under DDP every rank
        # takes part in the refit's fit, so no rank leaves before it
        started = time.perf_counter()
        served = estimator.refit(split.window)
        refit_seconds = time.perf_counter() - started
    if not getattr(estimator, "fit_info", {}).get("is_global_zero", True):
        return Fitted(estimator, served, None, None, fit_seconds, refit_seconds, is_global_zero=False)
    fitted = choose(estimator, served, split, targets, method)
    fitted.fit_seconds, fitted.refit_seconds = fit_seconds, refit_seconds
    return fitted
