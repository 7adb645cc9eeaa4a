"""Metrics of predictions against the tickets' true labels (scikit-learn and torchmetrics).

One row of outcomes per ticket (every ticket included: one whose label or account the model
never saw in training is a miss, an abstention is a miss), and every metric computed from those
rows, for train.py's validation and the backtest alike. Labels are compared as (account, label)
keys, so tickets pool across folds whose label tables differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics.functional.classification import binary_calibration_error

from tagger.data.labels import parent_label
from tagger.data.tickets import Tickets
from tagger.model.base import Predictions
from tagger.model.thresholds import answer_levels

MERCHANT_BUCKETS = [(0, 50, "<50"), (50, 200, "50-199"), (200, 1000, "200-999"), (1000, np.inf, ">=1000")]
LABEL_BUCKETS = [
    (0, 1, "0 (new)"),
    (1, 6, "1-5"),
    (6, 21, "6-20"),
    (21, 101, "21-100"),
    (101, np.inf, ">100"),
]

# days between a ticket and the end of the model's training data (whole days, the first day is 0)
AGE_BUCKETS = [
    (0, 4, "0-3"),
    (4, 8, "4-7"),
    (8, 15, "8-14"),
    (15, 22, "15-21"),
    (22, 29, "22-28"),
    (29, 36, "29-35"),
    (36, np.inf, ">35"),
]


def model_age(timestamps: np.ndarray, trained_until: float) -> tuple[np.ndarray, np.ndarray]:
    """How stale the model is for each ticket: whole days since the end of its training data
    (``trained_until``, seconds since 1970) and the :data:`AGE_BUCKETS` bucket of that."""
    days = np.floor((np.asarray(timestamps, float) - trained_until) / 86_400.0)
    return days.astype(int), _bucket(days, AGE_BUCKETS)


def _bucket(values: np.ndarray, buckets: list) -> np.ndarray:
    out = np.empty(len(values), object)
    for low, high, name in buckets:
        out[(values >= low) & (values < high)] = name
    return out


def labels_per_account(train_meta: pd.DataFrame) -> dict[str, int]:
    """How many labels each account has in training data (what a model fit on it chooses among)."""
    pairs = train_meta[["account_id", "label"]].astype(str).drop_duplicates()
    return pairs["account_id"].value_counts().to_dict()


def chance(n_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ticket, accuracy and top-3 of guessing uniformly among its account's ``n_labels`` labels
    (0 for an account with none: an unknown account gets no answer)."""
    n_labels = np.asarray(n_labels, float)
    known = n_labels > 0
    safe = np.where(known, n_labels, 1.0)
    return np.where(known, 1 / safe, 0.0), np.where(known, np.minimum(3, safe) / safe, 0.0)


def outcomes(
    pred: Predictions,
    test: Tickets,
    train_meta: pd.DataFrame,
    n_labels: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """One row per test ticket: truth, prediction, confidence and the slices it belongs to.

    ``n_labels``: the number of candidate labels of each account in the model (default: its labels
    in ``train_meta``); a ticket's ``n_account_labels`` (0 for an unknown account) sets its chance
    level."""
    meta = test.meta.reset_index(drop=True)
    accounts = meta["account_id"].astype(str).to_numpy()
    candidates = labels_per_account(train_meta) if n_labels is None else n_labels
    truth = meta["label"].astype(str).to_numpy()
    truth_parents = np.array([parent_label(t) for t in truth], object)
    predicted = pred.labels(0)
    predicted = np.where(pred.abstained, None, predicted)
    top3 = np.stack([pred.labels(r) for r in range(min(3, pred.top_rows.shape[1]))], axis=1)
    top3_hit = (top3 == truth[:, None]).any(axis=1) & ~pred.abstained
    account_size = train_meta["account_id"].astype(str).value_counts()
    label_size = train_meta.groupby([train_meta["account_id"].astype(str), "label"]).size()
    n_account = pd.Series(accounts).map(account_size).fillna(0).to_numpy()
    n_label = np.array([label_size.get((a, lab), 0) for a, lab in zip(accounts, truth, strict=True)])
    return pd.DataFrame(
        {
            "ticket_id": meta["ticket_id"].astype(str).to_numpy(),
            "account_id": accounts,
            "label": truth,
            "predicted": predicted,
            "correct": predicted == truth,
            "top3_hit": top3_hit,
            "parent_correct": [
                p is not None and parent_label(p) == t for p, t in zip(predicted, truth_parents, strict=True)
            ],
            "confidence": pred.confidence.astype(float),
            # the answer one level up: the most probable parent and its probability (summed)
            "parent_predicted": np.where(pred.abstained, None, pred.parents),
            "parent_confidence": pred.parent_confidence.astype(float),
            "parent_answer_correct": ~pred.abstained & (pred.parents == truth_parents),
            "abstained": pred.abstained,
            "no_embeddings": ~meta["has_embeddings"].to_numpy(),
            "account_train_tickets": n_account,
            "new_account": n_account == 0,
            "new_label": n_label == 0,
            "merchant_size": _bucket(n_account, MERCHANT_BUCKETS),
            "label_frequency": _bucket(n_label, LABEL_BUCKETS),
            "n_account_labels": pd.Series(accounts).map(candidates).fillna(0).to_numpy(int),
        }
    )


def class_codes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted (account, label) codes of outcome rows; an abstention is -1."""
    true_keys = frame["account_id"] + "\x1f" + frame["label"]
    pred_keys = frame["account_id"] + "\x1f" + frame["predicted"].fillna("\x00")
    codes, _ = pd.factorize(pd.concat([true_keys, pred_keys], ignore_index=True))
    true, pred = codes[: len(frame)], codes[len(frame) :].copy()
    pred[frame["predicted"].isna().to_numpy()] = -1
    return true, pred


def macro_f1_score(true: np.ndarray, pred: np.ndarray, average: str = "macro") -> float:
    """F1 averaged over the classes seen in truth or prediction (abstentions are no class)."""
    labels = np.setdiff1d(np.union1d(true, pred), [-1])
    return (
        float(f1_score(true, pred, labels=labels, average=average, zero_division=0))
        if len(labels)
        else np.nan
    )


def auto_tagged(
    frame: pd.DataFrame, leaf: np.ndarray, parent: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which rows are answered at the leaf (confidence >= ``leaf`` threshold), which one level up
    (the leaf unsure, the parent's confidence >= ``parent``), and whether each answer is right."""
    if "parent_confidence" not in frame:
        parent = None
    at_leaf, at_parent = answer_levels(
        frame["confidence"].to_numpy(float),
        frame["parent_confidence"].to_numpy(float) if parent is not None else None,
        ~frame["abstained"].to_numpy(bool),
        leaf,
        parent,
    )
    right = np.where(
        at_leaf,
        frame["correct"].to_numpy(bool),
        at_parent & frame.get("parent_answer_correct", pd.Series(False, frame.index)).to_numpy(bool),
    )
    return at_leaf, at_parent, right


def aurc(frame: pd.DataFrame) -> float:
    """Area under the risk-coverage curve (Geifman et al., 2018): the error rate among the k most
    confident tickets, averaged over k = 1..n (an abstention counts as the least confident miss);
    lower is better, and a perfect ranking of this model's errors gives the least."""
    confidence = np.where(frame["abstained"].to_numpy(bool), -1.0, frame["confidence"].to_numpy(float))
    wrong = ~frame["correct"].to_numpy(bool)
    order = np.argsort(-confidence, kind="stable")
    return float(np.mean(np.cumsum(wrong[order]) / np.arange(1, len(frame) + 1))) if len(frame) else np.nan


def coverage_ceiling(frame: pd.DataFrame, target: float) -> float:
    """The share of tickets that per-merchant leaf thresholds chosen on these very tickets could
    answer with each merchant's precision at least ``target``: for each merchant the longest run of
    its most confident tickets whose precision reaches it. Not a method (it looks at the answers): the
    most that thresholds keeping each merchant's own precision at ``target`` could answer with these
    confidences (a promise kept only over all merchants together can answer more)."""
    if not len(frame):
        return np.nan
    confidence = np.where(frame["abstained"].to_numpy(bool), -1.0, frame["confidence"].to_numpy(float))
    correct = frame["correct"].to_numpy(bool) & (confidence >= 0)
    answered = 0
    for _, rows in pd.Series(np.arange(len(frame))).groupby(frame["account_id"].astype(str).to_numpy()):
        mine = rows.to_numpy()
        order = np.argsort(-confidence[mine], kind="stable")
        right = correct[mine][order]
        precision = np.cumsum(right) / np.arange(1, len(mine) + 1)
        ok = np.flatnonzero(precision >= target)
        answered += int(ok[-1]) + 1 if len(ok) else 0
    return answered / len(frame)


def summary(
    frame: pd.DataFrame,
    thresholds: dict[float, np.ndarray] | None = None,
    parent_thresholds: dict[float, np.ndarray] | None = None,
) -> dict:
    """The metrics of a set of outcomes; ``thresholds`` maps a precision target to each row's
    confidence threshold (chosen on validation) for the coverage figures, ``parent_thresholds`` to
    its parent-level threshold for the hierarchical ones (answered at the leaf, else at the parent).
    ECE is over answered tickets only; ``accuracy_chance`` and ``top3_chance`` (uniform guessing
    among the ticket's account's labels) need the ``n_account_labels`` column."""
    if len(frame) == 0:
        return {"n": 0}
    true, pred = class_codes(frame)
    accounts = frame["account_id"].to_numpy()
    per_account = [macro_f1_score(true[accounts == a], pred[accounts == a]) for a in np.unique(accounts)]
    correct = frame["correct"].to_numpy()
    # calibration of the answers given: an abstention has no confidence to calibrate (it is
    # recorded as 0, which would count every abstention as a perfectly calibrated miss)
    answered = ~frame["abstained"].to_numpy(bool)
    out = {
        "n": len(frame),
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": macro_f1_score(true, pred),
        "macro_f1_account_mean": float(np.nanmean(per_account)),
        "weighted_f1": macro_f1_score(true, pred, "weighted"),
        "top3_accuracy": float(frame["top3_hit"].mean()),
        "parent_accuracy": float(frame["parent_correct"].mean()),
        "ece": float(
            binary_calibration_error(
                torch.tensor(frame["confidence"].to_numpy()[answered], dtype=torch.float32),
                torch.tensor(correct[answered], dtype=torch.long),
                n_bins=15,
            )
        )
        if answered.any()
        else float("nan"),
        "aurc": aurc(frame),
    }
    if "n_account_labels" in frame:  # guessing uniformly among the ticket's account's labels
        accuracy_chance, top3_chance = chance(frame["n_account_labels"])
        out["accuracy_chance"] = float(accuracy_chance.mean())
        out["top3_chance"] = float(top3_chance.mean())
    for column in ("new_label", "new_account", "no_embeddings", "abstained"):
        if column in frame:  # tickets no model could get right, and those scored from the prior
            out[f"n_{column}"] = int(frame[column].sum())
    for target, threshold in (thresholds or {}).items():
        key = f"{round(target * 100)}"
        parent = (parent_thresholds or {}).get(target)
        at_leaf, at_parent, right = auto_tagged(frame, threshold, parent)
        out[f"coverage_at_{key}_precision"] = float(at_leaf.mean())
        out[f"precision_at_{key}_target"] = float(correct[at_leaf].mean()) if at_leaf.any() else float("nan")
        auto = at_leaf | at_parent  # (the leaf's answers alone when no parent thresholds are given)
        out[f"hier_coverage_at_{key}_precision"] = float(auto.mean())
        out[f"hier_precision_at_{key}_target"] = float(right[auto].mean()) if auto.any() else float("nan")
        out[f"parent_share_at_{key}"] = float(at_parent.mean())
    return out


def selection_score(pred: Predictions, val: Tickets, train: Tickets) -> float:
    """What every choice on a validation slice maximises (a baseline's grid point, the shared model's
    epoch): macro-F1 per account averaged over accounts, the figure the reports lead with, scored
    exactly as they score it (a label or merchant unseen in ``train`` is a miss)."""
    return summary(outcomes(pred, val, train.meta))["macro_f1_account_mean"]
