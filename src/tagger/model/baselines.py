"""Honest baselines on mean-pooled embeddings, behind the same fit / predict interface.

Most give each account its own classifier over its own labels, as the public solutions do; two are
stronger: :class:`CrossMerchantLogReg` (one regression over all merchants, classes the label names)
and :class:`NameSimilarity` (zero-shot, ticket against label name). Every one scores a ticket over
its own account's labels only, and tickets without embeddings get the same account-prior fallback
the shared model uses.
"""

from __future__ import annotations

import copy
import warnings
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from tagger.data.labels import normalise_label
from tagger.data.tickets import Tickets
from tagger.model.base import AccountPrior, Estimator, Predictions, at_rows, mean_pool, top_k
from tagger.model.label_table import LabelTable


class PerAccountEstimator(Estimator):
    """Fits one small model per account on mean-pooled embeddings of labelled tickets."""

    def __init__(self, abstain_without_embeddings: bool = False):
        self.abstain_without_embeddings = abstain_without_embeddings
        self.models: dict[str, object] = {}

    def fit(self, train: Tickets, val: Tickets | None = None) -> PerAccountEstimator:
        """One model per account of ``train`` (``val`` is not used)."""
        self.models = {}  # a copy being refit must not write into the original's models
        self._fit_label_side(train)
        x = mean_pool(train)
        rows = self.table.rows(train.meta["account_id"], train.meta["label"])
        has = train.meta["has_embeddings"].to_numpy()
        accounts = train.meta["account_id"].astype(str).to_numpy()
        for account, (start, end) in self.table.account_slices.items():
            sel = has & (accounts == account)
            self.models[account] = self._fit_account(x[sel], rows[sel] - start, end - start)
        return self

    def _fit_label_side(self, train: Tickets) -> None:
        self.table = LabelTable.from_meta(train.meta)
        self.prior = AccountPrior(self.table, train.meta)

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        """Top-k of each ticket's own account's labels; the account prior without embeddings."""
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax of ``[n, l]`` logits where -inf marks a label that gets 0 (one finite per row)."""
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


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

    predict_only = ("temperature",)  # the centroids do not depend on it

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
        return _softmax(np.where(present, x @ centroids.T / self.temperature, -np.inf))


class KNN(_SklearnPerAccount):
    """k nearest training tickets of the account by cosine distance, weighted by closeness."""

    name = "knn"

    def __init__(self, n_neighbors: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.n_neighbors = n_neighbors

    predict_only = ("n_neighbors",)  # fitting only stores the tickets: k is applied at predict time

    def _classifier(self, n_samples):
        return KNeighborsClassifier(
            n_neighbors=min(self.n_neighbors, n_samples), weights="distance", metric="cosine"
        )

    def _proba_account(self, model, x, n_labels):
        if isinstance(model, KNeighborsClassifier):
            # a shallow copy with this estimator's k: a tuning copy with another k shares the fit
            model = copy.copy(model)
            model.n_neighbors = min(self.n_neighbors, model.n_samples_fit_)
        return super()._proba_account(model, x, n_labels)


class Embedder(Protocol):
    """What embeds label names: :class:`tagger.embed.SentenceEmbedder`, or a stand-in in tests."""

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """``[len(texts), 384]`` vectors."""
        ...


def name_class(label: str) -> str:
    """The cross-merchant class of a label: its normalised name, case-folded ("Other" anywhere)."""
    return normalise_label(label).casefold()


def fit_softmax_regression(
    x: np.ndarray, y: np.ndarray, n_classes: int, C: float, max_iter: int, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """``(W [n_classes, d], b [n_classes])`` of an L2-regularised multinomial logistic regression.

    The objective is scikit-learn's (``LogisticRegression(C=C)``, lbfgs): the summed cross-entropy
    plus ``||W||^2 / (2C)``, the intercept not penalised. It is minimised by full-batch L-BFGS
    (strong Wolfe line search) in float32 torch, over an exact change of variables that makes the
    problem well conditioned (see below), and divided by ``len(x)``: neither changes the minimum.
    Stops after ``max_iter`` iterations or when no entry of the (preconditioned) gradient exceeds
    ``tol``.
    """
    n, d = x.shape
    y = np.asarray(y, np.int64)
    # start from the class frequencies: the same minimum, fewer iterations to reach it
    log_freq = np.log(np.maximum(np.bincount(y, minlength=n_classes), 0.5) / max(n, 1))
    if n == 0:
        return np.zeros((n_classes, d), np.float32), log_freq.astype(np.float32)
    # Preconditioning. Sentence embeddings share a large common direction (mean norm about 0.5)
    # and spread unevenly over the others, which makes plain L-BFGS crawl (on the built-in data,
    # 983 classes: cross-entropy 1.89 after 69 evaluations on x, 1.61 on z). So V is fitted on
    # z = (x - mu) P, P = U diag(1 / sqrt(var + tau)) (U, var: eigenvectors and eigenvalues of
    # the covariance of x): x W^T + b = z V^T + (b + W mu) with W = V P^T, and, U orthogonal,
    # ||W||^2 = sum_j ||V[:, j]||^2 / (var_j + tau): the same model under the same penalty. tau,
    # the penalty's curvature per ticket, keeps directions the data does not span finite.
    x64 = np.asarray(x, np.float64)
    mu = x64.mean(axis=0)
    centred = x64 - mu
    tau = 1.0 / (C * n)
    var, basis = np.linalg.eigh(centred.T @ centred / n)
    scale = 1.0 / np.sqrt(np.maximum(var, 0.0) + tau)
    precondition = basis * scale  # P, [d, d]
    z = torch.from_numpy((centred @ precondition).astype(np.float32))
    penalty_weight = torch.from_numpy((scale**2 / (2.0 * C * n)).astype(np.float32))
    yt = torch.from_numpy(y)
    v = torch.zeros(n_classes, d, requires_grad=True)
    b = torch.from_numpy(log_freq.astype(np.float32)).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [v, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-9,
        history_size=20,  # 20 pairs of [n_classes, d]: memory stays small at 1,000 classes
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(z, v, b), yt) + (v * v * penalty_weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    coef = v.detach().double().numpy() @ precondition.T
    intercept = b.detach().double().numpy() - coef @ mu
    return coef.astype(np.float32), intercept.astype(np.float32)


class CrossMerchantLogReg(PerAccountEstimator):
    """One multinomial logistic regression over every merchant's tickets, classes the label names.

    Merchants share the classes of label names they share ("Other", "Returns::Refund Request"...,
    case-insensitively), so a merchant's rare label learns from other merchants' tickets of the
    same name. A ticket's probabilities are the model's restricted to its own account's labels
    (each label -> its name class), shifted from the name's frequency over all merchants to the
    label's frequency at the ticket's merchant (Bayes' prior shift), and renormalised; a label whose
    name has no training ticket with embeddings gets 0. Tickets without embeddings get the account
    prior as in the others.
    """

    name = "xlogreg"

    def __init__(self, C: float = 10.0, max_iter: int = 100, tol: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.C, self.max_iter, self.tol = C, max_iter, tol

    def fit(self, train: Tickets, val: Tickets | None = None) -> CrossMerchantLogReg:
        """Fit the one regression on ``train``'s tickets with embeddings (``val`` is not used)."""
        self._fit_label_side(train)
        has = train.meta["has_embeddings"].to_numpy()
        names = train.meta["label"].astype(str).map(name_class).to_numpy()
        self.classes, y = np.unique(names[has], return_inverse=True)
        x = mean_pool(train)[has]
        self.coef, self.intercept = fit_softmax_regression(
            x, y, len(self.classes), self.C, self.max_iter, self.tol
        )
        class_index = {c: i for i, c in enumerate(self.classes)}
        row_class = np.array([class_index.get(name_class(lab), -1) for lab in self.table.names], np.int64)
        # Bayes' prior shift: the fit learns p(name | ticket) under every merchant's mix of names; a
        # ticket of one merchant needs p(label | ticket, merchant), i.e. minus the log frequency of
        # the name over all merchants, plus the log frequency of the label at the merchant
        class_freq = np.bincount(y, minlength=len(self.classes)) + 0.5
        counts = self.table.frame["n_train"].to_numpy(float) + 0.5
        shift = np.zeros(len(self.table), np.float32)
        for start, end in self.table.account_slices.values():
            rows = row_class[start:end]
            own = np.log(counts[start:end] / counts[start:end].sum())
            overall = np.log(class_freq[np.maximum(rows, 0)] / class_freq.sum())
            shift[start:end] = np.where(rows >= 0, own - overall, 0.0)
        self.models = {
            account: (row_class[start:end], self.prior.probs[start:end], shift[start:end])
            for account, (start, end) in self.table.account_slices.items()
        }
        return self

    def _proba_account(
        self, model: tuple[np.ndarray, np.ndarray], x: np.ndarray, n_labels: int
    ) -> np.ndarray:
        row_class, prior, shift = model
        known = row_class >= 0
        if not known.any():  # no label of the account has a name class: only the prior is left
            return _broadcast(prior, len(x))
        cls = row_class[known]
        # only the account's own classes are scored: restricting the softmax to them and
        # renormalising is the softmax of their logits
        logits = np.full((len(x), n_labels), -np.inf, np.float32)
        logits[:, known] = x @ self.coef[cls].T + self.intercept[cls] + shift[known]
        return _softmax(logits)


class NameSimilarity(PerAccountEstimator):
    """Zero-shot: cosine between the ticket and each of its account's label names.

    Label names are embedded by all-MiniLM-L6-v2 (the text :func:`label_text` gives, as the shared
    model embeds it), tickets are their mean-pooled unit sentence vector, and the probabilities are
    ``softmax(cosine / temperature)`` over the account's labels. Nothing is learned from ticket
    text: training tickets give only the label table and the prior for tickets without embeddings.
    """

    name = "names"
    predict_only = ("temperature",)

    def __init__(self, temperature: float = 0.05, embedder: Embedder | None = None, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature
        self.embedder = embedder  # None: the real all-MiniLM-L6-v2, loaded at fit

    def fit(self, train: Tickets, val: Tickets | None = None) -> NameSimilarity:
        """The label table, prior and label-name vectors of ``train`` (``val`` is not used)."""
        self._fit_label_side(train)
        self._embed_labels()
        return self

    def with_candidates(self, candidates: dict[str, list[str]]) -> NameSimilarity:
        """A copy that also scores ``candidates`` (account -> label names), from their names alone.

        Names are normalised; one the account already has (case-insensitively) is skipped. A new
        label gets prior 0 for tickets without embeddings; a new account gets a uniform prior over
        its labels (as the shared model's ``with_labels`` does), so those tickets still get an answer.
        """
        frame = self.table.frame
        known = {(a, lab.casefold()) for a, lab in zip(frame["account_id"], frame["label"], strict=True)}
        new = [
            (str(a), lab)
            for a, names in candidates.items()
            for lab in dict.fromkeys(map(normalise_label, names))
            if (str(a), lab.casefold()) not in known
        ]
        if not new:
            return copy.copy(self)
        table = LabelTable.from_pairs(
            [*frame["account_id"], *(a for a, _ in new)],
            [*frame["label"], *(lab for _, lab in new)],
            [*frame["n_train"], *([0] * len(new))],
        )
        probs = at_rows(self.prior.probs, self.table.rows(table.frame["account_id"], table.frame["label"]))
        for account, (start, end) in table.account_slices.items():
            if account not in self.table.account_slices:
                probs[start:end] = 1.0 / (end - start)
        out = copy.copy(self)
        out.table, out.prior = table, AccountPrior.from_probs(table, probs)
        out._embed_labels()
        return out

    def _embed_labels(self) -> None:
        if self.embedder is None:
            from tagger.embed import SentenceEmbedder  # the real model, loaded only when needed

            self.embedder = SentenceEmbedder()
        texts = self.table.frame["text"].tolist()
        vectors = np.asarray(self.embedder.embed(texts, progress=False), np.float32)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.label_vectors = vectors
        self.models = {a: vectors[s:e] for a, (s, e) in self.table.account_slices.items()}

    def _proba_account(self, model: np.ndarray, x: np.ndarray, n_labels: int) -> np.ndarray:
        return _softmax(x @ model.T / self.temperature)
