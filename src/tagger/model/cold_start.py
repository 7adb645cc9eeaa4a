"""Labels with no training example, scored from their names alone (issue 6, first part).

A label's vector is the shared projection of the all-MiniLM-L6-v2 embedding of its name plus a
learned residual; a new label gets the projection of its name and a zero residual, so a merchant
can add a label, or join with only its label names, without retraining the encoder.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from tagger.data.labels import label_text, normalise_label
from tagger.model.base import AccountPrior
from tagger.model.label_table import LabelTable
from tagger.model.shared import SharedModel
from tagger.model.shared_estimator import SharedEstimator


def with_labels(
    estimator: SharedEstimator, additions: dict[str, list[str]], embedder=None
) -> SharedEstimator:
    """A copy of ``estimator`` that also scores ``additions`` (account -> label names).

    Names already known for the account (case-insensitively) are skipped. A new account gets a
    uniform prior over its labels for tickets without embeddings; an existing account keeps its
    prior (new labels have none until they have tickets).
    """
    old = estimator.table.frame
    known = {(a, str(lab).casefold()) for a, lab in zip(old["account_id"], old["label"], strict=True)}
    new_rows = []
    for account, names in additions.items():
        for name in names:
            label = normalise_label(name)
            if not label:
                raise ValueError(f"account {account!r}: empty label name")
            if (str(account), label.casefold()) not in known:
                known.add((str(account), label.casefold()))
                new_rows.append(
                    {"account_id": str(account), "label": label, "text": label_text(label), "n_train": 0}
                )
    if not new_rows:
        return estimator
    frame = pd.concat(
        [old.assign(old_row=np.arange(len(old))), pd.DataFrame(new_rows).assign(old_row=-1)],
        ignore_index=True,
    ).sort_values(["account_id", "label"], kind="stable")
    old_row = frame["old_row"].to_numpy()
    table = LabelTable(frame.drop(columns="old_row").reset_index(drop=True))
    is_old = old_row >= 0

    embedder = embedder or estimator.embedder
    if embedder is None:
        from tagger.embed import SentenceEmbedder

        embedder = SentenceEmbedder()
    names = np.zeros((len(table), estimator.name_vectors.shape[1]), np.float32)
    names[is_old] = estimator.name_vectors[old_row[is_old]]
    names[~is_old] = embedder.embed(table.frame["text"][~is_old].tolist(), progress=False)

    model = SharedModel(
        estimator.model.cfg,
        torch.from_numpy(names),
        torch.from_numpy(table.account_of_row()),
        table.n_accounts,
    )
    state = estimator.model.state_dict()
    new_state = model.state_dict()
    for key, value in state.items():
        if key in ("label_names", "account_mask"):
            continue
        if key == "label_residual" or key == "label_bias":
            value_new = torch.zeros_like(new_state[key])
            value_new[torch.from_numpy(is_old)] = value[torch.from_numpy(old_row[is_old])]
            new_state[key] = value_new
        elif key == "pool.account_query.weight":
            value_new = torch.zeros_like(new_state[key])
            old_index = estimator.table.account_index
            for a, i in table.account_index.items():
                if a in old_index:
                    value_new[i] = value[old_index[a]]
            new_state[key] = value_new
        else:
            new_state[key] = value
    model.load_state_dict(new_state)

    prior = np.zeros(len(table))
    prior[is_old] = estimator.prior.probs[old_row[is_old]]
    for start, end in table.account_slices.values():
        if prior[start:end].sum() == 0:
            prior[start:end] = 1.0 / (end - start)

    out = copy.copy(estimator)
    out.table, out.name_vectors, out.model = table, names, model.eval()
    out.prior = AccountPrior.from_probs(table, prior)
    out.embedder = embedder
    return out
