"""Classification metrics of predictions against the tickets' true labels (scikit-learn).

Every ticket counts: one whose label (or account) the model never saw in training is a miss,
and one the model abstained on is a miss for accuracy and a false negative for F1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from tagger.model.base import Predictions

ABSTAIN = -1


def class_ids(pred: Predictions, meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class ids over (account, label) pairs.

    Seen pairs are label-table rows; each unseen pair gets its own id past the table; an
    abstention is ``ABSTAIN`` (which no F1 average counts as a class).
    """
    table = pred.table
    true = table.rows(meta["account_id"], meta["label"])
    unseen = true < 0
    if unseen.any():
        keys = pd.Series(meta["account_id"].astype(str) + "\x1f" + meta["label"].astype(str))[unseen]
        codes = pd.factorize(keys)[0]
        true = true.copy()
        true[unseen] = len(table) + codes
    predicted = np.where(pred.abstained, ABSTAIN, pred.top_rows[:, 0])
    predicted = np.where(predicted < 0, ABSTAIN, predicted)
    return true, predicted


def _f1(true: np.ndarray, predicted: np.ndarray, average: str) -> float:
    labels = np.setdiff1d(np.union1d(true, predicted), [ABSTAIN])
    if len(labels) == 0:
        return float("nan")
    return float(f1_score(true, predicted, labels=labels, average=average, zero_division=0))


def classification_metrics(pred: Predictions, meta: pd.DataFrame) -> dict:
    """accuracy, macro-F1 over (account, label) pairs, macro-F1 averaged per account, weighted F1,
    top-3 accuracy and counts of the tickets the model could not have got right."""
    meta = meta.reset_index(drop=True)
    if len(meta) == 0:
        return {"n": 0}
    true, predicted = class_ids(pred, meta)
    top3 = (pred.top_rows[:, :3] == true[:, None]).any(axis=1) & ~pred.abstained
    accounts = meta["account_id"].astype(str).to_numpy()
    per_account = [_f1(true[accounts == a], predicted[accounts == a], "macro") for a in np.unique(accounts)]
    return {
        "n": len(meta),
        "accuracy": float(accuracy_score(true, predicted)),
        "macro_f1": _f1(true, predicted, "macro"),
        "macro_f1_account_mean": float(np.nanmean(per_account)),
        "weighted_f1": _f1(true, predicted, "weighted"),
        "top3_accuracy": float(top3.mean()),
        "n_unseen_label": int((true >= len(pred.table)).sum()),
        "n_unknown_account": int((pred.table.account_ids(meta["account_id"]) < 0).sum()),
        "n_no_embeddings": int(pred.fallback.sum()),
        "n_abstained": int(pred.abstained.sum()),
    }
