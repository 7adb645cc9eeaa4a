"""Leakage through text: how much of a test window's wording its training window has already seen.

Real email does not repeat word for word across weeks, so a test ticket whose sentence appears
verbatim in training flatters every model (the one that memorises most, most). For each
(training window, test window) pair this counts, over test tickets with embeddings, the share with
a non-boilerplate sentence seen in training (at any merchant, at the same merchant), the share
whose whole sentence set equals a training ticket of the same merchant, and the share of
non-boilerplate sentence occurrences seen in training. Boilerplate (greetings, sign-offs, form
templates) is left out: on the built-in data from its build record; on any other file, a sentence
used by at least ``min_merchants`` merchants of the training window counts as boilerplate.

Two sentences the encoder cannot tell apart are the same sentence to every model: all-MiniLM-L6-v2
is uncased and splits punctuation off, so "Refund, please" and "refund please!" may give one
vector. :func:`encoder_classes` groups the vocabulary by vector (rounded), and ``overlap(...,
classes=...)`` counts a test sentence as seen when a training sentence has its vector: the audit
as the models see the text, not as the hashes do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tagger.data.tickets import Tickets


def boilerplate_ids(tickets: Tickets, source: Path | None) -> tuple[np.ndarray | None, str]:
    """Vocabulary mask of the file's boilerplate sentences from its build record (``None``: no record)."""
    record = Path(f"{source}.build.json") if source else None
    if record is None or not record.exists():
        return None, "sentences used by several merchants of the training window"
    ids = set(json.loads(record.read_text()).get("boilerplate_sentence_ids", []))
    return np.isin(tickets.sentence_vocab, list(ids)), f"the build record ({record.name})"


def encoder_classes(tickets: Tickets, decimals: int = 3) -> np.ndarray:
    """Per vocabulary sentence, the id of its class of sentences with the same vector (rounded to
    ``decimals``: one text embedded in two batches differs by float noise; two texts the encoder
    tells apart differ by far more). A sentence with no occurrence is a class of its own."""
    ids = tickets.sentence_ids.astype(np.int64)
    first = np.full(len(tickets.sentence_vocab), -1, np.int64)
    first[ids[::-1]] = np.arange(len(ids))[::-1]  # each sentence's first occurrence
    used = np.flatnonzero(first >= 0)
    rounded = np.round(np.asarray(tickets.embeddings[first[used]]) * 10**decimals).astype(np.int32)
    keys = np.ascontiguousarray(rounded).view(np.dtype((np.void, rounded.shape[1] * 4))).ravel()
    _, inverse = np.unique(keys, return_inverse=True)
    classes = np.arange(len(first)) + len(used)  # unused sentences: classes of their own
    classes[used] = inverse.ravel()
    return classes


def _occurrences(
    tickets: Tickets, classes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sentence occurrence: its ticket, its sentence id (its encoder class with ``classes``) and
    its ticket's merchant (as codes)."""
    owner = np.repeat(np.arange(len(tickets)), np.diff(tickets.offsets))
    account = pd.factorize(tickets.meta["account_id"].astype(str))[0].astype(np.int64)[owner]
    sid = tickets.sentence_ids.astype(np.int64)
    return owner, sid if classes is None else classes[sid], account


def overlap(
    tickets: Tickets,
    train: np.ndarray,
    test: np.ndarray,
    boilerplate: np.ndarray | None,
    min_merchants: int = 3,
    classes: np.ndarray | None = None,
) -> dict:
    """Verbatim overlap between the tickets of boolean masks ``train`` and ``test``; with
    ``classes`` (:func:`encoder_classes`), sentences with one vector count as one sentence."""
    owner, sid, account = _occurrences(tickets, classes)
    n_ids = len(tickets.sentence_vocab) if classes is None else int(classes.max(initial=-1)) + 1
    if boilerplate is not None and classes is not None:  # a class holding boilerplate is boilerplate
        by_class = np.zeros(n_ids, bool)
        by_class[classes[boilerplate]] = True
        boilerplate = by_class
    in_train, in_test = train[owner], test[owner]
    if boilerplate is None:  # a sentence several merchants use is a template, not a reason
        pairs = pd.DataFrame({"s": sid[in_train], "a": account[in_train]}).drop_duplicates()
        counts = pairs["s"].value_counts()
        boilerplate = np.zeros(n_ids, bool)
        boilerplate[counts.index[counts.to_numpy() >= min_merchants].to_numpy()] = True
    content = ~boilerplate[sid]
    seen = np.isin(sid, np.unique(sid[in_train & content]))
    key = account * n_ids + sid
    seen_same = np.isin(key, np.unique(key[in_train & content]))
    test_content = in_test & content

    def per_ticket(flags: np.ndarray) -> np.ndarray:
        return np.bincount(owner[test_content & flags], minlength=len(tickets)) > 0

    has = test & (np.bincount(owner[test_content], minlength=len(tickets)) > 0)
    any_seen, same_seen = per_ticket(seen) & has, per_ticket(seen_same) & has
    sets = _sentence_sets(tickets, owner, sid, content, account)
    train_sets = {sets[i] for i in np.flatnonzero(train) if sets[i]}
    exact = np.array([bool(sets[i]) and sets[i] in train_sets for i in range(len(tickets))]) & has
    n_test = int(has.sum())
    share = (lambda m: float(m.sum() / n_test)) if n_test else (lambda m: float("nan"))
    return {
        "train_tickets": int(train.sum()),
        "test_tickets": int(test.sum()),
        "test_tickets_with_text": n_test,
        "tickets_with_a_sentence_seen_in_training": share(any_seen),
        "tickets_with_a_sentence_seen_at_the_same_merchant": share(same_seen),
        "tickets_equal_to_a_training_ticket_of_the_merchant": share(exact),
        "sentence_occurrences_seen_in_training": float(
            seen[test_content].mean() if test_content.any() else 0.0
        ),
    }


def _sentence_sets(
    tickets: Tickets, owner: np.ndarray, sid: np.ndarray, content: np.ndarray, account: np.ndarray
) -> list[tuple]:
    """Each ticket's (merchant, sorted non-boilerplate sentence ids), empty where it has none."""
    out: list[tuple] = [()] * len(tickets)
    frame = pd.DataFrame({"t": owner[content], "s": sid[content], "a": account[content]})
    for t, group in frame.groupby("t", sort=False):
        out[int(t)] = (int(group["a"].iloc[0]), *sorted(group["s"].tolist()))
    return out


def cross_merchant_reuse(tickets: Tickets, boilerplate: np.ndarray | None) -> float:
    """Share of non-boilerplate sentence occurrences whose sentence another merchant also uses."""
    _, sid, account = _occurrences(tickets)
    keep = ~boilerplate[sid] if boilerplate is not None else np.ones(len(sid), bool)
    pairs = pd.DataFrame({"s": sid[keep], "a": account[keep]})
    merchants = pairs.drop_duplicates().groupby("s").size()
    return float((pairs["s"].map(merchants) > 1).mean()) if len(pairs) else 0.0
