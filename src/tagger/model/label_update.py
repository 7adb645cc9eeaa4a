"""Changes to a merchant's label set without retraining: add, rename, retire, fold in examples.

The label side of the shared model is a table of unit vectors, one per (account, label). This
module edits that table with numpy only, so the PyTorch estimator (:mod:`tagger.model.cold_start`)
and the ONNX serving process (:mod:`tagger.serving.label_store`) apply an update the same way:

- a new label's vector is its name through the label tower (zero residual);
- a renamed label keeps its learned vector (same reason, new words);
- a retired label's row is removed;
- ``n`` example tickets fold into a label as ``normalise(w * v + sum of example ticket vectors)``,
  with ``w = name_weight`` for a new label and ``name_weight + n_train`` for a trained one: the
  name (or the training tickets) act as that many pseudo-examples.
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


@dataclass
class LabelState:
    """The label side of a shared model: ``vectors [L, K, d]`` (unit), ``prior [L]`` (for tickets
    without embeddings), ``names [L, 384]`` (name embeddings), and ``queries [A + 1, q]`` (each
    account's attention-query shift, the last row for an unknown account; ``None`` if the model has
    none)."""

    table: LabelTable
    vectors: np.ndarray
    prior: np.ndarray
    names: np.ndarray
    queries: np.ndarray | None = None

    def label_account(self) -> np.ndarray:
        """Account index of every row."""
        return self.table.account_of_row()


NameEncoder = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
"""label texts -> (name embeddings [n, 384], unit label vectors [n, d])"""
TicketEncoder = Callable[[LabelState, str, list[np.ndarray]], np.ndarray]
"""(state, account, tickets as [n_sentences, 384] arrays) -> unit ticket vectors [n, d]"""


def apply_update(
    state: LabelState,
    update: LabelUpdate,
    encode_names: NameEncoder,
    encode_tickets: TicketEncoder,
    name_weight: float = 2.0,
) -> LabelState:
    """The state after ``update``; raises :class:`UpdateError` (and changes nothing) if it is invalid."""
    account = str(update.account_id or "").strip()
    if not account:
        raise UpdateError("account_id", "empty account id")
    frame = state.table.frame
    exists = account in state.table.account_slices
    if update.create_account and exists:
        raise UpdateError("account_id", f"account {account!r} already exists")
    if not update.create_account and not exists:
        raise UpdateError("account_id", f"unknown account {account!r} (set create_account to add it)", 404)

    rows = list(state.table.rows_of(account))
    labels = {str(frame["label"].iat[r]): r for r in rows}  # name -> old row (-1: new)
    folded = {name.casefold(): name for name in labels}

    def known(raw: str, where: str) -> str:
        name = normalise_label(raw)
        if name.casefold() not in folded:
            raise UpdateError(where, f"account {account!r} has no label {raw!r}")
        return folded[name.casefold()]

    def fresh(raw: str, where: str) -> str:
        name = normalise_label(raw) if isinstance(raw, str) else ""
        if not name:
            raise UpdateError(where, "empty label name")
        if name.casefold() in folded:
            raise UpdateError(where, f"account {account!r} already has a label {folded[name.casefold()]!r}")
        return name

    for i, raw in enumerate(update.retire):
        name = known(raw, f"retire[{i}]")
        del labels[name], folded[name.casefold()]
    for old_raw, new_raw in update.rename.items():
        old = known(old_raw, f"rename.{old_raw}")
        del folded[old.casefold()]
        new = fresh(new_raw, f"rename.{old_raw}")
        labels[new] = labels.pop(old)
        folded[new.casefold()] = new
    for i, raw in enumerate(update.add):
        name = fresh(raw, f"add[{i}]")
        labels[name] = -1
        folded[name.casefold()] = name
    examples: dict[str, list[np.ndarray]] = {}
    for raw, tickets in update.examples.items():
        name = known(raw, f"examples.{raw}")
        examples[name] = [
            _example(t, f"examples.{raw}[{j}]", state.names.shape[1]) for j, t in enumerate(tickets)
        ]
    if not labels:
        raise UpdateError("retire", f"account {account!r} would have no label left")
    if not (update.add or update.rename or update.retire or any(examples.values()) or update.create_account):
        raise UpdateError("body", "nothing to change")

    # the account's new rows, in label order as LabelTable.from_meta sorts them
    names = sorted(labels)
    old_rows = np.array([labels[n] for n in names], np.int64)
    new_names = [n for n in names if labels[n] < 0]
    k, d = state.vectors.shape[1:]
    vectors = np.zeros((len(names), k, d), np.float32)
    name_emb = np.zeros((len(names), state.names.shape[1]), np.float32)
    seen = old_rows >= 0
    vectors[seen], name_emb[seen] = state.vectors[old_rows[seen]], state.names[old_rows[seen]]
    if new_names:
        emb, vec = encode_names([label_text(n) for n in new_names])
        name_emb[~seen], vectors[~seen] = emb, np.asarray(vec, np.float32)[:, None, :]
    n_train = np.where(seen, frame["n_train"].to_numpy()[np.maximum(old_rows, 0)], 0).astype(np.int64)
    prior = np.where(seen, state.prior[np.maximum(old_rows, 0)], 0.0)
    prior = prior / prior.sum() if prior.sum() > 0 else np.full(len(names), 1.0 / len(names))

    account_rows = pd.DataFrame(
        {"account_id": account, "label": names, "text": [label_text(n) for n in names], "n_train": n_train}
    )
    others = np.setdiff1d(np.arange(len(frame)), rows)
    merged = pd.concat(
        [frame.iloc[others].assign(_src=others), account_rows.assign(_src=-1)], ignore_index=True
    )
    order = np.argsort(merged["account_id"].to_numpy(str), kind="stable")
    merged = merged.iloc[order].reset_index(drop=True)
    table = LabelTable(merged.drop(columns="_src"))
    src = merged["_src"].to_numpy()
    mine = np.flatnonzero(src < 0)  # the account's rows, in the order built above

    def place(old: np.ndarray, own: np.ndarray) -> np.ndarray:
        out = np.zeros((len(table), *old.shape[1:]), old.dtype)
        out[src >= 0] = old[src[src >= 0]]
        out[mine] = own
        return out

    out = LabelState(
        table=table,
        vectors=place(state.vectors, vectors),
        prior=place(state.prior.astype(float), prior),
        names=place(state.names, name_emb),
        queries=_queries(state, table),
    )
    if examples:
        rows_of = dict(zip(names, mine, strict=True))
        for name, tickets in examples.items():
            row = rows_of[name]
            ticket_vectors = encode_tickets(out, account, tickets)
            weight = name_weight + float(out.table.frame["n_train"].iat[row])
            blended = weight * out.vectors[row] + ticket_vectors.sum(0)[None, :]
            out.vectors[row] = blended / np.maximum(np.linalg.norm(blended, axis=-1, keepdims=True), 1e-12)
            out.table.frame.loc[row, "n_train"] += len(tickets)
    return out


def _example(ticket, where: str, dim: int) -> np.ndarray:
    x = np.asarray(ticket, np.float32)
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
        raise UpdateError(
            where, f"an example needs [n_sentences >= 1, {dim}] embeddings, got {list(x.shape)}"
        )
    if not np.isfinite(x).all():
        raise UpdateError(where, "an example has NaN or infinite values")
    return x


def _queries(state: LabelState, table: LabelTable) -> np.ndarray | None:
    """Each account's query shift in the new table's account order; a new account gets the unknown row."""
    if state.queries is None:
        return None
    old = state.table.account_index
    unknown = len(state.table.accounts)
    index = [old.get(a, unknown) for a in table.accounts] + [unknown]
    return state.queries[np.asarray(index)]
