"""Per-ticket outcomes of a model on a test window, and the metrics computed from them.

Outcomes are kept per ticket (one row each, every test ticket included) so that metrics,
slices and bootstrap resamples are all computed from the same table. Labels are compared as
(account, label) keys, so tickets pool across folds whose label tables differ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics.functional.classification import binary_calibration_error

from tagger.data.labels import parent_label
from tagger.data.tickets import Tickets
from tagger.model.base import Predictions

MERCHANT_BUCKETS = [(0, 50, "<50"), (50, 200, "50-199"), (200, 1000, "200-999"), (1000, np.inf, ">=1000")]
LABEL_BUCKETS = [
    (0, 1, "0 (new)"),
    (1, 6, "1-5"),
    (6, 21, "6-20"),
    (21, 101, "21-100"),
    (101, np.inf, ">100"),
]


def _bucket(values: np.ndarray, buckets: list) -> np.ndarray:
    out = np.empty(len(values), object)
    for low, high, name in buckets:
        out[(values >= low) & (values < high)] = name
    return out


def outcomes(pred: Predictions, test: Tickets, train_meta: pd.DataFrame) -> pd.DataFrame:
    """One row per test ticket: truth, prediction, confidence and the slices it belongs to."""
    meta = test.meta.reset_index(drop=True)
    accounts = meta["account_id"].astype(str).to_numpy()
    truth = meta["label"].astype(str).to_numpy()
    predicted = pred.labels(0)
    predicted = np.where(pred.abstained, None, predicted)
    names = pred.table.frame["label"].to_numpy(object)
    top3 = np.array([[names[r] if r >= 0 else None for r in row[:3]] for row in pred.top_rows], dtype=object)
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
                p is not None and parent_label(p) == parent_label(t)
                for p, t in zip(predicted, truth, strict=True)
            ],
            "confidence": pred.confidence.astype(float),
            "abstained": pred.abstained,
            "no_embeddings": ~meta["has_embeddings"].to_numpy(),
            "new_account": n_account == 0,
            "new_label": n_label == 0,
            "merchant_size": _bucket(n_account, MERCHANT_BUCKETS),
            "label_frequency": _bucket(n_label, LABEL_BUCKETS),
        }
    )


def _codes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    true_keys = frame["account_id"] + "\x1f" + frame["label"]
    pred_keys = frame["account_id"] + "\x1f" + frame["predicted"].fillna("\x00")
    codes, _ = pd.factorize(pd.concat([true_keys, pred_keys], ignore_index=True))
    true, pred = codes[: len(frame)], codes[len(frame) :].copy()
    pred[frame["predicted"].isna().to_numpy()] = -1
    return true, pred


def _macro_f1(true: np.ndarray, pred: np.ndarray, average: str = "macro") -> float:
    labels = np.setdiff1d(np.union1d(true, pred), [-1])
    return (
        float(f1_score(true, pred, labels=labels, average=average, zero_division=0))
        if len(labels)
        else np.nan
    )


def summary(frame: pd.DataFrame, thresholds: dict[float, np.ndarray] | None = None) -> dict:
    """The metrics of a set of outcomes; ``thresholds`` maps a precision target to each row's
    confidence threshold (chosen on validation) for the coverage figures."""
    if len(frame) == 0:
        return {"n": 0}
    true, pred = _codes(frame)
    accounts = frame["account_id"].to_numpy()
    per_account = [_macro_f1(true[accounts == a], pred[accounts == a]) for a in np.unique(accounts)]
    correct = frame["correct"].to_numpy()
    out = {
        "n": len(frame),
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": _macro_f1(true, pred),
        "macro_f1_account_mean": float(np.nanmean(per_account)),
        "weighted_f1": _macro_f1(true, pred, "weighted"),
        "top3_accuracy": float(frame["top3_hit"].mean()),
        "parent_accuracy": float(frame["parent_correct"].mean()),
        "ece": float(
            binary_calibration_error(
                torch.tensor(frame["confidence"].to_numpy(), dtype=torch.float32),
                torch.tensor(correct, dtype=torch.long),
                n_bins=15,
            )
        ),
    }
    for target, threshold in (thresholds or {}).items():
        auto = (frame["confidence"].to_numpy() >= threshold) & ~frame["abstained"].to_numpy()
        key = f"{round(target * 100)}"
        out[f"coverage_at_{key}_precision"] = float(auto.mean())
        out[f"precision_at_{key}_target"] = float(correct[auto].mean()) if auto.any() else float("nan")
    return out


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, min_support: int = 20
) -> float:
    """The lowest confidence threshold whose auto-tagged set has precision >= ``target``
    (at least ``min_support`` tickets); ``inf`` (tag nothing) when none has."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], correct[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ok = (precision >= target) & (np.arange(1, len(hits) + 1) >= min_support)
    # the set {confidence >= t} must end where the confidence changes
    ends = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.array([], bool)
    ok &= ends
    return float(conf[np.flatnonzero(ok)[-1]]) if ok.any() else float("inf")


class Thresholds:
    """Per-account confidence thresholds for each precision target, chosen on validation
    outcomes; accounts with too few validation tickets use the global threshold."""

    def __init__(self, val: pd.DataFrame, targets: list[float], min_account: int = 30):
        self.targets = targets
        self.global_ = {}
        self.per_account: dict[float, dict[str, float]] = {}
        answered = val[~val["abstained"]]
        for t in targets:
            self.global_[t] = choose_threshold(
                answered["confidence"].to_numpy(), answered["correct"].to_numpy(), t
            )
            self.per_account[t] = {
                a: choose_threshold(g["confidence"].to_numpy(), g["correct"].to_numpy(), t, min_support=10)
                for a, g in answered.groupby("account_id")
                if len(g) >= min_account
            }

    def to_dict(self) -> dict:
        """JSON-ready: ``{"targets": [...], "global": {target: t}, "per_account": {target: {account: t}}}``
        (an infinite threshold, tag nothing, is written as null)."""

        def clean(t: float) -> float | None:
            return None if not np.isfinite(t) else float(t)

        return {
            "targets": self.targets,
            "global": {str(t): clean(v) for t, v in self.global_.items()},
            "per_account": {str(t): {a: clean(v) for a, v in d.items()} for t, d in self.per_account.items()},
        }

    def of(self, frame: pd.DataFrame) -> dict[float, np.ndarray]:
        """Each row's threshold for each target."""
        return {
            t: frame["account_id"].map(self.per_account[t]).fillna(self.global_[t]).to_numpy(float)
            for t in self.targets
        }


BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "top3_accuracy")


def bootstrap(frames: dict[str, pd.DataFrame], n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` paired resamples of the test tickets (the same rows for every model):
    ``{model: array [n, 3]}`` of accuracy, macro-F1 and top-3 accuracy."""
    rng = np.random.default_rng(seed)
    size = len(next(iter(frames.values())))
    prepared = {
        name: (*_codes(f), f["correct"].to_numpy(), f["top3_hit"].to_numpy()) for name, f in frames.items()
    }
    out = {name: np.zeros((n, len(BOOTSTRAP_METRICS))) for name in frames}
    for i in range(n):
        idx = rng.integers(0, size, size)
        for name, (true, pred, correct, top3) in prepared.items():
            out[name][i] = [correct[idx].mean(), _macro_f1(true[idx], pred[idx]), top3[idx].mean()]
    return out


def interval(samples: np.ndarray, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse percentile) bootstrap interval around ``estimate``.

    Not the plain percentile interval: a resample holds fewer distinct labels, so resampled
    macro-F1 is biased upwards and its percentile interval can miss the estimate itself; the
    basic interval reflects that bias back."""
    lo, hi = np.nanpercentile(samples, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(2 * estimate - hi), float(2 * estimate - lo)
