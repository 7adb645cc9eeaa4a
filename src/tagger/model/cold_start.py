"""Label updates on a trained PyTorch shared model: new labels and accounts from their names alone,
renames, retirements and few-shot examples, without retraining the encoder.

The edit itself is :func:`tagger.model.label_update.apply_update` (numpy, shared with the ONNX
serving process); this module gives it the model's encoders and turns the edited label state back
into a :class:`SharedEstimator` whose ``label_vectors()`` are exactly the edited vectors.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from tagger.data.labels import normalise_label
from tagger.data.tickets import Tickets
from tagger.model.base import AccountPrior
from tagger.model.batches import pad_sentences
from tagger.model.label_update import AccountLabels, LabelState, LabelUpdate, apply_update
from tagger.model.shared_estimator import SharedEstimator


def name_weight(estimator: SharedEstimator) -> float:
    """Pseudo-examples a label's name (or its training tickets) count for when examples fold in."""
    return float(estimator.cfg["cold_start"]["name_weight"])


def label_state(estimator: SharedEstimator) -> LabelState:
    """The label side of a fitted shared model."""
    model = estimator.model.eval()
    queries = model.account_queries()
    queries = None if queries is None else queries.numpy().copy()
    with torch.no_grad():
        vectors = model.label_vectors().numpy().copy()
    return LabelState.from_table(
        estimator.table,
        vectors,
        np.asarray(estimator.prior.probs, float),
        np.asarray(estimator.name_vectors, np.float32),
        queries,
    )


def update_labels(estimator: SharedEstimator, updates: list[LabelUpdate], embedder=None) -> SharedEstimator:
    """A copy of ``estimator`` with ``updates`` applied in order (the original is unchanged)."""
    if estimator.model.label_bias is not None:
        raise ValueError("label updates need score.label_bias: false (a bias has no value for a new label)")
    embedder = embedder or estimator.embedder
    if embedder is None:
        from tagger.embed import SentenceEmbedder

        embedder = SentenceEmbedder()
    model = estimator.model.eval()
    max_sentences = estimator.max_sentences

    @torch.no_grad()
    def encode_names(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = np.asarray(embedder.embed(texts, progress=False), np.float32)
        return emb, model.name_vectors(torch.from_numpy(emb)).numpy()

    @torch.no_grad()
    def encode_tickets(labels: AccountLabels, tickets: list[np.ndarray]) -> np.ndarray:
        batch = Tickets.from_vectors(["-"] * len(tickets), tickets)
        x, mask = pad_sentences(batch.embeddings, batch.offsets, np.arange(len(tickets)), max_sentences)
        shift = None if labels.query is None else torch.from_numpy(np.tile(labels.query, (len(tickets), 1)))
        return model.ticket_vectors(torch.from_numpy(x), torch.from_numpy(mask), shift).numpy()

    state = label_state(estimator)
    for update in updates:
        state = apply_update(state, update, encode_names, encode_tickets, name_weight(estimator))
    out = with_state(estimator, state)
    out.embedder = embedder
    return out


def with_state(estimator: SharedEstimator, state: LabelState) -> SharedEstimator:
    """A copy of ``estimator`` scoring the labels of ``state``."""
    table, vectors, prior, names, queries = state.to_table()
    model = estimator.model.relabelled(
        torch.from_numpy(names),
        torch.from_numpy(vectors),
        None if queries is None else torch.from_numpy(queries),
        table.n_accounts,
    )
    out = copy.copy(estimator)
    out.table, out.name_vectors, out.model = table, names, model
    out.prior = AccountPrior.from_probs(table, prior)
    return out


def with_labels(
    estimator: SharedEstimator, additions: dict[str, list[str]], embedder=None
) -> SharedEstimator:
    """A copy of ``estimator`` that also scores ``additions`` (account -> label names) from their names.

    Names already known for the account (case-insensitively) are skipped; an account not in the
    table is created with a uniform prior over its labels (for tickets without embeddings).
    """
    updates = []
    for account, names in additions.items():
        rows = estimator.table.rows_of(account)
        known = {str(lab).casefold() for lab in estimator.table.frame["label"].iloc[rows.start : rows.stop]}
        new = list(dict.fromkeys(n for n in map(normalise_label, names) if n.casefold() not in known))
        if new:
            updates.append(LabelUpdate(str(account), add=new, create_account=not len(rows)))
    return update_labels(estimator, updates, embedder) if updates else estimator
