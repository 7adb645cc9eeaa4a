"""Agents' corrections of the service's answers: which of them move a merchant's label vectors, and
what they say about its live precision and threshold. Numpy only, so the serving process
(:mod:`tagger.serving.feedback`) and the backtest (:mod:`tagger.backtest.feedback`) decide alike.

A batch of one merchant's corrections becomes one :class:`LabelUpdate` of examples, folded in by
:func:`tagger.model.label_update.apply_update` (the label-update path, no retraining), under guard
rails:

- a label moves only once ``min_agree`` corrections name it (a lone, perhaps mistaken, correction
  waits for others);
- each correction counts ``example_weight`` tickets against the label's own weight (its name and
  training tickets), and a batch turns a label the merchant already had by at most ``max_turn_deg``;
- a label the merchant does not have yet is added by name (``add_unknown``), with its corrections
  as examples, once ``min_agree`` of them name it;
- the batch is one recorded label change, so one rollback undoes it.

Live precision counts the reviewed answers (corrections and confirmations of answered tickets); a
merchant's threshold is raised when that precision is significantly below the promise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tagger.data.labels import normalise_label
from tagger.model.label_update import LabelUpdate
from tagger.model.thresholds import lower_bound


@dataclass(frozen=True)
class Correction:
    """An agent's label for a ticket the service answered: ``given_label`` (None: the service
    abstained without a label) with its ``confidence``; ``embeddings [n, 384]`` when the caller sent
    them (only those can move a vector)."""

    account_id: str
    agent_label: str
    given_label: str | None = None
    confidence: float | None = None
    abstained: bool = False
    embeddings: np.ndarray | None = None
    ticket_id: str | None = None
    model_version: str | None = None

    @property
    def wrong(self) -> bool:
        """The service's label was not the agent's."""
        given = normalise_label(self.given_label or "").casefold()
        return given != normalise_label(self.agent_label).casefold()

    @property
    def moves(self) -> bool:
        """It can move a label vector: the answer was wrong and the ticket's embeddings came with it."""
        return self.wrong and self.embeddings is not None and len(self.embeddings) > 0


@dataclass(frozen=True)
class FoldRule:
    """The guard rails of folding corrections in (conf/feedback.yaml ``fold``)."""

    min_agree: int
    example_weight: float
    max_turn_deg: float
    add_unknown: bool


@dataclass(frozen=True)
class Batch:
    """What a merchant's pending corrections give: the ``update`` (None: nothing to fold yet), the
    positions of the corrections it uses, and the labels still waiting for agreement."""

    update: LabelUpdate | None
    used: list[int]
    waiting: dict[str, int]


def correction_batch(
    account: str, labels: Sequence[str], corrections: Sequence[Correction], rule: FoldRule
) -> Batch:
    """The label update that folds ``corrections`` (one merchant's, pending) into its ``labels``.

    A correction that agrees with the answer, or has no embeddings, moves nothing (it still counts
    toward precision); the others are grouped by the agent's label (case-insensitively)."""
    known = {normalise_label(lab).casefold(): lab for lab in labels}
    groups: dict[str, list[int]] = {}
    spelt: dict[str, str] = {}
    for i, c in enumerate(corrections):
        if not c.moves:
            continue
        name = normalise_label(c.agent_label)
        if not name:
            continue
        groups.setdefault(name.casefold(), []).append(i)
        spelt.setdefault(name.casefold(), known.get(name.casefold(), name))
    examples: dict[str, list[np.ndarray]] = {}
    add, used, waiting = [], [], {}
    for key, rows in sorted(groups.items()):
        name = spelt[key]
        if len(rows) < rule.min_agree or (key not in known and not rule.add_unknown):
            waiting[name] = len(rows)
            continue
        if key not in known:
            add.append(name)
        examples[name] = [np.asarray(corrections[i].embeddings, np.float32) for i in rows]
        used += rows
    if not examples:
        return Batch(None, [], waiting)
    update = LabelUpdate(
        account,
        add=add,
        examples=examples,
        example_weight=rule.example_weight,
        max_turn_deg=rule.max_turn_deg,
    )
    return Batch(update, sorted(used), waiting)


@dataclass(frozen=True)
class Precision:
    """A merchant's live precision from reviewed answers: ``hits`` of ``reviewed`` answered tickets,
    with a two-sided Clopper-Pearson interval at level ``1 - 2 * delta``."""

    reviewed: int
    hits: int
    low: float
    high: float

    @property
    def estimate(self) -> float:
        return self.hits / self.reviewed if self.reviewed else float("nan")


def live_precision(correct: np.ndarray, delta: float) -> Precision:
    """The precision of answered tickets whose answer an agent reviewed (``correct``: it kept it)."""
    n, hits = len(correct), int(np.sum(correct))
    low = float(lower_bound(np.array([hits]), np.array([n]), delta)[0]) if n else 0.0
    high = 1.0 - float(lower_bound(np.array([n - hits]), np.array([n]), delta)[0]) if n else 1.0
    return Precision(n, hits, low, high)


def recalibrated_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, delta: float, min_support: int
) -> float | None:
    """A raised threshold for a merchant whose reviewed answers (their ``confidence``, and whether
    each was ``correct``) show its precision significantly below ``target`` (the interval's upper
    end under it); None when they do not (or are fewer than ``min_support``).

    Reviews exist only for answered tickets, so they can raise a threshold, never lower one. The new
    threshold is the lowest reviewed confidence at which the answers at or above it, at least
    ``min_support`` of them, reach ``target``; where none does, just above 1.0: the merchant is
    answered no more until a retrained model or more reviews say otherwise."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    if len(confidence) < min_support or live_precision(correct, delta).high >= target:
        return None
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    n = np.arange(1, len(conf) + 1)
    # a cut between equal confidences would promise what the threshold cannot keep
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    ok = (n >= min_support) & (hits >= target * n) & last_of_tie
    return float(conf[np.flatnonzero(ok)[-1]]) if ok.any() else float(np.nextafter(1.0, 2.0))
