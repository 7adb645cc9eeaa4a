"""Changes to a merchant's label set without retraining: add, rename, retire, fold in examples.

The label side of the shared model is a table of unit vectors, one per (account, label). This
module edits that table with numpy only, so the PyTorch estimator (:mod:`tagger.model.cold_start`)
and the ONNX serving process (:mod:`tagger.serving.label_store`) apply an update the same way:

- a new label's vector is its name through the label tower (zero residual);
- a renamed label keeps its learned vector (same reason, new words);
- a retired label's row is removed;
- ``n`` example tickets fold into a label as ``normalise(w * v + e * sum of example ticket vectors)``,
  with ``w = name_weight`` for a new label and ``name_weight + n_train`` for a trained one (the
  name, or the training tickets, act as that many pseudo-examples) and ``e = example_weight``
  (1 for a merchant's examples; agents' corrections count more, :mod:`tagger.model.corrections`);
  ``max_turn_deg`` caps the angle by which an update may turn a label the merchant already had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tagger.data.labels import label_text, normalise_label
from tagger.model.label_table import LabelTable


class UpdateError(ValueError):
    """A refused update; ``field`` names the part of the request at fault, ``status`` an HTTP code."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


@dataclass
class LabelUpdate:
    """One account's change. ``examples`` maps a label (its name after the update) to a list of
    tickets, each an ``[n_sentences, 384]`` array of sentence embeddings."""

    account_id: str
    add: Sequence[str] = ()
    rename: dict[str, str] = field(default_factory=dict)
    retire: Sequence[str] = ()
    examples: dict[str, list[np.ndarray]] = field(default_factory=dict)
    create_account: bool = False
    example_weight: float = 1.0
    max_turn_deg: float | None = None


@dataclass(frozen=True)
class AccountLabels:
    """One merchant's label side, sorted by label: ``vectors [l, K, d]`` (unit), ``prior [l]`` (for
    tickets without embeddings), ``names [l, 384]`` (name embeddings), ``query [q]`` (the account's
    attention-query shift; ``None`` if the model has none). Never changed once built."""

    labels: tuple[str, ...]
    text: tuple[str, ...]
    n_train: np.ndarray
    prior: np.ndarray
    vectors: np.ndarray
    names: np.ndarray
    query: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LabelState:
    """The label side of a shared model, one :class:`AccountLabels` per merchant. ``unknown_query``
    is the query shift of an account the model never saw (a new account starts from it).

    An update replaces the changed merchants' entries and shares every other one, so it costs what
    the changed merchants hold (plus a copy of the account dictionary's references).
    """

    accounts: dict[str, AccountLabels]
    unknown_query: np.ndarray | None = None
    n_labels: int = -1

    def __post_init__(self) -> None:
        if self.n_labels < 0:
            object.__setattr__(self, "n_labels", sum(len(a) for a in self.accounts.values()))

    def some(self) -> AccountLabels | None:
        """Any one merchant's labels (every merchant's arrays share its shapes); None when empty."""
        return next(iter(self.accounts.values()), None)

    def replace(self, changed: dict[str, AccountLabels]) -> LabelState:
        """A new state with the ``changed`` merchants' labels (the others shared)."""
        accounts = dict(self.accounts)
        n_labels = self.n_labels
        for account, labels in changed.items():
            old = accounts.get(account)
            n_labels += len(labels) - (len(old) if old is not None else 0)
            accounts[account] = labels
        return LabelState(accounts, self.unknown_query, n_labels)

    @classmethod
    def from_table(
        cls,
        table: LabelTable,
        vectors: np.ndarray,
        prior: np.ndarray,
        names: np.ndarray,
        queries: np.ndarray | None = None,
    ) -> LabelState:
        """From merchant-contiguous arrays over ``table``'s rows (``queries [A + 1, q]``, the last row
        for an unknown account); each merchant's arrays are views, not copies."""
        labels = table.frame["label"].astype(str).tolist()
        text = table.frame["text"].astype(str).tolist()
        n_train = table.frame["n_train"].to_numpy(np.int64)
        accounts = {
            account: AccountLabels(
                tuple(labels[s:e]),
                tuple(text[s:e]),
                n_train[s:e],
                np.asarray(prior[s:e], float),
                vectors[s:e],
                names[s:e],
                None if queries is None else queries[i],
            )
            for i, (account, (s, e)) in enumerate(table.account_slices.items())
        }
        return cls(accounts, None if queries is None else queries[-1], len(table))

    def to_table(self) -> tuple[LabelTable, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(table, vectors, prior, names, queries)``: merchant-contiguous arrays, accounts sorted
        (the layout :class:`LabelTable.from_meta` gives), the inverse of :meth:`from_table`."""
        order = sorted(self.accounts)
        parts = [self.accounts[a] for a in order]
        frame = pd.DataFrame(
            {
                "account_id": np.repeat(np.asarray(order, object), [len(p) for p in parts]),
                "label": [lab for p in parts for lab in p.labels],
                "text": [t for p in parts for t in p.text],
                "n_train": np.concatenate([p.n_train for p in parts]).astype(np.int64),
            }
        )
        queries = None
        if self.unknown_query is not None:
            queries = np.stack([*(p.query for p in parts), self.unknown_query]).astype(np.float32)
        return (
            LabelTable(frame),
            np.concatenate([p.vectors for p in parts]).astype(np.float32),
            np.concatenate([p.prior for p in parts]).astype(float),
            np.concatenate([p.names for p in parts]).astype(np.float32),
            queries,
        )


NameEncoder = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
"""label texts -> (name embeddings [n, 384], unit label vectors [n, d])"""
TicketEncoder = Callable[[AccountLabels, list[np.ndarray]], np.ndarray]
"""(the account's labels, tickets as [n_sentences, 384] arrays) -> unit ticket vectors [n, d]"""


def apply_update(
    state: LabelState,
    update: LabelUpdate,
    encode_names: NameEncoder,
    encode_tickets: TicketEncoder,
    name_weight: float,
) -> LabelState:
    """The state after ``update``; raises :class:`UpdateError` (and changes nothing) if it is invalid.
    Only the account's own labels are read and written."""
    account, current = _account(state, update)
    names = _LabelNames(account, current.labels if current is not None else ())
    for i, raw in enumerate(update.retire):
        names.retire(raw, f"retire[{i}]")
    for old, new in update.rename.items():
        names.rename(old, new, f"rename.{old}")
    for i, raw in enumerate(update.add):
        names.add(raw, f"add[{i}]")
    _, _, dim = _shapes(current if current is not None else state.some())
    examples = {
        names.known(raw, f"examples.{raw}"): [
            _example(t, f"examples.{raw}[{j}]", dim) for j, t in enumerate(tickets)
        ]
        for raw, tickets in update.examples.items()
    }
    if not names.labels:
        raise UpdateError("retire", f"account {account!r} would have no label left")
    if not (update.add or update.rename or update.retire or any(examples.values()) or update.create_account):
        raise UpdateError("body", "nothing to change")
    if not (update.example_weight > 0 and np.isfinite(update.example_weight)):
        raise UpdateError("example_weight", f"must be a positive number, not {update.example_weight!r}")
    mine = _account_labels(state, current, names.labels, encode_names)
    for name, tickets in examples.items():
        row = mine.labels.index(name)
        before = mine.vectors[row].copy()
        _fold_in(mine, row, encode_tickets(mine, tickets), name_weight, update.example_weight)
        if update.max_turn_deg is not None and names.labels[name] >= 0:  # a new label starts from its name
            mine.vectors[row] = turn_at_most(before, mine.vectors[row], update.max_turn_deg)
    return state.replace({account: mine})


def _account(state: LabelState, update: LabelUpdate) -> tuple[str, AccountLabels | None]:
    """The update's account id and its current labels (None for a new account), checked."""
    account = str(update.account_id or "").strip()
    if not account:
        raise UpdateError("account_id", "empty account id")
    current = state.accounts.get(account)
    if update.create_account and current is not None:
        raise UpdateError("account_id", f"account {account!r} already exists")
    if not update.create_account and current is None:
        raise UpdateError("account_id", f"unknown account {account!r} (set create_account to add it)", 404)
    return account, current


class _LabelNames:
    """An account's label names being edited: name -> old position (-1: new), compared
    case-insensitively; each refusal names the field it came from."""

    def __init__(self, account: str, old_labels: tuple[str, ...]):
        self.account = account
        self.labels = {name: i for i, name in enumerate(old_labels)}
        self.folded = {name.casefold(): name for name in self.labels}

    def known(self, raw: str, where: str) -> str:
        name = normalise_label(raw)
        if name.casefold() not in self.folded:
            raise UpdateError(where, f"account {self.account!r} has no label {raw!r}")
        return self.folded[name.casefold()]

    def _fresh(self, raw: str, where: str) -> str:
        name = normalise_label(raw) if isinstance(raw, str) else ""
        if not name:
            raise UpdateError(where, "empty label name")
        if name.casefold() in self.folded:
            taken = self.folded[name.casefold()]
            raise UpdateError(where, f"account {self.account!r} already has a label {taken!r}")
        return name

    def retire(self, raw: str, where: str) -> None:
        name = self.known(raw, where)
        del self.labels[name], self.folded[name.casefold()]

    def rename(self, old_raw: str, new_raw: str, where: str) -> None:
        old = self.known(old_raw, where)
        del self.folded[old.casefold()]
        new = self._fresh(new_raw, where)
        self.labels[new] = self.labels.pop(old)
        self.folded[new.casefold()] = new

    def add(self, raw: str, where: str) -> None:
        name = self._fresh(raw, where)
        self.labels[name] = -1
        self.folded[name.casefold()] = name


def _account_labels(
    state: LabelState, current: AccountLabels | None, labels: dict[str, int], encode_names: NameEncoder
) -> AccountLabels:
    """The account's new rows, in label order as LabelTable.from_meta sorts them: kept labels keep
    their vectors, counts and priors; new ones get their vectors from their names."""
    k, d, dim = _shapes(current if current is not None else state.some())
    names = sorted(labels)
    old_pos = np.array([labels[n] for n in names], np.int64)
    new_names = [n for n in names if labels[n] < 0]
    vectors = np.zeros((len(names), k, d), np.float32)
    name_emb = np.zeros((len(names), dim), np.float32)
    seen = old_pos >= 0
    n_train = np.zeros(len(names), np.int64)
    prior = np.zeros(len(names))
    if current is not None and seen.any():
        vectors[seen], name_emb[seen] = current.vectors[old_pos[seen]], current.names[old_pos[seen]]
        n_train[seen], prior[seen] = current.n_train[old_pos[seen]], current.prior[old_pos[seen]]
    if new_names:
        emb, vec = encode_names([label_text(n) for n in new_names])
        name_emb[~seen], vectors[~seen] = emb, np.asarray(vec, np.float32)[:, None, :]
    prior = prior / prior.sum() if prior.sum() > 0 else np.full(len(names), 1.0 / len(names))
    query = current.query if current is not None else state.unknown_query
    return AccountLabels(
        tuple(names), tuple(label_text(n) for n in names), n_train, prior, vectors, name_emb, query
    )


def _fold_in(
    mine: AccountLabels, row: int, ticket_vectors: np.ndarray, name_weight: float, example_weight: float
) -> None:
    """Blend a label's example tickets into its vector (in place): its name counts ``name_weight``
    tickets, its training tickets one each, each example ``example_weight``."""
    weight = name_weight + float(mine.n_train[row])
    blended = weight * mine.vectors[row] + example_weight * ticket_vectors.sum(0)[None, :]
    mine.vectors[row] = blended / np.maximum(np.linalg.norm(blended, axis=-1, keepdims=True), 1e-12)
    mine.n_train[row] += len(ticket_vectors)


def turn_at_most(before: np.ndarray, after: np.ndarray, degrees: float) -> np.ndarray:
    """``after`` (unit rows ``[K, d]``), each row turned back toward ``before`` along the great circle
    so that it is at most ``degrees`` from it."""
    cap = np.deg2rad(degrees)
    out = np.array(after, np.float32, copy=True)
    for k in range(len(out)):
        angle = float(np.arccos(np.clip(before[k] @ after[k], -1.0, 1.0)))
        if angle <= cap:
            continue
        away = after[k] - (before[k] @ after[k]) * before[k]  # the unit direction from before toward after
        away /= max(float(np.linalg.norm(away)), 1e-12)
        out[k] = np.cos(cap) * before[k] + np.sin(cap) * away
    return out


def _shapes(some: AccountLabels | None) -> tuple[int, int, int]:
    """(prototypes, d, name embedding size) of the model's label arrays, from any merchant's."""
    if some is None:
        raise UpdateError("account_id", "the label state has no account to take the vector size from")
    return some.vectors.shape[1], some.vectors.shape[2], some.names.shape[1]


def _example(ticket, where: str, dim: int) -> np.ndarray:
    x = np.asarray(ticket, np.float32)
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
        raise UpdateError(
            where, f"an example needs [n_sentences >= 1, {dim}] embeddings, got {list(x.shape)}"
        )
    if not np.isfinite(x).all():
        raise UpdateError(where, "an example has NaN or infinite values")
    return x
