"""Honest per-account baselines on mean-pooled embeddings, behind the same fit / predict interface.

Each account gets its own classifier over its own labels, as the public solutions do. Tickets
without embeddings get the same account-prior fallback the shared model uses.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from tagger.data.tickets import Tickets
from tagger.model.base import AccountPrior, Estimator, Predictions, mean_pool, top_k
from tagger.model.label_table import LabelTable


class PerAccountEstimator(Estimator):
    """Fits one small model per account on mean-pooled embeddings of labelled tickets."""

    def __init__(self, abstain_without_embeddings: bool = False):
        self.abstain_without_embeddings = abstain_without_embeddings
        self.models: dict[str, object] = {}

    def fit(self, train: Tickets, val: Tickets | None = None) -> PerAccountEstimator:
        self.table = LabelTable.from_meta(train.meta)
        self.prior = AccountPrior(self.table, train.meta)
        x = mean_pool(train)
        rows = self.table.rows(train.meta["account_id"], train.meta["label"])
        has = train.meta["has_embeddings"].to_numpy()
        accounts = train.meta["account_id"].astype(str).to_numpy()
        for account, (start, end) in self.table.account_slices.items():
            sel = has & (accounts == account)
            self.models[account] = self._fit_account(x[sel], rows[sel] - start, end - start)
        return self

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        account_index = self.table.account_ids(tickets.meta["account_id"])
        has = tickets.meta["has_embeddings"].to_numpy()
        rows = self.table.gather(account_index)
        probs = self.prior.gathered(rows)
        x = mean_pool(tickets)
        for a in np.unique(account_index[has & (account_index >= 0)]):
            account = self.table.accounts[a]
            sel = has & (account_index == a)
            n_labels = int(self.table.counts[a])
            probs[sel, :n_labels] = self._proba_account(self.models[account], x[sel], n_labels)
        unknown = account_index < 0
        return top_k(probs, rows, k, ~has, self.abstain_without_embeddings, unknown, self.table.names)

    def _fit_account(self, x: np.ndarray, y: np.ndarray, n_labels: int) -> object:
        raise NotImplementedError

    def _proba_account(self, model: object, x: np.ndarray, n_labels: int) -> np.ndarray:
        raise NotImplementedError


def _constant(y: np.ndarray, n_labels: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_labels).astype(float) if len(y) else np.ones(n_labels)
    return counts / counts.sum()


def _expand(model, proba: np.ndarray, n_labels: int) -> np.ndarray:
    out = np.zeros((len(proba), n_labels), np.float32)
    out[:, model.classes_] = proba
    return out


def _broadcast(prior: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(prior, (n, len(prior))).astype(np.float32)


class Majority(PerAccountEstimator):
    """The account's most frequent labels, in order of frequency."""

    name = "majority"

    def _fit_account(self, x, y, n_labels):
        return _constant(y, n_labels)

    def _proba_account(self, model, x, n_labels):
        return _broadcast(model, len(x))


class _SklearnPerAccount(PerAccountEstimator):
    """A scikit-learn classifier per account; a constant where the account has one label."""

    def _classifier(self, n_samples: int):
        raise NotImplementedError

    def _fit_account(self, x, y, n_labels):
        if len(np.unique(y)) < 2:
            return _constant(y, n_labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._classifier(len(y)).fit(x, y)

    def _proba_account(self, model, x, n_labels):
        if isinstance(model, np.ndarray):
            return _broadcast(model, len(x))
        return _expand(model, model.predict_proba(x), n_labels)


class LogReg(_SklearnPerAccount):
    """Multinomial logistic regression per account."""

    name = "logreg"

    def __init__(self, C: float = 1.0, max_iter: int = 1000, class_weight: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.C, self.max_iter, self.class_weight = C, max_iter, class_weight

    def _classifier(self, n_samples):
        return LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)


class NearestCentroid(PerAccountEstimator):
    """Cosine similarity to each label's mean embedding, softmax with a fixed temperature."""

    name = "centroid"

    def __init__(self, temperature: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def _fit_account(self, x, y, n_labels):
        centroids = np.zeros((n_labels, x.shape[1]), np.float32)
        present = np.zeros(n_labels, bool)
        for label in np.unique(y):
            c = x[y == label].mean(axis=0)
            centroids[label] = c / max(np.linalg.norm(c), 1e-12)
            present[label] = True
        return centroids, present, _constant(y, n_labels)

    def _proba_account(self, model, x, n_labels):
        centroids, present, prior = model
        if not present.any():
            return _broadcast(prior, len(x))
        logits = np.where(present, x @ centroids.T / self.temperature, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


class KNN(_SklearnPerAccount):
    """k nearest training tickets of the account by cosine distance, weighted by closeness."""

    name = "knn"

    def __init__(self, n_neighbors: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.n_neighbors = n_neighbors

    def _classifier(self, n_samples):
        return KNeighborsClassifier(
            n_neighbors=min(self.n_neighbors, n_samples), weights="distance", metric="cosine"
        )
