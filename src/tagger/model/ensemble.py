"""Several fits of the shared model (one per seed) as one estimator: the mean of their calibrated
probabilities. The members share the label table (it is built from the training tickets, not the
seed), so their probabilities are over the same candidate rows."""

from __future__ import annotations

import numpy as np

from tagger.data.tickets import Tickets
from tagger.model.base import Estimator, Predictions, calibrated_probs


class SeedEnsemble(Estimator):
    """The mean of fitted members' probabilities (each at its own temperature)."""

    name = "shared ensemble"

    def __init__(self, members: list):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0].table.names
        for m in members[1:]:
            if len(m.table.names) != len(first) or (m.table.names != first).any():
                raise ValueError("ensemble members must share one label table (fit on the same tickets)")
        self.members = list(members)
        self.table, self.prior = members[0].table, members[0].prior

    def fit(self, train: Tickets, val: Tickets | None = None) -> SeedEnsemble:
        """Fit every member (each keeps its own seed)."""
        self.members = [m.fit(train, val) for m in self.members]
        self.table, self.prior = self.members[0].table, self.members[0].prior
        return self

    def refit(self, window: Tickets) -> SeedEnsemble:
        """Every member refit on ``window`` with its own choices."""
        return SeedEnsemble([m.refit(window) for m in self.members])

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        probs, rows = None, None
        for member in self.members:
            logits, rows = member.logits(tickets)
            p = calibrated_probs(logits, rows, member.temperature)
            probs = p if probs is None else probs + p
        return self.members[0].predictions(np.asarray(probs) / len(self.members), rows, tickets, k)
