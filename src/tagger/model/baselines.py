"""Honest baselines on mean-pooled embeddings, behind the same fit / predict interface.

Most give each account its own classifier over its own labels, as the public solutions do; two are
stronger: :class:`CrossMerchantLogReg` (one regression over all merchants, classes the label names)
and :class:`NameSimilarity` (zero-shot, ticket against label name). Every one scores a ticket over
its own account's labels only, and tickets without embeddings get the same account-prior fallback
the shared model uses.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from scipy.optimize import minimize_scalar
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from tagger.data.labels import normalise_label
from tagger.data.tickets import Tickets
from tagger.model.base import AccountPrior, Estimator, Predictions, at_rows, mean_pool, top_k
from tagger.model.label_table import LabelTable


class PerAccountEstimator(Estimator):
    """Fits one small model per account on mean-pooled embeddings of labelled tickets."""

    #: ``logit_adjust`` (tau) only reweighs the fitted probabilities: tuning it costs no fit
    predict_only: tuple[str, ...] = ("logit_adjust",)

    def __init__(self, *, logit_adjust: float, n_jobs: int, abstain_without_embeddings: bool = False):
        self.abstain_without_embeddings = abstain_without_embeddings
        self.logit_adjust = logit_adjust
        self.n_jobs = n_jobs  # accounts fit in parallel processes (joblib): the fits are independent
        self.models: dict[str, object] = {}

    def fit(self, train: Tickets, val: Tickets | None = None) -> PerAccountEstimator:
        """One model per account of ``train`` (``val`` is not used)."""
        self.models = {}  # a copy being refit must not write into the original's models
        self._fit_label_side(train)
        x = mean_pool(train)
        rows = self.table.rows(train.meta["account_id"], train.meta["label"])
        has = train.meta["has_embeddings"].to_numpy()
        accounts = train.meta["account_id"].astype(str).to_numpy()
        jobs = []
        for account, (start, end) in self.table.account_slices.items():
            sel = has & (accounts == account)
            jobs.append((x[sel], rows[sel] - start, end - start))
        if self.n_jobs == 1:
            fitted = [self._fit_account(*job) for job in jobs]
        else:
            # the largest accounts first, so that no worker is left with one big fit at the end
            order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][1]))
            done = Parallel(n_jobs=self.n_jobs)(delayed(self._fit_account)(*jobs[i]) for i in order)
            fitted = [None] * len(jobs)
            for i, model in zip(order, done, strict=True):
                fitted[i] = model
        self.models = dict(zip(self.table.account_slices, fitted, strict=True))
        return self

    def _fit_label_side(self, train: Tickets) -> None:
        self.table = LabelTable.from_meta(train.meta)
        self.prior = AccountPrior(self.table, train.meta)
        # each label's share of its account's training tickets with embeddings (what a model on
        # embeddings learns its prior from), +0.5 so that a label seen only without them stays finite
        has = train.meta["has_embeddings"].to_numpy()
        rows = self.table.rows(train.meta["account_id"], train.meta["label"])[has]
        counts = np.bincount(rows[rows >= 0], minlength=len(self.table)) + 0.5
        self.label_log_freq = np.zeros(len(self.table))
        for start, end in self.table.account_slices.values():
            self.label_log_freq[start:end] = np.log(counts[start:end] / counts[start:end].sum())

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
            p = self._proba_account(self.models[account], x[sel], n_labels)
            if self.logit_adjust:
                p = self._adjusted(p, self.table.account_slices[account])
            probs[sel, :n_labels] = p
        unknown = account_index < 0
        return top_k(probs, rows, k, ~has, self.abstain_without_embeddings, unknown, self.table.names)

    def _adjusted(self, probs: np.ndarray, rows: tuple[int, int]) -> np.ndarray:
        """Post-hoc logit adjustment (Menon et al. 2021): ``log p - tau log prior``, renormalised,
        which trades frequent labels' accuracy for rare labels' recall (macro-F1)."""
        start, end = rows
        logits = np.log(np.maximum(probs, 1e-30)) - self.logit_adjust * self.label_log_freq[start:end]
        return _softmax(np.where(probs > 0, logits, -np.inf))

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

    def __init__(self, *, C: float, max_iter: int, class_weight: str | None, **kwargs):
        super().__init__(**kwargs)
        self.C, self.max_iter, self.class_weight = C, max_iter, class_weight

    def _classifier(self, n_samples):
        return LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)


class _FittedTemperature(PerAccountEstimator):
    """Probabilities ``softmax(cosine / temperature)``, the temperature fitted by likelihood.

    With ``temperature`` None the fit chooses it: the one that minimises the negative
    log-likelihood of the validation tickets' true labels (bounded scalar search over its log),
    ``temperature_without_val`` when there is no validation slice. A refit keeps the fitted value.
    """

    predict_only = (*PerAccountEstimator.predict_only, "temperature")

    def __init__(self, *, temperature: float | None, temperature_without_val: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature, self.temperature_without_val = temperature, temperature_without_val
        self.fitted_temperature: float | None = None

    def _cosines(self, model: object, x: np.ndarray) -> np.ndarray:
        """``[len(x), n_labels]`` cosines of the account's labels, -inf where a label has none."""
        raise NotImplementedError

    def _proba_account(self, model, x, n_labels):
        return _softmax(self._cosines(model, x) / self.temperature)

    def _fit_temperature(self, val: Tickets | None) -> None:
        if self.temperature is not None:
            return
        has = np.zeros(0, bool) if val is None else val.meta["has_embeddings"].to_numpy()
        rows = self.table.rows(val.meta["account_id"], val.meta["label"]) if has.any() else None
        parts = []  # (cosines [n, L], true column [n]) per account
        if rows is not None:
            x = mean_pool(val)
            accounts = val.meta["account_id"].astype(str).to_numpy()
            for account, (start, _end) in self.table.account_slices.items():
                sel = has & (accounts == account) & (rows >= 0)
                if sel.any():
                    cos = self._cosines(self.models[account], x[sel])
                    target = rows[sel] - start
                    if np.isfinite(cos[np.arange(len(target)), target]).all():
                        parts.append((cos, target))
        if not parts:
            self.temperature = self.fitted_temperature = self.temperature_without_val
            return

        def nll(log_t: float) -> float:
            total = 0.0
            for cos, target in parts:
                z = cos / np.exp(log_t)
                z = z - z.max(axis=1, keepdims=True)
                lse = np.log(np.exp(z).sum(axis=1))
                total += float((lse - z[np.arange(len(target)), target]).sum())
            return total

        best = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1.0)), method="bounded")
        self.temperature = self.fitted_temperature = float(np.exp(best.x))

    def fit_record(self) -> dict:
        """The temperature the likelihood chose (nothing when it was given)."""
        if self.fitted_temperature is None:
            return {}
        return {"chosen": {"temperature": round(self.fitted_temperature, 5)}, "search_fits": 1}


class NearestCentroid(_FittedTemperature):
    """Cosine similarity to each label's mean embedding, softmax with a temperature (fitted by
    likelihood on the validation slice unless given)."""

    name = "centroid"

    def fit(self, train: Tickets, val: Tickets | None = None) -> NearestCentroid:
        """The centroids of ``train``; the temperature from ``val`` (see :class:`_FittedTemperature`)."""
        super().fit(train, val)
        self._fit_temperature(val)
        return self

    def _fit_account(self, x, y, n_labels):
        centroids = np.zeros((n_labels, x.shape[1]), np.float32)
        present = np.zeros(n_labels, bool)
        for label in np.unique(y):
            c = x[y == label].mean(axis=0)
            centroids[label] = c / max(np.linalg.norm(c), 1e-12)
            present[label] = True
        return centroids, present, _constant(y, n_labels)

    def _cosines(self, model, x):
        centroids, present, _ = model
        return np.where(present, x @ centroids.T, -np.inf)

    def _proba_account(self, model, x, n_labels):
        _, present, prior = model
        if not present.any():
            return _broadcast(prior, len(x))
        return super()._proba_account(model, x, n_labels)


class KNN(_SklearnPerAccount):
    """k nearest training tickets of the account by cosine distance, weighted by closeness."""

    name = "knn"

    def __init__(self, *, n_neighbors: int, **kwargs):
        super().__init__(**kwargs)
        self.n_neighbors = n_neighbors

    # fitting only stores the tickets: k is applied at predict time
    predict_only = (*PerAccountEstimator.predict_only, "n_neighbors")

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


@dataclass
class Convergence:
    """How an iterative fit ended: ``iterations`` made of ``max_iter``, function ``evaluations`` of
    ``max_eval``, the final objective and the largest entry of its (preconditioned) gradient
    against ``tol``. ``stop`` says why it stopped: "gradient" (under ``tol``), "no progress" (the
    objective or the step changed by less than float32 resolves: at the minimum as far as float32
    arithmetic can tell, the gradient's floor there about 1e-4 to 1e-5), "iterations" or
    "evaluations" (a limit ran out first: not converged)."""

    iterations: int
    max_iter: int
    evaluations: int
    max_eval: int
    objective: float
    max_gradient: float
    tol: float

    @property
    def stop(self) -> str:
        """Why the fit stopped."""
        if self.max_gradient <= self.tol:
            return "gradient"
        if self.iterations >= self.max_iter:
            return "iterations"
        if self.evaluations >= self.max_eval:
            return "evaluations"
        return "no progress"

    @property
    def converged(self) -> bool:
        """Whether the fit stopped at the minimum rather than at a limit."""
        return self.stop in ("gradient", "no progress")

    def as_dict(self) -> dict:
        """The record written beside a fit (metrics.json, folds.csv)."""
        return {**asdict(self), "stop": self.stop, "converged": self.converged}


def fit_softmax_regression(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float,
    max_iter: int,
    tol: float = 1e-4,
    class_weight: str | None = None,
) -> tuple[np.ndarray, np.ndarray, Convergence]:
    """``(W [n_classes, d], b [n_classes], convergence)`` of an L2-regularised multinomial logistic
    regression.

    The objective is scikit-learn's (``LogisticRegression(C=C, class_weight=...)``, lbfgs): the
    summed cross-entropy (each ticket weighted ``n / (n_classes_present * count of its class)``
    under ``class_weight="balanced"``) plus ``||W||^2 / (2C)``, the intercept not penalised. It is
    minimised by full-batch L-BFGS (strong Wolfe line search) in float32 torch, over an exact change
    of variables that makes the problem well conditioned (see :func:`_whitening`), and divided by
    ``len(x)``: neither changes the minimum. Stops after ``max_iter`` iterations or when no entry of
    the (preconditioned) gradient exceeds ``tol``.
    """
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be null or 'balanced', got {class_weight!r}")
    n, d = x.shape
    y = np.asarray(y, np.int64)
    max_eval = 2 * max_iter  # the strong Wolfe search rarely needs a second evaluation per iteration
    log_freq, weights = _start_and_weights(y, n_classes, class_weight)
    if n == 0:
        return (
            np.zeros((n_classes, d), np.float32),
            log_freq.astype(np.float32),
            Convergence(0, max_iter, 0, max_eval, 0.0, 0.0, tol),
        )
    mu, precondition, scale = _whitening(x, C)
    z = (np.asarray(x, np.float64) - mu) @ precondition
    v, b, convergence = _minimise_lbfgs(
        z, y, weights / n, scale**2 / (2.0 * C * n), log_freq, max_iter, max_eval, tol
    )
    coef = v @ precondition.T
    intercept = b - coef @ mu
    return coef.astype(np.float32), intercept.astype(np.float32), convergence


def _start_and_weights(
    y: np.ndarray, n_classes: int, class_weight: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(starting intercept, each ticket's weight)``: the log class frequencies and weight 1, or
    under ``class_weight="balanced"`` (and any ticket) a uniform start and scikit-learn's weights."""
    n = len(y)
    counts = np.bincount(y, minlength=n_classes)
    if class_weight == "balanced" and n:
        present = np.count_nonzero(counts)
        # the weighted fit's prior over classes is uniform: start there
        return np.full(n_classes, -np.log(max(present, 1))), n / (present * counts[y])
    # start from the class frequencies: the same minimum, fewer iterations to reach it
    return np.log(np.maximum(counts, 0.5) / max(n, 1)), np.ones(n)


def _whitening(x: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu, P, scale)`` of the change of variables the regression is fitted under.

    Sentence embeddings share a large common direction (mean norm about 0.5) and spread unevenly
    over the others, which makes plain L-BFGS crawl (on the built-in data, 983 classes:
    cross-entropy 1.89 after 69 evaluations on x, 1.61 on z). So V is fitted on z = (x - mu) P,
    P = U diag(scale), scale = 1 / sqrt(var + tau) (U, var: eigenvectors and eigenvalues of the
    covariance of x): x W^T + b = z V^T + (b + W mu) with W = V P^T, and, U orthogonal,
    ||W||^2 = sum_j ||V[:, j]||^2 / (var_j + tau): the same model under the same penalty. tau, the
    penalty's curvature per ticket, keeps directions the data does not span finite.
    """
    x64 = np.asarray(x, np.float64)
    n = len(x64)
    mu = x64.mean(axis=0)
    centred = x64 - mu
    tau = 1.0 / (C * n)
    var, basis = np.linalg.eigh(centred.T @ centred / n)
    scale = 1.0 / np.sqrt(np.maximum(var, 0.0) + tau)
    return mu, basis * scale, scale


def _minimise_lbfgs(
    z: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    penalty: np.ndarray,
    start: np.ndarray,
    max_iter: int,
    max_eval: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, Convergence]:
    """``(V, b, convergence)`` minimising ``sum(weights * cross-entropy(z V^T + b, y)) + sum(penalty
    * V^2)`` (``penalty`` per column of V) by full-batch L-BFGS in float32, ``b`` from ``start``."""
    zt = torch.from_numpy(z.astype(np.float32))
    penalty_weight = torch.from_numpy(penalty.astype(np.float32))
    yt = torch.from_numpy(y)
    wt = torch.from_numpy(weights.astype(np.float32))
    v = torch.zeros(len(start), z.shape[1], requires_grad=True)
    b = torch.from_numpy(start.astype(np.float32)).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [v, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_eval,
        tolerance_grad=tol,
        tolerance_change=1e-9,
        history_size=20,  # 20 pairs of [n_classes, d]: memory stays small at 1,000 classes
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        losses = F.cross_entropy(F.linear(zt, v, b), yt, reduction="none")
        loss = (losses * wt).sum() + (v * v * penalty_weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    # the state L-BFGS stopped in: one more evaluation gives the final objective and gradient
    objective = float(closure().detach())
    max_gradient = max(float(v.grad.abs().max()), float(b.grad.abs().max()))
    state = opt.state[opt._params[0]]
    iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    convergence = Convergence(iterations, max_iter, evaluations, max_eval, objective, max_gradient, tol)
    return v.detach().double().numpy(), b.detach().double().numpy(), convergence


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

    def __init__(self, *, C: float, max_iter: int, tol: float, class_weight: str | None, **kwargs):
        super().__init__(**kwargs)
        self.C, self.max_iter, self.tol, self.class_weight = C, max_iter, tol, class_weight

    def fit(self, train: Tickets, val: Tickets | None = None) -> CrossMerchantLogReg:
        """Fit the one regression on ``train``'s tickets with embeddings (``val`` is not used);
        ``convergence`` says how the fit ended."""
        self._fit_label_side(train)
        has = train.meta["has_embeddings"].to_numpy()
        names = train.meta["label"].astype(str).map(name_class).to_numpy()
        self.classes, y = np.unique(names[has], return_inverse=True)
        x = mean_pool(train)[has]
        self.coef, self.intercept, self.convergence = fit_softmax_regression(
            x, y, len(self.classes), self.C, self.max_iter, self.tol, self.class_weight
        )
        class_index = {c: i for i, c in enumerate(self.classes)}
        row_class = np.array([class_index.get(name_class(lab), -1) for lab in self.table.names], np.int64)
        # Bayes' prior shift: the fit learns p(name | ticket) under the names' frequency over every
        # merchant's tickets with embeddings; a ticket of one merchant needs p(label | ticket,
        # merchant): minus that log frequency, plus the label's at the merchant
        class_freq = np.bincount(y, minlength=len(self.classes)) + 0.5
        shift = np.zeros(len(self.table), np.float32)
        for start, end in self.table.account_slices.values():
            rows = row_class[start:end]
            overall = np.log(class_freq[np.maximum(rows, 0)] / class_freq.sum())
            shift[start:end] = np.where(rows >= 0, self.label_log_freq[start:end] - overall, 0.0)
        if self.class_weight == "balanced":
            # the weighted fit learns p(name | ticket) under a uniform prior over names, which is
            # what "balanced" asks for at every merchant too: no shift
            shift[:] = 0.0
        self.models = {
            account: (row_class[start:end], self.prior.probs[start:end], shift[start:end])
            for account, (start, end) in self.table.account_slices.items()
        }
        return self

    def fit_record(self) -> dict:
        """How the regression's L-BFGS ended (iterations, gradient against tol, converged)."""
        return {"convergence": self.convergence.as_dict()}

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


class NameSimilarity(_FittedTemperature):
    """Zero-shot: cosine between the ticket and each of its account's label names.

    Label names are embedded by all-MiniLM-L6-v2 (the text :func:`label_text` gives, as the shared
    model embeds it), tickets are their mean-pooled unit sentence vector, and the probabilities are
    ``softmax(cosine / temperature)`` over the account's labels (the temperature fitted by
    likelihood on the validation slice unless given). Nothing is learned from ticket text: training
    tickets give only the label table and the prior for tickets without embeddings.
    """

    name = "names"

    def __init__(self, *, embedder: Embedder | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embedder = embedder  # None: the real all-MiniLM-L6-v2, loaded at fit

    def fit(self, train: Tickets, val: Tickets | None = None) -> NameSimilarity:
        """The label table, prior and label-name vectors of ``train``; the temperature from ``val``."""
        self._fit_label_side(train)
        self._embed_labels()
        self._fit_temperature(val)
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
        out.label_log_freq = np.zeros(len(table))  # new labels have no frequency: no adjustment
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

    def _cosines(self, model: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x @ model.T


class MaskedMLP(PerAccountEstimator):
    """One MLP over every merchant's tickets (mean-pooled embeddings), its softmax masked to each
    ticket's own account's labels.

    A hidden layer feeds one output row per name class (as in :class:`CrossMerchantLogReg`:
    merchants share the classes of the label names they share) plus a learned bias per label of
    each merchant (the merchant's prior and more); the loss and the probabilities are the softmax
    over the ticket's account's labels only. Trained with AdamW on minibatches; with a validation
    slice, the epoch count is the one of lowest validation negative log-likelihood (its tickets
    with a known label), which a refit trains again on the whole window.
    """

    name = "mlp"

    def __init__(
        self,
        *,
        hidden: int,
        dropout: float,
        lr: float,
        weight_decay: float,
        batch_size: int,
        max_epochs: int,
        epochs: int | None,
        seed: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden, self.dropout, self.lr, self.weight_decay = hidden, dropout, lr, weight_decay
        self.batch_size, self.max_epochs, self.epochs, self.seed = batch_size, max_epochs, epochs, seed

    def _rows(self, tickets: Tickets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean-pooled x, each ticket's label column in its account and its account index, for the
        tickets with embeddings whose account and label the table knows (and whose label's name
        has a class: the others have probability 0, an infinite loss)."""
        rows = self.table.rows(tickets.meta["account_id"], tickets.meta["label"])
        account = self.table.account_ids(tickets.meta["account_id"])
        keep = tickets.meta["has_embeddings"].to_numpy() & (rows >= 0)
        keep &= self._row_class.numpy()[np.maximum(rows, 0)] >= 0  # a label whose name has a class
        column = rows - self.table.starts[np.maximum(account, 0)]
        return mean_pool(tickets)[keep], column[keep], account[keep]

    def _logits(self, net: torch.nn.Module, x: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        """``[B, max labels]`` logits over each ticket's account's labels (-inf on pads)."""
        rows = torch.from_numpy(self.table.gather(account.numpy()))  # [B, W] table rows, -1 pads
        cls = self._row_class[rows.clamp(min=0)]
        logits = net(x).gather(1, cls.clamp(min=0)) + self._bias[rows.clamp(min=0)]
        return logits.masked_fill((rows < 0) | (cls < 0), float("-inf"))

    def fit(self, train: Tickets, val: Tickets | None = None) -> MaskedMLP:
        """Train on ``train``; with ``val``, keep the epoch count of lowest validation NLL."""
        self._fit_label_side(train)
        names = np.array([name_class(lab) for lab in self.table.names])
        has = train.meta["has_embeddings"].to_numpy()
        seen = set(train.meta["label"].astype(str).map(name_class).to_numpy()[has])
        self.classes = np.array(sorted(seen))
        class_index = {c: i for i, c in enumerate(self.classes)}
        self._row_class = torch.tensor([class_index.get(c, -1) for c in names], dtype=torch.long)
        x, y, account = (torch.from_numpy(np.asarray(v)) for v in self._rows(train))
        y, account = y.long(), account.long()
        scored = None if val is None or len(val) == 0 or self.epochs is not None else self._rows(val)
        torch.manual_seed(self.seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], self.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, max(len(self.classes), 1)),
        )
        self._bias = torch.zeros(len(self.table), requires_grad=True)
        opt = torch.optim.AdamW([*net.parameters(), self._bias], lr=self.lr, weight_decay=self.weight_decay)
        epochs = self.epochs if self.epochs is not None else self.max_epochs
        best = (math.inf, 0, None)
        for epoch in range(1, epochs + 1):
            net.train()
            for batch in torch.randperm(len(x)).split(self.batch_size):
                loss = F.cross_entropy(self._logits(net, x[batch], account[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if scored is not None:
                nll = self._nll(net, *scored)
                if nll < best[0]:
                    best = (nll, epoch, (copy.deepcopy(net.state_dict()), self._bias.detach().clone()))
        if scored is not None and best[2] is not None:
            net.load_state_dict(best[2][0])
            self._bias = best[2][1]
            self.epochs, self.best_val_nll = best[1], best[0]
        self.net = net.eval()
        self._bias = self._bias.detach()
        self.models = {account: a for a, account in enumerate(self.table.accounts)}
        return self

    @torch.no_grad()
    def _nll(self, net: torch.nn.Module, x: np.ndarray, y: np.ndarray, account: np.ndarray) -> float:
        net.eval()
        logits = self._logits(net, torch.from_numpy(x), torch.from_numpy(account).long())
        return float(F.cross_entropy(logits, torch.from_numpy(y).long()))

    def fit_record(self) -> dict:
        """The epoch count validation chose (and its NLL)."""
        nll = getattr(self, "best_val_nll", None)
        return {} if nll is None else {"chosen": {"epochs": self.epochs}, "val_nll": round(nll, 4)}

    @torch.no_grad()
    def _proba_account(self, model: int, x: np.ndarray, n_labels: int) -> np.ndarray:
        account = torch.full((len(x),), model, dtype=torch.long)
        logits = self._logits(self.net, torch.from_numpy(x), account)[:, :n_labels]
        if not torch.isfinite(logits).any():  # no label of the account has a name class
            start = int(self.table.starts[model])
            return _broadcast(self.prior.probs[start : start + n_labels], len(x))
        return torch.softmax(logits, dim=1).numpy()
