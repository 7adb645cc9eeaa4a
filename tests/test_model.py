"""The shared model and the baselines: masking, padding, shapes, learning, artifacts, determinism."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from conftest import (
    DIM,
    SETUP,
    TEST_MODEL,
    TEST_TRAINER,
    FakeEmbedder,
    baseline,
    make_tickets,
    toy_problem,
    unit_vectors,
)

from tagger.manifest import ArtifactError
from tagger.metrics import outcomes, summary
from tagger.model.artifacts import load_shared, save_shared
from tagger.model.label_table import LabelTable
from tagger.model.shared import SharedConfig, SharedModel
from tagger.model.shared_estimator import SharedEstimator


def _model(pooling: str = "attention", n_accounts: int = 3, seed: int = 0) -> tuple[SharedModel, LabelTable]:
    torch.manual_seed(seed)
    table = LabelTable.from_meta(toy_problem(n_per_label=1).meta)
    names = torch.from_numpy(FakeEmbedder().embed(table.frame["text"].tolist()))
    small = {"heads": 2, "key_dim": 8, "hidden": 32, "out_dim": 16, "dropout": 0.0, "prototypes": 2}
    sections = {k: v for s in ("encoder", "projection", "labels", "score") for k, v in TEST_MODEL[s].items()}
    known = {f.name for f in fields(SharedConfig)}
    values = {**sections, **small, "pooling": pooling, "dim": DIM}
    cfg = SharedConfig(**{k: v for k, v in values.items() if k in known})
    return SharedModel(cfg, names, table.n_accounts).eval(), table


def _rows(table: LabelTable, account) -> torch.Tensor:
    return torch.from_numpy(table.gather(np.asarray(account)))


@pytest.mark.parametrize("pooling", ["attention", "mean", "max"])
def test_a_ticket_only_scores_its_own_accounts_labels(pooling):
    model, table = _model(pooling)
    x = torch.from_numpy(unit_vectors(6)).view(3, 2, 384)
    mask = torch.ones(3, 2, dtype=torch.bool)
    account = torch.tensor([0, 1, 2])
    rows = _rows(table, account)
    # every candidate row of a ticket is one of its own account's labels, and all of them are there
    owner = table.account_of_row()
    for b, a in enumerate(account.tolist()):
        own = rows[b][rows[b] >= 0].numpy()
        assert (owner[own] == a).all() and len(own) == (owner == a).sum()
    probs = torch.softmax(model(x, mask, account, rows), dim=-1)
    assert torch.all(probs[rows < 0] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    # the unknown account (index n_accounts) has no candidate at all
    assert (table.gather(np.array([table.n_accounts, -1])) < 0).all()


def test_scores_do_not_depend_on_other_accounts_or_on_batch_neighbours():
    """A ticket's logits are the same alone, in a mixed batch, or given every label's vectors."""
    model, table = _model()
    x = torch.from_numpy(unit_vectors(6)).view(3, 2, 384)
    mask = torch.ones(3, 2, dtype=torch.bool)
    account = torch.tensor([2, 0, 1])
    together = model(x, mask, account, _rows(table, account))
    tickets = model.ticket_vectors(x, mask, model.query_shift(account))
    every = model.score_candidates(tickets, model.label_vectors(), _rows(table, account), None)
    torch.testing.assert_close(together, every)
    for b in range(3):
        alone = model(x[b : b + 1], mask[b : b + 1], account[b : b + 1], _rows(table, account[b : b + 1]))
        width = alone.shape[1]
        torch.testing.assert_close(alone[0], together[b, :width])
        assert (together[b, width:] <= -1e8).all()


@pytest.mark.parametrize("pooling", ["attention", "mean", "max"])
def test_padding_sentences_change_nothing(pooling):
    model, table = _model(pooling)
    x = torch.from_numpy(unit_vectors(3)).view(1, 3, 384)
    padded = torch.cat([x, torch.randn(1, 5, 384)], dim=1)  # garbage in the padding
    mask = torch.tensor([[True] * 3 + [False] * 5])
    account = torch.tensor([0])
    rows = _rows(table, account)
    torch.testing.assert_close(model(x, mask[:, :3], account, rows), model(padded, mask, account, rows))


@pytest.mark.parametrize("n_sentences", [1, 225])
def test_shapes(n_sentences):
    model, table = _model()
    x = torch.from_numpy(unit_vectors(2 * n_sentences)).view(2, n_sentences, 384)
    rows = _rows(table, [0, 1])
    logits = model(x, torch.ones(2, n_sentences, dtype=torch.bool), torch.tensor([0, 1]), rows)
    assert logits.shape == rows.shape == (2, int(table.counts[:2].max()))
    assert torch.isfinite(logits).all()


def test_a_ticket_without_sentences_gives_finite_scores():
    model, table = _model()
    logits = model(
        torch.zeros(1, 1, 384), torch.zeros(1, 1, dtype=torch.bool), torch.tensor([0]), _rows(table, [0])
    )
    assert torch.isfinite(logits).all()


def test_a_training_step_touches_only_its_batchs_label_rows():
    """Sparse gradients: the per-label and per-account parameters of other merchants get none,
    padding included (accounts of different label counts in one batch)."""
    model, table = _model()
    model.train()
    small, large = sorted(range(table.n_accounts), key=lambda a: table.counts[a])[:: table.n_accounts - 1]
    assert table.counts[small] < table.counts[large]  # the smaller account's row list is padded
    account = torch.tensor([large, small])
    rows = _rows(table, account)
    x = torch.from_numpy(unit_vectors(4)).view(2, 2, 384)
    logits = model(x, torch.ones(2, 2, dtype=torch.bool), account, rows)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grad = model.label_residual.weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    assert touched == set(table.rows_of(table.accounts[small])) | set(table.rows_of(table.accounts[large]))
    assert set(model.account_query.weight.grad.coalesce().indices()[0].tolist()) == {small, large}


def test_sparse_weight_decay_shrinks_the_touched_rows_only():
    """The lazy decoupled decay scales exactly the rows the step's gradient touched, by 1 - lr * wd."""
    from tagger.model.lit import LitShared

    model, table = _model()
    with torch.no_grad():
        model.label_residual.weight.normal_()
    before = model.label_residual.weight.detach().clone()
    lit = LitShared(model, torch.zeros(model.n_labels), "none", 1.0, 0.01, 0.0, None, sparse_weight_decay=0.5)
    account = torch.tensor([0])
    rows = _rows(table, account)
    x = torch.from_numpy(unit_vectors(2)).view(1, 2, 384)
    torch.nn.functional.cross_entropy(
        model(x, torch.ones(1, 2, dtype=torch.bool), account, rows), torch.tensor([0])
    ).backward()
    lit._decay_touched_rows()
    mine = sorted(table.rows_of(table.accounts[0]))
    others = sorted(set(range(model.n_labels)) - set(mine))
    after = model.label_residual.weight.detach()
    assert torch.allclose(after[mine], before[mine] * (1 - 0.01 * 0.5))
    assert torch.equal(after[others], before[others])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    data = toy_problem(n_per_label=40)
    n = len(data)
    train, val = data.subset(np.arange(n) < 0.7 * n), data.subset(np.arange(n) >= 0.7 * n)
    est = SharedEstimator(
        TEST_MODEL,
        TEST_TRAINER,
        seed=0,
        log_dir=tmp_path_factory.mktemp("logs"),
        embedder=FakeEmbedder(),
        **SETUP,
    ).fit(train, val)
    return est, train, val


def test_learns_a_separable_toy_problem(fitted):
    est, train, val = fitted
    metrics = summary(outcomes(est.predict(val), val, train.meta))
    assert metrics["accuracy"] > 0.95
    assert metrics["macro_f1"] > 0.95
    assert 0.05 < est.temperature < 20


def test_predictions_stay_inside_the_account(fitted):
    est, _, val = fitted
    pred = est.predict(val, k=5)
    accounts = est.table.frame["account_id"].to_numpy()
    for i, account in enumerate(val.meta["account_id"]):
        rows = pred.top_rows[i][pred.top_rows[i] >= 0]
        assert (accounts[rows] == account).all()
    # the single-label account always gets its one label, with certainty
    single = (val.meta["account_id"] == "c").to_numpy()
    assert (pred.labels()[single] == "General").all()
    np.testing.assert_allclose(pred.confidence[single], 1.0, atol=1e-6)
    frame = pred.to_frame(k=3)
    assert list(frame.columns[:4]) == ["label", "confidence", "fallback", "abstained"]
    assert (frame["label"] == frame["top1"]).all() and len(frame) == len(val)


def test_tickets_without_embeddings_fall_back_to_the_prior(fitted):
    est, _, _ = fitted
    tickets = make_tickets([("a", "Refund", None), ("b", "Billing", None), ("zz", "Other", unit_vectors(1))])
    pred = est.predict(tickets)
    assert pred.fallback.tolist() == [True, True, False]
    assert pred.abstained.tolist() == [False, False, True]  # an account never seen in training
    np.testing.assert_allclose(pred.top_probs[:2].sum(axis=1), 1.0, atol=1e-5)
    assert pred.labels()[2] is None


def test_abstain_instead_of_fallback(fitted):
    est, _, _ = fitted
    est.cfg = {**est.cfg, "confidence": {"null_fallback": "abstain"}}
    try:
        pred = est.predict(make_tickets([("a", "Refund", None)]))
        assert pred.abstained.tolist() == [True] and pred.confidence.tolist() == [0.0]
    finally:
        est.cfg = {**est.cfg, "confidence": {"null_fallback": "prior"}}


def test_artifact_round_trip_and_checks(fitted, tmp_path):
    est, _, val = fitted
    out = save_shared(est, tmp_path / "m", "seed: 0\n", {"sha256": "x"}, {"overall": {}})
    loaded = load_shared(out)
    np.testing.assert_allclose(loaded.logits(val)[0], est.logits(val)[0], atol=1e-6)
    assert loaded.temperature == est.temperature
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written directory left
    (out / "weights.pt").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="checksum"):
        load_shared(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        load_shared(out)


def test_same_seed_same_model(fitted, tmp_path):
    est, train, val = fitted
    again = SharedEstimator(
        TEST_MODEL, TEST_TRAINER, seed=0, log_dir=tmp_path, embedder=FakeEmbedder(), **SETUP
    ).fit(train, val)
    np.testing.assert_array_equal(again.logits(val)[0], est.logits(val)[0])


@pytest.mark.parametrize("name", ["majority", "logreg", "centroid", "knn"])
def test_baselines_fit_and_predict(name):
    data = toy_problem(n_per_label=20)
    n = len(data)
    train, val = data.subset(np.arange(n) < 0.7 * n), data.subset(np.arange(n) >= 0.7 * n)
    est = baseline(name).fit(train)
    pred = est.predict(val)
    metrics = summary(outcomes(pred, val, train.meta))
    assert metrics["accuracy"] > (0.3 if name == "majority" else 0.95)
    accounts = est.table.frame["account_id"].to_numpy()
    top = pred.top_rows[:, 0]
    assert (accounts[top] == val.meta["account_id"].to_numpy()).all()


def test_validation_macro_f1_equals_torchmetrics_without_a_confusion_matrix():
    """The early-stopping metric is torchmetrics' macro-F1 exactly, computed over the classes present."""
    from torchmetrics.classification import MulticlassF1Score

    from tagger.model.lit import MacroF1

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 40, (300,), generator=g)
    preds = torch.where(torch.rand(300, generator=g) < 0.6, target, torch.randint(0, 40, (300,), generator=g))
    reference, ours = MulticlassF1Score(41, average="macro"), MacroF1()
    for i in range(0, 300, 64):
        reference.update(preds[i : i + 64], target[i : i + 64])
        ours.update(preds[i : i + 64], target[i : i + 64])
    torch.testing.assert_close(ours.compute(), reference.compute())


def test_an_unknown_model_key_is_an_error_not_ignored():
    misspelt = {**TEST_MODEL, "encoder": {**TEST_MODEL["encoder"], "poolling": "mean"}}
    with pytest.raises(ValueError, match=r"encoder\.poolling"):
        SharedEstimator(misspelt, TEST_TRAINER)
    with pytest.raises(ValueError, match="optimiser"):
        SharedEstimator({**TEST_MODEL, "optimiser": {}}, TEST_TRAINER)


def _tempered_mean(members, tickets) -> tuple[np.ndarray, np.ndarray]:
    """The mean over ``members`` of their logits divided by their temperatures, and the rows."""
    parts = [m.logits(tickets) for m in members]
    mean = sum(lg / m.temperature for (lg, _), m in zip(parts, members, strict=True)) / len(members)
    return mean, parts[0][1]


def test_an_ensemble_is_one_model_scoring_and_updating_as_its_members_do(fitted, tmp_path):
    import copy

    from tagger.model.cold_start import update_labels
    from tagger.model.ensemble import EnsembleModel, SeedEnsemble
    from tagger.model.label_update import LabelUpdate

    est, train, val = fitted
    other = copy.deepcopy(est)
    torch.manual_seed(1)
    with torch.no_grad():  # another "seed": other weights, another temperature
        for p in other.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    other.temperature = est.temperature / 3
    ensemble = SeedEnsemble([est, other])
    assert isinstance(ensemble.model, EnsembleModel) and ensemble.temperature == 1.0
    logits, rows = ensemble.logits(val)
    expected, _ = _tempered_mean([est, other], val)
    own = rows >= 0
    np.testing.assert_allclose(logits[own], expected[own], rtol=1e-4, atol=1e-4)
    # a new label from its name, with two examples folded in, and a rename: the ensemble updated
    # once scores exactly as its members updated one by one
    account = str(val.meta["account_id"].iloc[0])
    label = str(train.meta.loc[train.meta["account_id"] == account, "label"].iloc[0])
    examples = [val.embeddings[val.offsets[i] : val.offsets[i + 1]] for i in range(2)]
    update = [LabelUpdate(account, add=["Brand New Reason"], examples={"Brand New Reason": examples})]
    update.append(LabelUpdate(account, rename={label: "Renamed Reason"}))
    updated = update_labels(ensemble, update)
    members = [update_labels(m, update) for m in (est, other)]
    logits, rows = updated.logits(val)
    expected, member_rows = _tempered_mean(members, val)
    assert (rows == member_rows).all() and (rows >= 0).sum() > (own.sum())  # the new label is scored
    np.testing.assert_allclose(logits[rows >= 0], expected[rows >= 0], rtol=1e-4, atol=1e-4)
    # saved and loaded: the same scores
    out = save_shared(ensemble, tmp_path / "ensemble", "", {}, {})
    np.testing.assert_allclose(load_shared(out).logits(val)[0], ensemble.logits(val)[0], atol=1e-5)
    # one member: its own predictions
    alone = SeedEnsemble([est]).predict(val)
    np.testing.assert_allclose(alone.top_probs, est.predict(val).top_probs, rtol=1e-5, atol=1e-6)
    mismatched = copy.copy(est)
    first = train.meta["account_id"].iloc[0]
    mismatched.table = LabelTable.from_meta(train.meta[train.meta["account_id"] == first])
    with pytest.raises(ValueError, match="one label table"):
        SeedEnsemble([est, mismatched])
