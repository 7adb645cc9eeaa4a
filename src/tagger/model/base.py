"""What every model shares: the fit / predict interface, predictions, the no-embeddings fallback."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tagger.data.tickets import Tickets
from tagger.model.label_table import LabelTable

MASKED = -1e9  # the score of a padded label row (not -inf: a row of pads must give zeros, not NaN)


@dataclass
class Predictions:
    """Top-k labels of each ticket, as rows of ``names``, with calibrated probabilities.

    ``names`` holds the label of each candidate row (a model's whole label table, or only the
    labels of a request's merchants). ``top_rows`` is -1 where there is no candidate (an account
    unseen in training, or fewer labels than k). ``fallback`` marks tickets scored from the
    account prior because they have no embeddings; ``abstained`` marks tickets with no answer
    (unknown account, or a fallback ticket when the fallback is configured to abstain).
    """

    names: np.ndarray  # object [rows]
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
        rows = self.top_rows[:, rank]
        if not len(self.names):
            return np.full(len(rows), None, object)
        return np.where(rows >= 0, self.names[np.maximum(rows, 0)], None)

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
    # constructor parameters that only predict reads: a copy with another value needs no refit
    # (hyperparameter search fits once for all of them, see tagger.model.selection)
    predict_only: tuple[str, ...] = ()

    @abstractmethod
    def fit(self, train: Tickets, val: Tickets | None = None) -> Estimator:
        """Learn from ``train``; ``val`` (a later slice of time) may steer early stopping."""

    @abstractmethod
    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        """Top-k labels from each ticket's own account's labels."""

    def refit(self, window: Tickets) -> Estimator:
        """A new estimator with every choice this fitted one made on validation, fit on the whole
        ``window`` (training and validation tickets together) with no validation slice left over.

        Here: a copy fit afresh, right for an estimator whose settings are all constructor
        parameters and whose ``fit`` reads no validation (every baseline). One that learns
        something from validation (an epoch count, a temperature) overrides this to carry it over.
        """
        return copy.copy(self).fit(window)


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

    def gathered(self, rows: np.ndarray) -> np.ndarray:
        """Prior probabilities of padded label ``rows [n, W]`` (0 at the pads)."""
        return at_rows(self.probs, rows).astype(np.float32)


def at_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values`` of padded ``rows`` (-1 pads give 0)."""
    if not len(values):
        return np.zeros(rows.shape)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], 0.0)


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
    rows: np.ndarray,
    k: int,
    fallback: np.ndarray,
    abstain_fallback: bool,
    unknown: np.ndarray,
    names: np.ndarray,
) -> Predictions:
    """Predictions from padded ``probs [n, W]`` over candidate ``rows [n, W]`` (0 at the -1 pads);
    always ``k`` columns, -1 beyond a ticket's candidates."""
    n, width = probs.shape
    if width < k:  # (np.pad costs more than the rest of a one-ticket request's post-processing)
        padded_probs, padded_rows = np.zeros((n, k), probs.dtype), np.full((n, k), -1, rows.dtype)
        padded_probs[:, :width], padded_rows[:, :width] = probs, rows
        probs, rows = padded_probs, padded_rows
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    valid = top_probs > 0
    top_rows = np.where(valid, np.take_along_axis(rows, order, axis=1), -1).astype(np.int64)
    abstained = unknown | (fallback & abstain_fallback)
    return Predictions(
        names, top_rows, np.where(valid, top_probs, 0.0).astype(np.float32), fallback & ~unknown, abstained
    )


def predictions_from_logits(
    logits: np.ndarray,
    rows: np.ndarray,
    has_embeddings: np.ndarray,
    prior: np.ndarray,
    names: np.ndarray,
    temperature: float,
    k: int,
    abstain_fallback: bool,
) -> Predictions:
    """Calibrated probabilities over each ticket's own candidate ``rows [n, W]`` (-1 pads; no rows:
    an unknown account, which abstains); the ``prior`` of those rows where there are no embeddings.

    The one place that turns shared-model scores into predictions, whichever runtime made them.
    """
    valid = rows >= 0
    # the fewest numpy calls: a request scores one ticket, and each call costs microseconds
    z = np.where(valid, logits / temperature, -np.inf)
    z -= np.maximum(z.max(axis=1, keepdims=True), -1e30)
    probs = np.exp(z)  # 0 at the pads (exp(-inf))
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-30)
    has = np.asarray(has_embeddings, bool)
    if not has.all():
        probs[~has] = at_rows(prior, rows[~has])
    unknown = ~valid.any(axis=1)
    return top_k(probs.astype(np.float32), rows, k, ~has, abstain_fallback, unknown, names)
