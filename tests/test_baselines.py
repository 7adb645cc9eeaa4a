"""The stronger baselines (cross-merchant logistic regression, label-name similarity) and the
validation search that tunes every baseline."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import DIM, FakeEmbedder, baseline, make_tickets, toy_problem, unit_vectors
from hydra.errors import InstantiationException

from tagger.data.tickets import Tickets
from tagger.model.base import Estimator, Predictions
from tagger.model.baselines import (
    LogReg,
    fit_softmax_regression,
)
from tagger.model.label_table import LabelTable
from tagger.model.selection import Tuned, grid_points, split_grid


def _noisy(centre: np.ndarray, n: int, rng: np.random.Generator, noise: float = 1.0) -> list[np.ndarray]:
    """``n`` one-sentence tickets around ``centre`` (cosine to it about 1 / sqrt(1 + noise^2))."""
    out = []
    for _ in range(n):
        v = centre + noise * rng.normal(size=DIM) / np.sqrt(DIM)
        out.append((v / np.linalg.norm(v))[None, :].astype(np.float32))
    return out


def _direction(name: str) -> np.ndarray:
    return unit_vectors(1, seed=zlib.crc32(name.encode()))[0]


def _own_account_only(est: Estimator, pred: Predictions, tickets: Tickets) -> None:
    owner = est.table.frame["account_id"].to_numpy()
    for i, account in enumerate(tickets.meta["account_id"].astype(str)):
        rows = pred.top_rows[i][pred.top_rows[i] >= 0]
        assert (owner[rows] == account).all()


# -- cross-merchant logistic regression ------------------------------------------------------------


def _refund_problem(seed: int = 0) -> tuple[Tickets, Tickets]:
    """Merchant "few" has 1 training ticket of "Refund" and 40 of "Other"; merchant "many" has 40
    of each; "Refund" means the same at both, "Other" does not. Test: "few"'s refund tickets."""
    rng = np.random.default_rng(seed)
    refund = _direction("refund")
    rows = [("few", "Refund", v) for v in _noisy(refund, 1, rng)]
    rows += [("few", "Other", v) for v in _noisy(_direction("other at few"), 40, rng)]
    rows += [("many", "refund", v) for v in _noisy(refund, 40, rng)]  # another spelling, one class
    rows += [("many", "Other", v) for v in _noisy(_direction("other at many"), 40, rng)]
    test = [("few", "Refund", v) for v in _noisy(refund, 30, rng)]
    return make_tickets(rows), make_tickets(test)


def test_xlogreg_shares_knowledge_across_merchants():
    train, test = _refund_problem()
    truth = test.meta["label"].to_numpy()
    shared = baseline("xlogreg", C=10.0).fit(train)
    assert "refund" in shared.classes and "other" in shared.classes and len(shared.classes) == 2
    per_account = baseline("logreg", C=10.0).fit(train)
    shared_acc = (shared.predict(test).labels(0) == truth).mean()
    per_account_acc = (per_account.predict(test).labels(0) == truth).mean()
    assert shared_acc >= 0.9, shared_acc  # it learned "refund" from the other merchant's 40 tickets
    assert per_account_acc <= 0.2, per_account_acc  # one example against 40 "Other": always "Other"


def test_xlogreg_minimises_sklearns_objective_with_sklearns_C():
    """The same probabilities as scikit-learn's LogisticRegression(C) on the same (anisotropic) data."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    common = rng.normal(size=DIM) * 3  # embeddings share a common direction
    x = rng.normal(size=(5, DIM))[y] * 0.7 + rng.normal(size=(300, DIM)) + common
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.where((y == 4) & (rng.random(300) < 0.8), rng.integers(0, 4, 300), y)  # 4 rare: weights matter
    for C, class_weight in ((0.1, None), (10.0, None), (10.0, "balanced")):
        reference = LogisticRegression(C=C, max_iter=5000, tol=1e-8, class_weight=class_weight)
        reference = reference.fit(x, y).predict_proba(x)
        coef, intercept, convergence = fit_softmax_regression(x, y, 5, C, 500, 1e-7, class_weight)
        assert convergence.converged, convergence
        z = x @ coef.T + intercept
        p = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(p / p.sum(axis=1, keepdims=True), reference, atol=2e-3)


def test_xlogreg_only_predicts_the_tickets_own_account_labels():
    data = toy_problem(n_per_label=15)  # "Other" is a label of two accounts: one class
    est = baseline("xlogreg", C=10.0).fit(data)
    assert len(est.classes) == len(set(data.meta["label"].str.casefold()))
    pred = est.predict(data, k=5)
    _own_account_only(est, pred, data)
    assert (pred.labels(0) == data.meta["label"].to_numpy()).mean() > 0.95
    np.testing.assert_allclose(pred.top_probs.sum(axis=1), 1.0, atol=1e-5)  # renormalised per account


def test_xlogreg_gives_zero_to_a_label_whose_name_has_no_ticket_with_embeddings():
    rng = np.random.default_rng(0)
    rows = [("a", "Billing", v) for v in _noisy(_direction("billing"), 10, rng)]
    rows += [("a", "Other", v) for v in _noisy(_direction("other"), 10, rng)]
    rows += [("a", "Ghost", None)] * 3  # the name "ghost" never comes with embeddings
    est = baseline("xlogreg").fit(make_tickets(rows))
    assert "ghost" not in est.classes
    ghost = est.table.row("a", "Ghost")
    pred = est.predict(make_tickets([("a", "Billing", v) for v in _noisy(_direction("billing"), 5, rng)]))
    assert not (pred.top_rows == ghost).any()  # probability 0 leaves it out of the top-k
    np.testing.assert_allclose(pred.top_probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "make", [lambda: baseline("xlogreg", C=10.0), lambda: baseline("names", embedder=FakeEmbedder())]
)
def test_no_embeddings_fallback_and_unknown_accounts_as_per_account_baselines(make):
    data = toy_problem(n_per_label=10)
    est, reference = make().fit(data), baseline("logreg").fit(data)
    tickets = make_tickets(
        [
            ("a", "Refund", None),
            ("b", "Billing", None),
            ("zz", "Other", unit_vectors(1)),
            ("zz", "Other", None),
        ]
    )
    pred, ref = est.predict(tickets), reference.predict(tickets)
    for field in ("top_rows", "top_probs", "fallback", "abstained"):
        np.testing.assert_array_equal(getattr(pred, field), getattr(ref, field))
    assert pred.fallback.tolist() == [True, True, False, False]
    assert pred.abstained.tolist() == [False, False, True, True]
    assert pred.labels()[2] is None and pred.labels()[3] is None


# -- label-name similarity -------------------------------------------------------------------------


class NamedVectors:
    """An embedder that maps each label text to a known vector (a random one for anything else)."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors, self.calls = vectors, 0

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        self.calls += 1
        fallback = FakeEmbedder()
        return np.stack([self.vectors.get(t, fallback.embed([t])[0]) * 2.0 for t in texts])  # not unit


def test_names_picks_the_label_whose_name_vector_is_nearest():
    names = {"Shipping Tracking": "ship", "Billing Invoice": "bill", "Other": "other"}
    embedder = NamedVectors({text: _direction(key) for text, key in names.items()})
    train = make_tickets(
        [("a", "Shipping::Tracking", None), ("a", "Billing::Invoice", None), ("a", "Other", None)]
    )  # fit learns nothing from ticket text: tickets without embeddings are enough
    est = baseline("names", temperature=0.05, embedder=embedder).fit(train)
    rng = np.random.default_rng(0)
    rows = [
        ("a", lab, v)
        for lab, key in [("Shipping::Tracking", "ship"), ("Billing::Invoice", "bill"), ("Other", "other")]
        for v in _noisy(_direction(key), 10, rng)
    ]
    tickets = make_tickets(rows)
    pred = est.predict(tickets, k=3)
    assert (pred.labels(0) == tickets.meta["label"].to_numpy()).all()
    _own_account_only(est, pred, tickets)
    # probabilities are softmax(cosine / temperature): check one ticket by hand
    x = tickets.sentences(0)[0] / np.linalg.norm(tickets.sentences(0)[0])
    cos = np.array([x @ _direction(names[t]) for t in est.table.frame["text"]])
    p = np.exp(cos / 0.05 - (cos / 0.05).max())
    p /= p.sum()
    np.testing.assert_allclose(np.sort(pred.top_probs[0])[::-1], np.sort(p)[::-1], atol=1e-5)


def test_names_scores_declared_labels_never_seen_in_training():
    keys = {"Billing": "bill", "Other": "other", "Refund Request": "refund", "Shipping Tracking": "ship"}
    embedder = NamedVectors({text: _direction(key) for text, key in keys.items()})
    rng = np.random.default_rng(1)
    train = make_tickets(
        [("a", "Billing", v) for v in _noisy(_direction("bill"), 3, rng)] + [("a", "Other", None)] * 2
    )
    est = baseline("names", embedder=embedder).fit(train)
    extended = est.with_candidates(
        {"a": ["Refund Request", " billing "], "new": ['"Shipping:: Tracking"', "Other"]}
    )
    # known names are skipped (case-insensitively); declared names are normalised
    assert extended.table.frame[["account_id", "label"]].values.tolist() == [
        ["a", "Billing"],
        ["a", "Other"],
        ["a", "Refund Request"],
        ["new", "Other"],
        ["new", "Shipping::Tracking"],
    ]
    assert len(est.table) == 2  # the original is unchanged
    tickets = make_tickets(
        [("a", "Refund Request", v) for v in _noisy(_direction("refund"), 5, rng)]
        + [("new", "Shipping::Tracking", v) for v in _noisy(_direction("ship"), 5, rng)]
        + [("a", "Other", None), ("new", "Other", None)]
    )
    pred = extended.predict(tickets, k=3)
    assert (pred.labels(0)[:10] == tickets.meta["label"].to_numpy()[:10]).all()
    _own_account_only(extended, pred, tickets)
    # no embeddings: a new label has prior 0 (here "Other" keeps all of "a"'s null prior); a new
    # account gets a uniform prior over its declared labels
    assert pred.labels(0)[10] == "Other" and pred.top_probs[10, 0] > 0
    assert pred.top_probs[10, 2] == 0 and pred.top_rows[10, 2] == -1  # "Refund Request": prior 0
    np.testing.assert_allclose(pred.top_probs[11, :2], [0.5, 0.5])
    assert not pred.abstained.any()
    assert est.predict(tickets).abstained[5:10].all()  # without the candidates "new" is unknown


@pytest.fixture(scope="module")
def real_embedder(tmp_path_factory):
    """all-MiniLM-L6-v2 itself (skipped only where it cannot be loaded)."""
    from tagger.embed import SentenceEmbedder, load_encoder

    try:
        load_encoder()
    except Exception as error:  # any failure to load the bundled model: no model, no test
        pytest.skip(f"all-MiniLM-L6-v2 cannot be loaded: {error}")
    return SentenceEmbedder(cache_dir=tmp_path_factory.mktemp("sentences"))


def test_names_with_the_real_model_transfers_meaning(real_embedder):
    labels = ["Shipping::Tracking", "Billing::Invoice", "Account::Password Reset"]
    emails = {
        "Shipping::Tracking": [
            ["where is my package, it has not arrived", "the tracking page has not changed for a week"],
            ["my parcel still hasn't been delivered"],
        ],
        "Billing::Invoice": [["please send me the invoice for my last order", "I need it for my accounts"]],
        "Account::Password Reset": [
            ["I forgot my password and cannot log in", "the reset link does not work"]
        ],
    }
    train = make_tickets([("shop", lab, None) for lab in labels])
    est = baseline("names", embedder=real_embedder).fit(train)
    rows = [
        ("shop", lab, real_embedder.embed(sentences, progress=False))
        for lab, mails in emails.items()
        for sentences in mails
    ]
    tickets = make_tickets(rows)
    pred = est.predict(tickets, k=3)
    assert pred.labels(0).tolist() == tickets.meta["label"].tolist()
    assert pred.labels(0)[0] == "Shipping::Tracking"


# -- LabelTable.from_pairs --------------------------------------------------------------------------


def test_label_table_from_pairs_sorts_and_merges_like_from_meta():
    data = toy_problem(n_per_label=2)
    a = LabelTable.from_meta(data.meta)
    b = LabelTable.from_pairs(data.meta["account_id"], data.meta["label"], np.ones(len(data), int))
    assert a.frame.equals(b.frame)
    c = LabelTable.from_pairs(["z", "b", "b"], ["X::Y", "B", "A"])
    assert c.frame.values.tolist() == [["b", "A", 0, "A"], ["b", "B", 0, "B"], ["z", "X::Y", 0, "X Y"]]
    assert c.accounts == ["b", "z"]


# -- validation search ------------------------------------------------------------------------------


class Constant(Estimator):
    """Predicts its account's first label with probability ``value``; counts its fits."""

    name = "constant"
    fits = 0

    def __init__(self, value: float, shift: float = 0.0):
        self.value, self.shift = value, shift

    def fit(self, train: Tickets, val: Tickets | None = None) -> Constant:
        Constant.fits += 1
        self.table = LabelTable.from_meta(train.meta)
        return self

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        n = len(tickets)
        rows = np.full((n, k), -1)
        rows[:, 0] = 0
        probs = np.zeros((n, k), np.float32)
        probs[:, 0] = self.value + self.shift
        return Predictions(self.table.names, rows, probs, np.zeros(n, bool), np.zeros(n, bool))


class ShiftAtPredict(Constant):
    predict_only = ("shift",)


def _prefers(value: float):
    """A selection score highest where the top probability is ``value``."""
    return lambda pred, val, train: -abs(float(pred.top_probs[:, 0].mean()) - value)


def _split():
    data = toy_problem(n_per_label=20)
    n = len(data)
    return data.subset(np.arange(n) < 0.7 * n), data.subset(np.arange(n) >= 0.7 * n)


def test_tuned_picks_the_grid_point_with_the_best_validation_score():
    train, val = _split()
    Constant.fits = 0
    tuned = Tuned(Constant, {"value": [0.1, 0.3, 0.5]}, _prefers(0.3)).fit(train, val)
    assert tuned.chosen == {"value": 0.3}
    assert [s["params"] for s in tuned.search] == [{"value": 0.1}, {"value": 0.3}, {"value": 0.5}]
    np.testing.assert_allclose([s["score"] for s in tuned.search], [-0.2, 0.0, -0.2], atol=1e-6)
    assert tuned.budget == 3 == Constant.fits
    # predict and table are the chosen candidate's
    assert tuned.best.value == 0.3 and tuned.table is tuned.best.table
    np.testing.assert_allclose(tuned.predict(val).top_probs[:, 0], 0.3)
    assert tuned.name == "constant"


def test_tuned_ties_keep_the_earlier_point_and_nan_never_wins():
    train, val = _split()
    tie = Tuned(Constant, {"value": [0.25, 0.75]}, _prefers(0.5)).fit(train, val)  # exact in float32
    assert tie.search[0]["score"] == tie.search[1]["score"] and tie.chosen == {"value": 0.25}
    nan = Tuned(
        Constant, {"value": [0.25, 0.75]}, lambda p, v, t: np.nan if p.top_probs[0, 0] < 0.5 else -5.0
    ).fit(train, val)
    assert nan.chosen == {"value": 0.75}


def test_tuned_without_validation_fits_the_first_point():
    train, val = _split()
    Constant.fits = 0
    for empty in (None, val.subset(np.zeros(len(val), bool))):
        tuned = Tuned(Constant, {"value": [0.7, 0.3]}, _prefers(0.3)).fit(train, empty)
        assert tuned.chosen == {"value": 0.7} and tuned.budget == 1
        assert tuned.search == [{"params": {"value": 0.7}, "score": None}]
    assert Constant.fits == 2


def test_tuned_fits_once_for_parameters_only_predict_reads():
    train, val = _split()
    Constant.fits = 0
    tuned = Tuned(ShiftAtPredict, {"value": [0.1, 0.5], "shift": [0.0, 0.1, 0.2]}, _prefers(0.6)).fit(
        train, val
    )
    assert len(tuned.search) == 6 and tuned.budget == 2 == Constant.fits
    assert tuned.chosen == {"value": 0.5, "shift": 0.1}
    np.testing.assert_allclose(tuned.predict(val).top_probs[:, 0], 0.6)


@pytest.mark.parametrize(
    ("factory", "grid"),
    [
        (lambda **p: baseline("centroid", **p), {"temperature": [0.02, 0.2]}),
        (lambda **p: baseline("knn", **p), {"n_neighbors": [1, 40]}),
        (lambda **p: baseline("names", embedder=FakeEmbedder(), **p), {"temperature": [0.02, 0.5]}),
    ],
)
def test_a_shared_fit_predicts_as_a_fresh_fit(factory, grid):
    """The predict-only shortcut is exact: the tuned copy predicts what a fit at that point does."""
    train, val = _split()
    tuned = Tuned(factory, grid, _prefers(0.0)).fit(train, val)  # prefers the flattest point
    assert tuned.budget == 1 and len(tuned.search) == 2
    (key,) = grid
    assert tuned.chosen == {key: grid[key][-1]}
    fresh = factory(**tuned.chosen).fit(train).predict(val)
    np.testing.assert_allclose(tuned.predict(val).top_probs, fresh.top_probs, atol=1e-6)
    np.testing.assert_array_equal(tuned.predict(val).top_rows, fresh.top_rows)
    scores = [s["score"] for s in tuned.search]
    assert scores[0] != scores[1]  # the two points really predicted differently


def test_tuned_logreg_end_to_end_and_grid_helpers():
    from tagger.metrics import outcomes, summary

    train, val = _split()

    def accuracy(pred, val, train):
        return summary(outcomes(pred, val, train.meta))["accuracy"]

    tuned = Tuned(lambda **p: baseline("logreg", **p), {"C": [0.3, 10.0]}, accuracy).fit(train, val)
    assert tuned.budget == 2 and tuned.chosen["C"] in (0.3, 10.0)
    assert accuracy(tuned.predict(val), val, train) == max(s["score"] for s in tuned.search) > 0.9
    assert grid_points({"C": [1, 2], "k": [3]}) == [{"C": 1, "k": 3}, {"C": 2, "k": 3}]
    assert grid_points(None) == [{}] == grid_points({})
    params, grid = split_grid({"name": "logreg", "C": 10.0, "max_iter": 5, "grid": {"C": [1, 3]}})
    assert params == {"C": 10.0, "max_iter": 5} and grid == {"C": [1, 3]}
    baseline("logreg", **params)  # what is left constructs the estimator
    with pytest.raises(TypeError):
        LogReg(C=1.0)  # every setting comes from conf/: none has a default in code
    with pytest.raises(InstantiationException, match="grid"):
        baseline("logreg", grid=grid)  # an unknown keyword is an error, not ignored
