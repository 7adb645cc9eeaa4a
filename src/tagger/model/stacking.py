"""Several fitted models as one: the mean of their probabilities over each ticket's account's labels.

An experiment (``backtest.stacks``): does averaging the shared model with a baseline of another
kind (say the cross-merchant regression) answer more tickets right than either? Members are fitted
apart, each with its own choices; the mean is taken over the first member's label rows (a label
another member lacks counts 0 there), and tickets without embeddings get the first member's answer.
"""

from __future__ import annotations

import numpy as np

from tagger.data.tickets import Tickets
from tagger.model.base import Estimator, Predictions, top_k
from tagger.model.label_table import LabelTable


class ProbabilityMean(Estimator):
    """``sum_i w_i p_i(label | ticket)`` of fitted ``members`` (weights summing to 1)."""

    name = "stack"

    def __init__(self, members: list[Estimator], weights: list[float] | None = None):
        if not members:
            raise ValueError("a stack needs at least one member")
        weights = [1.0] * len(members) if weights is None else list(weights)
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(members)} non-negative numbers, not all 0: {weights}")
        self.members = members
        self.weights = [w / sum(weights) for w in weights]

    @property
    def table(self) -> LabelTable:  # type: ignore[override]
        """The first member's label table: the rows the mean is taken over."""
        return self.members[0].table

    def fit(self, train: Tickets, val: Tickets | None = None) -> ProbabilityMean:
        """Fit every member on ``train`` (each choosing on ``val`` as it does alone)."""
        self.members = [m.fit(train, val) for m in self.members]
        return self

    def refit(self, window: Tickets) -> ProbabilityMean:
        """Every member refit on ``window`` with its own choices."""
        return ProbabilityMean([m.refit(window) for m in self.members], self.weights)

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        """Top-k of the weighted mean of the members' probabilities."""
        first = self.members[0].predict(tickets, k)
        probs, rows = first.every
        probs = probs * self.weights[0]
        table = self.table
        account = table.account_ids(tickets.meta["account_id"])
        start = table.starts[np.maximum(account, 0)][:, None]
        for member, weight in zip(self.members[1:], self.weights[1:], strict=True):
            p, r = member.predict(tickets, k).every
            # member rows -> the first member's rows, then the column of that row in each ticket
            frame = member.table.frame
            mapped = table.rows(frame["account_id"], frame["label"])[np.maximum(r, 0)]
            column = mapped - start
            ok = (r >= 0) & (mapped >= 0) & (column >= 0) & (column < rows.shape[1])
            n_idx = np.broadcast_to(np.arange(len(r))[:, None], r.shape)
            np.add.at(probs, (n_idx[ok], column[ok]), weight * p[ok])
        fallback = first.fallback
        probs[fallback] = first.every[0][fallback]  # no embeddings: the first member's prior answer
        # abstains where the first member does: an unknown account, a fallback it abstains on
        abstain_fallback = bool((first.abstained & fallback).any())
        return top_k(probs, rows, k, fallback, abstain_fallback, account < 0, table.names)
