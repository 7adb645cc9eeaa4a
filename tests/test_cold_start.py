"""Labels with no training example, predicted from their names alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIM, SETUP, TEST_MODEL, TEST_TRAINER, FakeEmbedder, make_tickets

from tagger.data.labels import label_text
from tagger.model.cold_start import label_state, update_labels, with_labels, with_state
from tagger.model.label_update import LabelUpdate, UpdateError
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
        **SETUP,
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


def test_the_label_state_round_trips(trained):
    tickets = make_tickets(_near_names({"a": ["Topic 2"], "b": ["Subject 4"]}, 10, seed=4))
    same = with_state(trained, label_state(trained))
    np.testing.assert_allclose(same.logits(tickets), trained.logits(tickets), atol=1e-5)


def test_examples_fold_into_a_label_whose_name_says_little(trained):
    """Tickets of 'Misc Code 7' look like 'Topic 3' tickets, not like its name; five examples fix that."""
    rng = np.random.default_rng(7)
    centre = FakeEmbedder().embed([label_text("Topic 3")])[0] + 3.0 * rng.normal(size=DIM) / np.sqrt(DIM)
    vectors = [centre + 0.2 * rng.normal(size=DIM) / np.sqrt(DIM) for _ in range(25)]
    rows = [("a", "Misc Code 7", (v / np.linalg.norm(v))[None, :]) for v in vectors]
    examples, test = [r[2] for r in rows[:5]], make_tickets(rows[5:])

    def hits(estimator) -> float:
        return float((estimator.predict(test).labels() == "Misc Code 7").mean())

    zero = update_labels(trained, [LabelUpdate("a", add=["Misc Code 7"])])
    five = update_labels(trained, [LabelUpdate("a", add=["Misc Code 7"], examples={"Misc Code 7": examples})])
    assert hits(zero) < 0.5 and hits(five) >= 0.8
    assert int(five.table.frame.query("label == 'Misc Code 7'")["n_train"].iloc[0]) == 5


def test_rename_keeps_the_vector_and_retire_removes_the_row(trained):
    renamed = update_labels(trained, [LabelUpdate("a", rename={"Topic 1": "Topic One"}, retire=["Topic 2"])])
    old, new = label_state(trained), label_state(renamed)
    assert len(renamed.table) == len(trained.table) - 1
    before, after = old.accounts["a"], new.accounts["a"]
    renamed_vector = after.vectors[after.labels.index("Topic One")]
    np.testing.assert_allclose(renamed_vector, before.vectors[before.labels.index("Topic 1")], atol=1e-5)
    for other in set(old.accounts) - {"a"}:  # other merchants' labels come back as they were
        np.testing.assert_allclose(new.accounts[other].vectors, old.accounts[other].vectors, atol=1e-5)
    assert renamed.table.row("a", "Topic 2") == -1 and renamed.table.row("b", "Subject 0") >= 0
    with pytest.raises(UpdateError, match="unknown account"):
        update_labels(trained, [LabelUpdate("zz", add=["X"])])
