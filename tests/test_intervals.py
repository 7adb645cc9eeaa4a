"""Merchant-clustered paired bootstrap: sufficient statistics, interval sanity, ECE and chance levels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error

from tagger.backtest.scoring import MerchantBootstrap, interval_metrics, merchant_statistics
from tagger.metrics import summary

TARGETS = [0.9, 0.95]


def _tickets(rng: np.random.Generator, n_merchants: int = 150) -> pd.DataFrame:
    """Test tickets of merchants of very unequal sizes (a few large, many small, some of one ticket),
    each with its own label set, Zipf-like label frequencies and a difficulty every model shares."""
    sizes = np.minimum(np.maximum(1, (rng.pareto(1.2, n_merchants) * 40).astype(int)), 2000)
    sizes[:3] = [1, 1, 2]
    rows = []
    for m, size in enumerate(sizes):
        n_labels = int(rng.integers(2, 40))
        weights = 1 / np.arange(1, n_labels + 1)
        labels = rng.choice(n_labels, size, p=weights / weights.sum())
        difficulty = rng.normal(0, 0.8)
        rows += [(f"m{m:03d}", f"L{lab}", n_labels, difficulty) for lab in labels]
    return pd.DataFrame(rows, columns=["account_id", "label", "n_account_labels", "difficulty"])


def _predict(tickets: pd.DataFrame, rng: np.random.Generator, skill: float) -> pd.DataFrame:
    """Outcome rows of a model whose accuracy differs by merchant (the shared difficulty plus a little
    of its own), with abstentions, confidences loosely tied to correctness, per-merchant thresholds."""
    merchants = tickets["account_id"].unique()
    own = dict(zip(merchants, rng.normal(0, 0.2, len(merchants)), strict=True))
    logit = np.log(skill / (1 - skill)) - tickets["difficulty"] + tickets["account_id"].map(own)
    p = 1 / (1 + np.exp(-logit.to_numpy()))
    n_labels = tickets["n_account_labels"].to_numpy()
    right = rng.random(len(tickets)) < p
    other = [f"L{rng.integers(0, n)}" for n in n_labels]
    predicted = np.where(right, tickets["label"], other).astype(object)
    abstained = rng.random(len(tickets)) < 0.04
    abstained |= (tickets["account_id"] == "m005").to_numpy()  # an account the model never saw
    predicted[abstained] = None
    correct = np.array([q is not None and q == t for q, t in zip(predicted, tickets["label"], strict=True)])
    confidence = np.where(correct, rng.beta(9, 2, len(tickets)), rng.beta(3, 4, len(tickets)))
    confidence = np.where(abstained, 0.0, confidence)
    top3 = (correct | (rng.random(len(tickets)) < 0.5)) & ~abstained
    frame = tickets.assign(
        predicted=predicted,
        correct=correct,
        top3_hit=top3,
        parent_correct=correct,
        confidence=confidence,
        abstained=abstained,
    )
    per_merchant = {m: rng.uniform(0.6, 0.95) for m in merchants[::4]}
    per_merchant[merchants[1]] = np.inf  # a merchant whose threshold tags nothing
    for t, base in ((0.9, 0.7), (0.95, 0.85)):
        frame[f"threshold_{round(t * 100)}"] = (
            frame["account_id"].map(per_merchant).fillna(base).to_numpy(float)
        )
    return frame


@pytest.fixture(scope="module")
def frames() -> dict[str, list[pd.DataFrame]]:
    rng = np.random.default_rng(7)
    tickets = _tickets(rng)
    return {
        "shared": [_predict(tickets, np.random.default_rng(s), 0.75) for s in (10, 11, 12)],
        "logreg": [_predict(tickets, rng, 0.7)],
        "knn": [_predict(tickets, rng, 0.55)],
    }


def _thresholds(frame: pd.DataFrame) -> dict[float, np.ndarray]:
    return {t: frame[f"threshold_{round(t * 100)}"].to_numpy(float) for t in TARGETS}


def test_merchant_statistics_give_summary_exactly(frames):
    boot = MerchantBootstrap(frames, TARGETS)
    estimates = boot.estimates()
    for name, parts in frames.items():
        expected = {m: np.mean([summary(f, _thresholds(f))[m] for f in parts]) for m in boot.metrics}
        for metric in boot.metrics:
            np.testing.assert_allclose(estimates[name][metric], expected[metric], rtol=0, atol=1e-9)
    # one seed alone, including a frame where nothing reaches the threshold (precision undefined)
    f = frames["knn"][0].assign(threshold_95=np.inf)
    got = MerchantBootstrap({"x": [f]}, TARGETS).estimates()["x"]
    want = summary(f, _thresholds(f))
    for metric in interval_metrics(TARGETS):
        np.testing.assert_allclose(got[metric], want[metric], rtol=0, atol=1e-9, equal_nan=True)
    assert np.isnan(got["precision_at_95_target"]) and got["coverage_at_95_precision"] == 0


def test_a_merchant_drawn_twice_counts_its_classes_twice(frames):
    f = frames["logreg"][0]
    stats = merchant_statistics(f, TARGETS)
    a, b = stats.index[10], stats.index[20]
    doubled = pd.concat(
        [f[f["account_id"] == a], f[f["account_id"] == a].assign(account_id="copy"), f[f["account_id"] == b]]
    )
    one = MerchantBootstrap({"x": [f]}, TARGETS)
    weights = np.zeros(len(one.merchants))
    weights[one.merchants.get_loc(a)], weights[one.merchants.get_loc(b)] = 2, 1
    drawn = dict(zip(one.metrics, one.statistic("x", weights), strict=True))
    want = summary(doubled, _thresholds(doubled))  # the twin is another merchant: its classes count again
    for metric in (
        "accuracy",
        "macro_f1",
        "macro_f1_account_mean",
        "top3_accuracy",
        "coverage_at_95_precision",
    ):
        assert drawn[metric] == pytest.approx(want[metric], abs=1e-12)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_every_interval_contains_its_estimate(frames, method):
    boot = MerchantBootstrap(frames, TARGETS)
    pairs = [("shared", "logreg"), ("shared", "knn")]
    result = boot.intervals(2000, seed=0, method=method, pairs=pairs)
    for name, cis in result.ci.items():
        for metric, (lo, hi) in cis.items():
            est = result.estimates[name][metric]
            assert lo <= est <= hi, (method, name, metric, lo, est, hi)
            assert hi > lo, (name, metric)
    for pair, diffs in result.differences.items():
        for metric, d in diffs.items():
            assert d["ci95"][0] <= d["difference"] <= d["ci95"][1], (method, pair, metric, d)
    assert result.describe() == f"merchant-clustered, 2000 resamples, {method}"


def test_clustered_intervals_are_wider_than_ticket_level_ones(frames):
    f = frames["logreg"][0]
    clustered = MerchantBootstrap({"x": [f]}, TARGETS).intervals(2000, seed=1).ci["x"]
    # each ticket its own "merchant": the ticket-level bootstrap (classes change: ratios of tickets only)
    tickets = f.assign(account_id=[f"t{i}" for i in range(len(f))])
    ticket_level = MerchantBootstrap({"x": [tickets]}, TARGETS).intervals(2000, seed=1).ci["x"]
    for metric in ("accuracy", "top3_accuracy", "coverage_at_95_precision"):
        width = clustered[metric][1] - clustered[metric][0]
        assert width > 1.5 * (ticket_level[metric][1] - ticket_level[metric][0]), metric


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_a_model_against_itself_differs_by_exactly_zero(frames, method):
    boot = MerchantBootstrap({**frames, "again": frames["logreg"]}, TARGETS)
    result = boot.intervals(300, seed=2, method=method, pairs=[("logreg", "again"), ("shared", "shared")])
    for diffs in result.differences.values():
        for d in diffs.values():
            assert d["difference"] == 0 and d["ci95"] == [0.0, 0.0] and not d["excludes_zero"]


def test_the_same_draws_serve_every_model(frames):
    boot = MerchantBootstrap(frames, TARGETS)
    a = boot.distributions(50, seed=3)
    b = MerchantBootstrap({"logreg": frames["logreg"]}, TARGETS).distributions(50, seed=3)
    np.testing.assert_array_equal(a["logreg"], b["logreg"])


def test_ece_leaves_abstentions_out():
    rows = (
        [("a", "X", "X", 0.9, True)] * 6
        + [("a", "X", "Y", 0.8, False)] * 4
        + [("a", "X", None, 0.0, False)] * 5
    )
    frame = pd.DataFrame(rows, columns=["account_id", "label", "predicted", "confidence", "top3_hit"]).assign(
        correct=lambda f: f["predicted"] == f["label"],
        parent_correct=lambda f: f["predicted"] == f["label"],
        abstained=lambda f: f["predicted"].isna(),
    )
    answered = frame[~frame["abstained"]]

    def ece(part: pd.DataFrame) -> float:
        return float(
            binary_calibration_error(
                torch.tensor(part["confidence"].to_numpy(), dtype=torch.float32),
                torch.tensor(part["correct"].to_numpy(), dtype=torch.long),
                n_bins=15,
            )
        )

    assert summary(frame)["ece"] == pytest.approx(ece(answered))
    assert abs(ece(frame) - ece(answered)) > 0.05  # the abstentions would have moved it
    assert np.isnan(summary(frame[frame["abstained"]])["ece"])


def test_chance_levels_of_accuracy_and_top3():
    frame = pd.DataFrame(
        {
            "account_id": ["a", "a", "b", "c"],
            "label": ["X", "Y", "X", "X"],
            "predicted": ["X", "X", "X", None],
            "confidence": [0.9, 0.5, 0.7, 0.0],
            "top3_hit": [True, True, True, False],
            "n_account_labels": [2, 2, 10, 0],  # c: an account the model does not know
        }
    ).assign(
        correct=lambda f: f["predicted"] == f["label"],
        parent_correct=lambda f: f["predicted"] == f["label"],
        abstained=lambda f: f["predicted"].isna(),
    )
    s = summary(frame)
    assert s["accuracy_chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 10 + 0) / 4)
    assert s["top3_chance"] == pytest.approx((1 + 1 + 3 / 10 + 0) / 4)


def test_with_few_merchants_the_bootstrap_resamples_tickets_and_says_so():
    """Three merchants: a merchant resample says next to nothing (one merchant gives a point). The
    bootstrap resamples tickets instead, names it, and gives macro-F1 no interval."""
    rng = np.random.default_rng(3)
    tickets = _tickets(rng, n_merchants=12)
    tickets = tickets[tickets["account_id"].isin(tickets["account_id"].value_counts().index[:3])]
    tickets = tickets.assign(ticket_id=[f"t{i}" for i in range(len(tickets))], fold=0)
    frames = {"a": [_predict(tickets, rng, 0.8)], "b": [_predict(tickets, rng, 0.6)]}
    boot = MerchantBootstrap(frames, TARGETS)
    assert boot.unit == "ticket"
    iv = boot.intervals(200, 0, pairs=[("a", "b")])
    assert iv.unit == "ticket" and "ticket-level" in iv.describe() and iv.merchants == 3
    lo, hi = iv.ci["a"]["accuracy"]
    assert lo < iv.estimates["a"]["accuracy"] < hi  # an interval, not a point
    assert np.isnan(iv.ci["a"]["macro_f1"]).all() and np.isnan(
        iv.differences[("a", "b")]["macro_f1"]["difference"]
    )
    diff = iv.differences[("a", "b")]["accuracy"]
    assert diff["excludes_zero"] and diff["ci95"][0] > 0
    one = {n: [f[f["account_id"] == f["account_id"].iloc[0]] for f in parts] for n, parts in frames.items()}
    merchant = MerchantBootstrap(one, TARGETS, min_merchants=1)  # the old way: a point
    assert merchant.unit == "merchant" and np.ptp(merchant.intervals(50, 0).ci["a"]["accuracy"]) == 0


def test_a_draw_resamples_the_seeds_too(frames):
    """Two seeds, one right on every ticket and one wrong: the merchants alone cannot move the mean
    accuracy off 0.5; drawing the seeds as well spans both (a draw of the good seed twice is all right)."""
    base = frames["logreg"][0]
    right = base.assign(predicted=base["label"], correct=True, abstained=False)
    wrong = base.assign(predicted="none of them", correct=False, abstained=False)
    boot = MerchantBootstrap({"seeded": [right, wrong], "fixed": [base]}, TARGETS)
    ones = np.ones(len(boot.merchants))
    good, bad = (boot.statistic("seeded", ones, np.array(w))[0] for w in ([1, 0], [0, 1]))
    assert boot.estimates()["seeded"]["accuracy"] == pytest.approx((good + bad) / 2)
    result = boot.intervals(2000, seed=0)
    lo, hi = result.ci["seeded"]["accuracy"]
    assert bad < 0.1 and good > 0.9
    assert lo < bad + 0.05 and hi > good - 0.05
    # a model of one seed: only merchants are drawn
    assert 0 < result.ci["fixed"]["accuracy"][0] < result.ci["fixed"]["accuracy"][1] < 1
