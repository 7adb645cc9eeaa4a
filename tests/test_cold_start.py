"""Labels with no training example, predicted from their names alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIM, TEST_MODEL, TEST_TRAINER, FakeEmbedder, make_tickets

from tagger.data.labels import label_text
from tagger.model.cold_start import with_labels
from tagger.model.shared_estimator import SharedEstimator


def _near_names(labels: dict[str, list[str]], n: int, seed: int) -> list[tuple]:
    """Tickets whose single sentence lies near the embedding of their label's name."""
    rng = np.random.default_rng(seed)
    embed = FakeEmbedder()
    rows = []
    for account, names in labels.items():
        for name in names:
            centre = embed.embed([label_text(name)])[0]
            for _ in range(n):
                v = centre + 0.5 * rng.normal(size=DIM) / np.sqrt(DIM)
                rows.append((account, name, (v / np.linalg.norm(v))[None, :]))
    return [rows[i] for i in rng.permutation(len(rows))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    seen = {"a": [f"Topic {i}" for i in range(8)], "b": [f"Subject {i}" for i in range(6)]}
    data = make_tickets(_near_names(seen, 25, seed=0))
    n = len(data)
    train, val = data.subset(np.arange(n) < 0.8 * n), data.subset(np.arange(n) >= 0.8 * n)
    cfg = {**TEST_MODEL, "projection": {"hidden": 128, "out_dim": 64, "dropout": 0.0}}
    return SharedEstimator(
        cfg,
        {**TEST_TRAINER, "max_epochs": 20},
        seed=0,
        log_dir=tmp_path_factory.mktemp("logs"),
        embedder=FakeEmbedder(),
    ).fit(train, val)


def test_an_unseen_label_is_predicted_from_its_name(trained):
    extended = with_labels(trained, {"a": ["Brand New Thing", "topic 1"]})  # "topic 1" is known: skipped
    assert len(extended.table) == len(trained.table) + 1
    tickets = make_tickets(_near_names({"a": ["Brand New Thing"]}, 20, seed=1))
    pred = extended.predict(tickets, k=3)
    top3 = np.array([set(row) for row in zip(*(pred.labels(r) for r in range(3)), strict=True)])
    hit = np.mean(["Brand New Thing" in s for s in top3])
    assert hit >= 0.5  # far above the chance of 3 in 9
    # the old labels score as before
    old = make_tickets(_near_names({"a": ["Topic 3"], "b": ["Subject 2"]}, 10, seed=2))
    assert (extended.predict(old).labels() == trained.predict(old).labels()).mean() > 0.9


def test_a_new_account_from_its_label_names_only(trained):
    extended = with_labels(trained, {"newco": ["Alpha Request", "Beta Complaint", "Gamma Question"]})
    tickets = make_tickets(
        _near_names({"newco": ["Alpha Request", "Beta Complaint", "Gamma Question"]}, 10, 3)
    )
    pred = extended.predict(tickets)
    assert not pred.abstained.any()
    assert (pred.labels() == tickets.meta["label"].to_numpy()).mean() > 1 / 3  # above chance
    empty = make_tickets([("newco", "Alpha Request", None)])
    np.testing.assert_allclose(extended.predict(empty).top_probs[0, :3], 1 / 3, atol=1e-6)


def test_an_empty_name_is_refused(trained):
    with pytest.raises(ValueError, match="empty label name"):
        with_labels(trained, {"a": ["  "]})
