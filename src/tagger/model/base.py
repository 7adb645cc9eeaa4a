"""What every model shares: the fit / predict interface, predictions, the no-embeddings fallback."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from tagger.data.labels import parent_label
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

    ``parents`` and ``parent_probs``: the most probable parent label (first ``::`` level) of each
    ticket and its probability, the sum over that parent's labels (None and 0 without candidates):
    the answer one level up when the leaf is unsure. Computed on first use from ``every`` (the
    candidates' probabilities and rows), which a request whose merchant has no parent threshold
    never needs; built from the top-k alone (no ``every``), the top label's parent with its own mass.
    """

    names: np.ndarray  # object [rows]
    top_rows: np.ndarray  # int64 [n, k]
    top_probs: np.ndarray  # float32 [n, k]
    fallback: np.ndarray  # bool [n]
    abstained: np.ndarray  # bool [n]
    every: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # probs, rows [n, W]
    # each ticket's sentences' weights in its pooled vector [n, S] (0 past its sentences; ONNX exports
    # with the sentence_weights output), None where the runtime gives none
    sentence_weights: np.ndarray | None = field(default=None, repr=False)
    _parents: np.ndarray | None = field(default=None, init=False, repr=False)
    _parent_probs: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def parents(self) -> np.ndarray:
        """The most probable parent label of each ticket (object [n])."""
        if self._parents is None:
            self._parent_level()
        return self._parents

    @property
    def parent_probs(self) -> np.ndarray:
        """Its probability (float32 [n])."""
        if self._parents is None:
            self._parent_level()
        return self._parent_probs

    def _parent_level(self) -> None:
        if self.every is not None:
            self._parents, self._parent_probs = top_parent(*self.every, self.names)
            self.every = None
            return
        n = len(self.top_rows)
        self._parents = np.array(
            [None if lab is None else parent_label(lab) for lab in self.labels(0)], object
        )
        self._parent_probs = self.top_probs[:, 0].astype(np.float32) if n else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.top_rows)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the top label (0 where abstained)."""
        return np.where(self.abstained, 0.0, self.top_probs[:, 0])

    @property
    def parent_confidence(self) -> np.ndarray:
        """Probability of the top parent label (0 where abstained)."""
        return np.where(self.abstained, 0.0, self.parent_probs)

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

    def fit_record(self) -> dict:
        """What the fit chose or how it ended, for the record (folds.csv, metrics.json): here nothing."""
        return {}

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
    pick = (np.arange(n)[:, None], order)  # (take_along_axis costs more for a one-ticket request)
    top_probs = probs[pick].astype(np.float32)
    valid = top_probs > 0
    top_rows = np.where(valid, rows[pick], -1).astype(np.int64)
    abstained = unknown | (fallback & abstain_fallback)
    return Predictions(
        names,
        top_rows,
        np.where(valid, top_probs, 0.0).astype(np.float32),
        fallback & ~unknown,
        abstained,
        (probs, rows),
    )


_CACHED_NAMES = 256  # up to this many candidates (a merchant's labels) the parent codes are cached


@lru_cache(maxsize=4096)
def _cached_parent_codes(names: tuple) -> tuple[np.ndarray, np.ndarray]:
    return _parent_codes(names)


def _parent_codes(names) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate label's parent as a code, and the parents."""
    codes, parents = pd.factorize(
        pd.Series([None if n is None else parent_label(n) for n in names], dtype=object)
    )
    return codes.astype(np.int64), np.asarray(parents, object)


def top_parent(probs: np.ndarray, rows: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most probable parent label of each ticket and its probability (the sum of its labels'):
    from ``probs [n, W]`` over candidate ``rows [n, W]`` (-1 pads) of ``names``; None and 0 for a
    ticket without candidates."""
    n = len(probs)
    if not len(names) or not n:
        return np.full(n, None, object), np.zeros(n, np.float32)
    # cached for one merchant's labels, which recur in every request; a batch's union of many
    # merchants' labels rarely recurs and would only fill the cache
    small = len(names) <= _CACHED_NAMES
    codes, parents = _cached_parent_codes(tuple(names)) if small else _parent_codes(names)
    if not len(parents):  # no candidate has a name (a batch of unknown merchants' dummy row)
        return np.full(n, None, object), np.zeros(n, np.float32)
    if n == 1:  # a request: one bincount (the general case below costs tens of microseconds)
        valid = (rows[0] >= 0) & (probs[0] > 0)
        group = codes[rows[0][valid]]
        if not len(group) or group.min() < 0:
            return top_parent_general(probs, rows, codes, parents)
        sums = np.bincount(group, weights=probs[0][valid])
        best = int(sums.argmax())
        return np.array([parents[best]], object), np.array([min(sums[best], 1.0)], np.float32)
    return top_parent_general(probs, rows, codes, parents)


def top_parent_general(
    probs: np.ndarray, rows: np.ndarray, codes: np.ndarray, parents: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_parent` of any number of tickets, given the candidates' parent ``codes``."""
    n, width = probs.shape
    group = np.where(rows >= 0, codes[np.maximum(rows, 0)], -1)
    group = np.where(probs > 0, group, -1)  # a label with no mass is no parent's evidence
    order = np.argsort(group, axis=1, kind="stable")
    g = np.take_along_axis(group, order, axis=1)
    p = np.take_along_axis(probs, order, axis=1).astype(np.float64)
    # each position's group sum so far: cumulative sum since its group's first position
    starts = np.ones_like(g, bool)
    starts[:, 1:] = g[:, 1:] != g[:, :-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(width), 0), axis=1)
    cumulative = np.cumsum(p, axis=1)
    sums = cumulative - np.take_along_axis(cumulative, first, axis=1) + np.take_along_axis(p, first, axis=1)
    ends = np.ones_like(g, bool)
    ends[:, :-1] = g[:, 1:] != g[:, :-1]
    sums = np.where(ends & (g >= 0), sums, -1.0)
    best = sums.argmax(axis=1)
    best_sum = sums[np.arange(n), best]
    best_group = g[np.arange(n), best]
    found = best_sum > 0
    return (
        np.where(found, parents[np.maximum(best_group, 0)], None),
        np.where(found, np.minimum(best_sum, 1.0), 0.0).astype(np.float32),
    )


def calibrated_probs(logits: np.ndarray, rows: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature`` over each ticket's own candidate ``rows [n, W]`` (0 at the
    -1 pads; a row without candidates is all 0)."""
    # the fewest numpy calls: a request scores one ticket, and each call costs microseconds
    z = np.where(rows >= 0, logits / temperature, -np.inf)
    z -= np.maximum(z.max(axis=1, keepdims=True), -1e30)
    probs = np.exp(z)  # 0 at the pads (exp(-inf))
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-30)
    return probs


def predictions_from_probs(
    probs: np.ndarray,
    rows: np.ndarray,
    has_embeddings: np.ndarray,
    prior: np.ndarray,
    names: np.ndarray,
    k: int,
    abstain_fallback: bool,
) -> Predictions:
    """Predictions from calibrated ``probs`` over each ticket's own candidate ``rows [n, W]`` (-1
    pads; no rows: an unknown account, which abstains); the ``prior`` of those rows where there are
    no embeddings."""
    valid = rows >= 0
    has = np.asarray(has_embeddings, bool)
    if not has.all():
        probs[~has] = at_rows(prior, rows[~has])
    unknown = ~valid.any(axis=1)
    return top_k(probs.astype(np.float32), rows, k, ~has, abstain_fallback, unknown, names)


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
    probs = calibrated_probs(logits, rows, temperature)
    return predictions_from_probs(probs, rows, has_embeddings, prior, names, k, abstain_fallback)
