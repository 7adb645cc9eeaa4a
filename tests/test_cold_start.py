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


# Real text through the real all-MiniLM-L6-v2 (the fake embedder above shows the mechanics; this
# shows that meaning transfers from a label's name to tickets that say the same thing in other words).
KNOWN = {
    "Order Status": [
        "Where is my order? It has not arrived yet.",
        "Can you tell me when my package will be delivered?",
        "The tracking number you sent does not show any updates.",
        "My parcel was supposed to arrive on Monday.",
        "Has my order shipped yet?",
        "I have been waiting two weeks for my delivery.",
    ],
    "Refund Request": [
        "I would like my money back for this purchase.",
        "Please refund the amount you charged me.",
        "I returned the item last week and still have no refund.",
        "Can I get a refund for the broken product?",
        "When will the refund show up on my card?",
        "I want to be reimbursed for the damaged goods.",
    ],
    "Change Shipping Address": [
        "I need to send the order to a different address.",
        "I moved, please update the delivery address.",
        "Can you ship it to my office instead of my home?",
        "The street name on my order is wrong, can you fix it?",
        "Please change where the package is delivered.",
        "I typed the wrong postcode at checkout.",
    ],
    "Product Question": [
        "Is this jacket waterproof?",
        "What size should I choose for the shoes?",
        "Does the blender come with a warranty?",
        "Is the table made of solid wood?",
        "How long does the battery last?",
        "Are these headphones compatible with my phone?",
    ],
}
UNSEEN = {
    "Password Reset": [
        "I forgot my password and cannot log in.",
        "The link to reset my password does not work.",
        "How do I change the password of my account?",
        "I am locked out of my account after too many attempts.",
    ],
    "Gift Card Balance": [
        "How much money is left on my gift card?",
        "Can you check the remaining balance of my voucher?",
        "My gift card says zero but I never used it.",
        "I want to know the value left on a gift certificate.",
    ],
}


def test_meaning_transfers_from_real_label_names(tmp_path_factory):
    """Trained on four labels with real sentence embeddings, the model is given two new labels by
    name only; tickets about each, worded unlike its name, go to the right new label."""
    from tagger.embed import SentenceEmbedder

    embedder = SentenceEmbedder(tmp_path_factory.mktemp("sentences"))
    rng = np.random.default_rng(0)
    rows = []
    for account in ("shop", "store"):
        for label, sentences in KNOWN.items():
            vectors = embedder.embed(sentences, progress=False)
            for _ in range(30):
                pick = rng.choice(len(sentences), size=rng.integers(1, 3), replace=False)
                rows.append((account, label, vectors[pick]))
    order = rng.permutation(len(rows))
    data = make_tickets([rows[i] for i in order])
    n = len(data)
    train, val = data.subset(np.arange(n) < 0.8 * n), data.subset(np.arange(n) >= 0.8 * n)
    from omegaconf import OmegaConf

    from tagger.paths import compose_config

    model = OmegaConf.to_container(compose_config("config").model)  # the model of conf/, as composed
    est = SharedEstimator(model, TEST_TRAINER, seed=0, embedder=embedder, **SETUP).fit(train, val)
    extended = with_labels(est, {"shop": list(UNSEEN)})
    asked = [(label, sentence) for label, sentences in UNSEEN.items() for sentence in sentences]
    vectors = embedder.embed([s for _, s in asked], progress=False)
    tickets = make_tickets([("shop", label, v[None]) for (label, _), v in zip(asked, vectors, strict=True)])
    predicted = extended.predict(tickets).labels()
    right = np.mean(predicted == tickets.meta["label"].to_numpy())
    assert right >= 0.75, list(zip([s for _, s in asked], predicted, strict=True))  # chance: 1 in 6
