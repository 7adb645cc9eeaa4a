"""What every model shares: the fit / predict interface, predictions, the no-embeddings fallback."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tagger.data.tickets import Tickets
from tagger.model.label_table import LabelTable


@dataclass
class Predictions:
    """Top-k labels of each ticket, as rows of ``table``, with calibrated probabilities.

    ``top_rows`` is -1 where there is no candidate (an account unseen in training, or fewer
    labels than k). ``fallback`` marks tickets scored from the account prior because they have
    no embeddings; ``abstained`` marks tickets with no answer (unknown account, or a fallback
    ticket when the fallback is configured to abstain).
    """

    table: LabelTable
    top_rows: np.ndarray  # int64 [n, k]
    top_probs: np.ndarray  # float32 [n, k]
    fallback: np.ndarray  # bool [n]
    abstained: np.ndarray  # bool [n]

    def __len__(self) -> int:
        return len(self.top_rows)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the top label (0 where abstained)."""
        return np.where(self.abstained, 0.0, self.top_probs[:, 0])

    def labels(self, rank: int = 0) -> np.ndarray:
        """Label names at ``rank`` (None where there is none)."""
        names = self.table.frame["label"].to_numpy(object)
        rows = self.top_rows[:, rank]
        return np.where(rows >= 0, names[np.maximum(rows, 0)], None)

    def to_frame(self, k: int = 3) -> pd.DataFrame:
        """One row per ticket: label, confidence, fallback, abstained and the top-k."""
        out = pd.DataFrame(
            {
                "label": self.labels(0),
                "confidence": self.confidence,
                "fallback": self.fallback,
                "abstained": self.abstained,
            }
        )
        for r in range(min(k, self.top_rows.shape[1])):
            out[f"top{r + 1}"] = self.labels(r)
            out[f"top{r + 1}_prob"] = self.top_probs[:, r]
        return out


class Estimator(ABC):
    """fit on training tickets, predict top-k labels for any tickets (scikit-learn style)."""

    name: str = "estimator"
    table: LabelTable

    @abstractmethod
    def fit(self, train: Tickets, val: Tickets | None = None) -> Estimator:
        """Learn from ``train``; ``val`` (a later slice of time) may steer early stopping."""

    @abstractmethod
    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        """Top-k labels from each ticket's own account's labels."""


class AccountPrior:
    """Label frequencies per account from training: the answer for a ticket without embeddings.

    Tickets without embeddings lean towards catch-all labels, so the prior is taken over the
    account's training tickets without embeddings, blended (``strength`` pseudo-counts) with the
    account's overall label frequencies.
    """

    def __init__(self, table: LabelTable, meta: pd.DataFrame, strength: float = 5.0):
        rows = table.rows(meta["account_id"], meta["label"])
        overall = np.bincount(rows[rows >= 0], minlength=len(table)).astype(float)
        empty = ~meta["has_embeddings"].to_numpy() & (rows >= 0)
        null = np.bincount(rows[empty], minlength=len(table)).astype(float)
        self.table = table
        self.probs = np.zeros(len(table))
        for start, end in table.account_slices.values():
            base = overall[start:end] / max(overall[start:end].sum(), 1.0)
            blended = null[start:end] + strength * base
            self.probs[start:end] = blended / blended.sum()

    @classmethod
    def from_probs(cls, table: LabelTable, probs: np.ndarray) -> AccountPrior:
        """A prior saved with a model."""
        prior = cls.__new__(cls)
        prior.table, prior.probs = table, np.asarray(probs, float)
        return prior

    def dense(self, account_index: np.ndarray) -> np.ndarray:
        """``[n, n_labels]`` prior probabilities of each ticket's account (zeros for unknown)."""
        out = np.zeros((len(account_index), len(self.table)), np.float32)
        for a, (start, end) in enumerate(self.table.account_slices.values()):
            sel = account_index == a
            out[sel, start:end] = self.probs[start:end]
        return out


def mean_pool(tickets: Tickets) -> np.ndarray:
    """Mean of each ticket's sentence vectors, unit length; zeros for a ticket without any."""
    n = tickets.n_sentences
    out = np.zeros((len(tickets), tickets.embeddings.shape[1]), np.float32)
    has = n > 0
    if has.any():
        sums = np.add.reduceat(np.asarray(tickets.embeddings), tickets.offsets[:-1][has], axis=0)
        out[has] = sums / n[has, None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def top_k(
    probs: np.ndarray,
    account_index: np.ndarray,
    k: int,
    fallback: np.ndarray,
    abstain_fallback: bool,
    table: LabelTable,
) -> Predictions:
    """Predictions from dense ``[n, n_labels]`` probabilities that are zero outside each account."""
    k = min(k, max(len(table), 1))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    valid = top_probs > 0
    rows = np.where(valid, order, -1).astype(np.int64)
    unknown = account_index < 0
    abstained = unknown | (fallback & abstain_fallback)
    return Predictions(
        table, rows, np.where(valid, top_probs, 0.0).astype(np.float32), fallback & ~unknown, abstained
    )


def predictions_from_logits(
    logits: np.ndarray,
    tickets: Tickets,
    table: LabelTable,
    prior: AccountPrior,
    temperature: float,
    k: int,
    abstain_fallback: bool,
) -> Predictions:
    """Calibrated probabilities over each ticket's account's labels; the prior where no embeddings.

    The one place that turns shared-model scores into predictions, whichever runtime made them.
    """
    account = table.account_ids(tickets.meta["account_id"])
    has = tickets.meta["has_embeddings"].to_numpy()
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z) * table.mask()[np.maximum(account, 0)]
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-30)
    probs[~has] = prior.dense(account[~has])
    probs[account < 0] = 0.0
    return top_k(probs.astype(np.float32), account, k, ~has, abstain_fallback, table)
