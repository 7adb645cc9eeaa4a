"""What makes the baselines ones a reviewer accepts: class weighting and logit adjustment, the
cross-merchant regression's convergence on record, likelihood-fitted temperatures, the masked MLP,
parallel per-account fits, and models averaged as one (the backtest's stacks)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import baseline, make_tickets, toy_problem, unit_vectors

from tagger.model.baselines import (
    CrossMerchantLogReg,
    LogReg,
    fit_softmax_regression,
)
from tagger.model.selection import Tuned
from tagger.model.stacking import ProbabilityMean


def _split(seed: int = 0):
    """Training and validation tickets of the toy problem (noisy, so nothing is certain)."""
    return toy_problem(n_per_label=20, seed=seed, noise=0.9), toy_problem(
        n_per_label=8, seed=seed + 1, noise=0.9
    )


def test_convergence_is_reported_and_true_only_when_the_gradient_test_stopped_the_fit():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    x = (rng.normal(size=(4, 16))[y] + rng.normal(size=(200, 16))).astype(np.float32)
    *_, short = fit_softmax_regression(x, y, 4, C=10.0, max_iter=2, tol=1e-8)
    assert not short.converged and short.stop in ("iterations", "evaluations") and short.max_gradient > 1e-8
    *_, full = fit_softmax_regression(x, y, 4, C=10.0, max_iter=1000, tol=1e-3)
    assert full.converged and full.stop == "gradient" and full.max_gradient <= 1e-3
    assert full.objective <= short.objective
    assert full.as_dict()["converged"] is True
    est = baseline("xlogreg", C=10.0, max_iter=2).fit(toy_problem(n_per_label=10))
    assert est.fit_record()["convergence"]["converged"] is False  # what the backtest writes down


def test_logit_adjustment_divides_by_the_label_prior_and_costs_no_fit():
    train, val = _split()
    plain = baseline("logreg", C=10.0).fit(train)
    adjusted = baseline("logreg", C=10.0, logit_adjust=1.0)
    adjusted.__dict__.update({k: v for k, v in plain.__dict__.items() if k != "logit_adjust"})
    p0, p1 = plain.predict(val, k=50), adjusted.predict(val, k=50)
    probs0, rows = p0.every
    prior = np.exp(plain.label_log_freq)[np.maximum(rows, 0)]
    expected = np.where(rows >= 0, probs0 / prior, 0.0)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p1.every[0], expected, atol=1e-5)
    assert "logit_adjust" in LogReg.predict_only and "logit_adjust" in CrossMerchantLogReg.predict_only


def test_label_prior_counts_only_tickets_with_embeddings():
    rng = np.random.default_rng(0)
    rows = [("a", "Billing", unit_vectors(1, seed=i)) for i in range(4)]
    rows += [("a", "Other", unit_vectors(1, seed=10 + i)) for i in range(4)]
    rows += [("a", "Other", None)] * 40  # tickets without embeddings lean towards the catch-all
    est = baseline("xlogreg").fit(make_tickets(rows))
    freq = np.exp(est.label_log_freq)
    np.testing.assert_allclose(freq[est.table.row("a", "Billing")], freq[est.table.row("a", "Other")])
    del rng


def test_class_balanced_regressions_recall_the_rare_label_more():
    """A rare label close to a common one (200 tickets against 10): unweighted, both regressions
    never say it; balanced, they find about half of its tickets."""
    rng = np.random.default_rng(0)
    common, other = unit_vectors(2, seed=3)
    rare = (common + 0.3 * other) / np.linalg.norm(common + 0.3 * other)

    def noisy(centre: np.ndarray, n: int) -> list[np.ndarray]:
        return [(centre + rng.normal(size=centre.shape) / np.sqrt(centre.size))[None] for _ in range(n)]

    train = make_tickets(
        [("a", "Common", v) for v in noisy(common, 200)] + [("a", "Rare", v) for v in noisy(rare, 10)]
    )
    test = make_tickets([("a", "Rare", v) for v in noisy(rare, 100)])
    for name in ("logreg", "xlogreg"):
        plain, balanced = (
            (baseline(name, C=1.0, class_weight=cw).fit(train).predict(test).labels(0) == "Rare").mean()
            for cw in (None, "balanced")
        )
        assert balanced > plain + 0.3, (name, plain, balanced)


def test_temperature_is_fitted_by_likelihood_and_kept_by_the_refit():
    train, val = _split()
    for est in (baseline("centroid"), baseline("names", embedder=__import__("conftest").FakeEmbedder())):
        est.fit(train, val)
        fitted = est.fitted_temperature
        assert fitted is not None and 1e-3 <= fitted <= 1.0 and est.temperature == fitted

        def nll(t: float, est=est) -> float:
            probe = __import__("copy").copy(est)
            probe.temperature = t
            probs, rows = probe.predict(val, k=50).every
            truth = est.table.rows(val.meta["account_id"], val.meta["label"])
            p = (probs * (rows == truth[:, None])).sum(axis=1)
            return float(-np.log(np.maximum(p, 1e-30)).sum())

        assert nll(fitted) <= min(nll(fitted * 0.7), nll(fitted / 0.7)) + 1e-6
        assert est.refit(train).temperature == fitted  # the refit has no validation: it keeps it
        assert est.fit_record()["chosen"]["temperature"] == pytest.approx(fitted, rel=1e-3)
    assert baseline("centroid", temperature_without_val=0.07).fit(train).temperature == 0.07


def test_masked_mlp_learns_scores_only_own_labels_and_refits_its_chosen_epochs():
    train, val = _split()
    est = baseline("mlp", hidden=32, max_epochs=15, batch_size=32).fit(train, val)
    assert 1 <= est.epochs <= 15 and est.fit_record()["chosen"] == {"epochs": est.epochs}
    pred = est.predict(val, k=5)
    owner = est.table.frame["account_id"].to_numpy()
    for i, account in enumerate(val.meta["account_id"].astype(str)):
        rows = pred.top_rows[i][pred.top_rows[i] >= 0]
        assert (owner[rows] == account).all()
    np.testing.assert_allclose(pred.top_probs.sum(axis=1), 1.0, atol=1e-5)
    assert (pred.labels(0) == val.meta["label"].to_numpy()).mean() > 0.8
    refit = est.refit(train)
    assert refit.epochs == est.epochs and refit is not est


def test_parallel_account_fits_equal_serial_ones():
    train, val = _split()
    serial, parallel = baseline("logreg", C=10.0).fit(train), baseline("logreg", C=10.0, n_jobs=2).fit(train)
    a, b = serial.predict(val), parallel.predict(val)
    np.testing.assert_array_equal(a.top_rows, b.top_rows)
    np.testing.assert_allclose(a.top_probs, b.top_probs, atol=1e-6)


def test_a_stack_is_the_mean_of_its_members_probabilities():
    train, val = _split()
    logreg, centroid = baseline("logreg", C=10.0).fit(train), baseline("centroid", temperature=0.1).fit(train)
    alone = logreg.predict(val, k=50)
    same = ProbabilityMean([logreg, logreg]).predict(val, k=50)
    np.testing.assert_allclose(same.every[0], alone.every[0], atol=1e-6)
    stack = ProbabilityMean([logreg, centroid], weights=[3, 1]).predict(val, k=50)
    expected = 0.75 * alone.every[0] + 0.25 * centroid.predict(val, k=50).every[0]
    np.testing.assert_allclose(stack.every[0], expected, atol=1e-6)
    tuned = Tuned(lambda **p: baseline("logreg", **p), {"C": [1.0, 10.0]}, lambda *_: 0.0).fit(train, val)
    refit = ProbabilityMean([tuned, centroid])
    assert isinstance(refit.refit(train), ProbabilityMean)
    with pytest.raises(ValueError, match="weights"):
        ProbabilityMean([logreg, centroid], weights=[1.0])
