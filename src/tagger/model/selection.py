"""Hyperparameter choice on the validation slice, with the search and its cost on record.

:class:`Tuned` fits one candidate per grid point on the training tickets, scores each on the
validation tickets with a metric the caller passes in, and keeps the best. It is an
:class:`Estimator` itself, so a tuned baseline goes wherever a baseline goes. The grids live in
``conf/model/NAME.yaml`` under ``grid:``; :func:`split_grid` separates them from the constructor
parameters.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tagger.data.tickets import Tickets
from tagger.model.base import Estimator, Predictions
from tagger.model.label_table import LabelTable

Score = Callable[[Predictions, Tickets, Tickets], float]  # (pred on val, val, train) -> higher is better


def grid_points(grid: Mapping[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, the first value of each key first (keys in order);
    one empty point for an empty or missing grid."""
    grid = dict(grid or {})
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def split_grid(model_cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(constructor parameters, grid)`` of a ``conf/model/NAME.yaml`` config (``name``, ``grid`` and
    the ``_target_`` class are not constructor parameters)."""
    params = {k: v for k, v in model_cfg.items() if k not in ("name", "grid", "_target_")}
    return params, {k: list(v) for k, v in (model_cfg.get("grid") or {}).items()}


class Tuned(Estimator):
    """The best of ``factory(**point)`` over ``grid``'s points by ``score`` on the validation tickets.

    ``factory`` builds an unfitted estimator from a grid point's parameters (a class, or a
    ``functools.partial`` holding the fixed ones). After :meth:`fit`: ``chosen`` (the best point),
    ``search`` (``[{"params", "score"}]`` in grid order), ``budget`` (fits made), ``best`` (the fitted
    winner, which ``predict`` and ``table`` delegate to). Ties go to the earlier point; a NaN score
    never wins. Parameters an estimator lists in ``predict_only`` (say a softmax temperature) do not
    change its fit, so points differing only in them share one fit: ``budget`` counts fits, not points.

    With no validation tickets (``val`` None or empty) nothing can be scored: the first grid point is
    fitted and chosen, and its score recorded as None.
    """

    def __init__(self, factory: Callable[..., Estimator], grid: Mapping[str, Sequence[Any]], score: Score):
        self.factory, self.grid, self.score = factory, dict(grid), score
        self.name = getattr(factory, "name", None) or getattr(getattr(factory, "func", None), "name", "tuned")

    @property
    def table(self) -> LabelTable:  # type: ignore[override]
        """The chosen estimator's label table."""
        return self.best.table

    def fit(self, train: Tickets, val: Tickets | None = None) -> Tuned:
        """Fit and score every grid point (``val`` also goes to each candidate's own ``fit``)."""
        points = grid_points(self.grid)
        if val is None or len(val) == 0:
            self.best = self.factory(**points[0]).fit(train, val)
            self.chosen, self.budget = points[0], 1
            self.search = [{"params": points[0], "score": None}]
            return self
        fits: dict[tuple, Estimator] = {}  # one fit per setting of the parameters fit reads
        candidates, scores = [], []
        for point in points:
            candidate = self.factory(**point)
            free = set(candidate.predict_only) & set(point)
            key = tuple((k, repr(v)) for k, v in point.items() if k not in free)
            if key in fits:
                candidate = copy.copy(fits[key])  # shares the fit; only predict-time values differ
                for name in free:
                    setattr(candidate, name, point[name])
            else:
                candidate = fits[key] = candidate.fit(train, val)
            candidates.append(candidate)
            scores.append(float(self.score(candidate.predict(val), val, train)))
        # the highest score; ties keep the earlier point, and NaN never beats a number
        best = max(range(len(points)), key=lambda i: (-math.inf if math.isnan(scores[i]) else scores[i], -i))
        self.best, self.chosen, self.budget = candidates[best], points[best], len(fits)
        self.search = [{"params": p, "score": v} for p, v in zip(points, scores, strict=True)]
        return self

    def fit_record(self) -> dict:
        """The chosen point (with what the winner chose itself, say a fitted temperature), the fits
        the search made, and the winner's own record (an iterative fit's convergence)."""
        own = self.best.fit_record()
        return {**own, "chosen": {**self.chosen, **own.get("chosen", {})}, "search_fits": self.budget}

    def refit(self, window: Tickets) -> Estimator:
        """The chosen point fit on the whole ``window`` (one fit, no search)."""
        return self.best.refit(window)

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        """The chosen estimator's predictions."""
        return self.best.predict(tickets, k)
