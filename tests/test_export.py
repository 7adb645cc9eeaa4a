"""ONNX export: parity with PyTorch on held-out tickets, the one predictor, refusal of bad exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tickets, unit_vectors

from tagger.data import load_tickets
from tagger.manifest import ArtifactError
from tagger.model.artifacts import load_shared
from tagger.serving import onnx_export
from tagger.serving.onnx_export import ExportError, export_model
from tagger.serving.onnx_predictor import OnnxPredictor


def test_export_parity_and_one_predictor(trained):
    model_dir, data, tmp = trained
    serving = export_model(model_dir, tmp / "onnx", parity_tickets=500)
    assert serving["parity"]["tickets"] > 0
    assert serving["parity"]["max_abs_diff"] < 1e-4 and serving["parity"]["top1_disagreements"] == 0
    assert serving["parity"]["label_tower_max_abs_diff"] < 1e-4
    assert serving["parity"]["name_encoder_max_abs_diff"] < 1e-4  # vs sentence-transformers
    for name in (
        "model.onnx",
        "label_tower.onnx",
        "serving.json",
        "manifest.json",
        "labels/base/manifest.json",
    ):
        assert (tmp / "onnx" / name).exists()
    predictor = OnnxPredictor(tmp / "onnx")
    estimator = load_shared(model_dir)
    tickets = load_tickets(data, cache_dir=tmp / "cache", progress=False)  # embeddings and none
    a, b = predictor.predict(tickets), estimator.predict(tickets)
    for rank in range(a.top_rows.shape[1]):  # rows: the batch's candidates vs the whole table; labels agree
        assert (a.labels(rank) == b.labels(rank)).all()
    assert a.fallback.any() and (a.fallback == b.fallback).all() and (a.abstained == b.abstained).all()
    np.testing.assert_allclose(a.top_probs, b.top_probs, atol=1e-5)
    assert json.loads((tmp / "onnx" / "serving.json").read_text())["model_version"].startswith("shared-")


def test_one_member_of_the_ensemble_exports_alone(trained):
    from tagger.model.ensemble import EnsembleModel, member_of

    model_dir, data, tmp = trained
    ensemble = load_shared(model_dir)
    assert isinstance(ensemble.model, EnsembleModel) and len(ensemble.model.members) == 2
    serving = export_model(model_dir, tmp / "member1", parity_tickets=200, member=1)
    assert serving["model_version"].split("+")[0].endswith("-member1")
    assert serving["parity"]["max_abs_diff"] < 1e-4
    tickets = load_tickets(data, cache_dir=tmp / "cache", progress=False)
    one = member_of(ensemble, 1)
    np.testing.assert_allclose(
        OnnxPredictor(tmp / "member1").predict(tickets).top_probs, one.predict(tickets).top_probs, atol=1e-5
    )
    with pytest.raises(ValueError, match=r"members 0\.\.1"):
        member_of(ensemble, 2)


def test_a_parity_failure_writes_nothing(trained, monkeypatch):
    model_dir, _, tmp = trained
    monkeypatch.setattr(
        onnx_export,
        "check_parity",
        lambda *a: {
            "tickets": 1,
            "max_abs_diff": 1.0,
            "top1_disagreements": 1,
            "label_tower_max_abs_diff": 0.0,
            "name_encoder_max_abs_diff": 0.0,
        },
    )
    with pytest.raises(ExportError, match="disagree"):
        export_model(model_dir, tmp / "bad", parity_tickets=50)
    assert not (tmp / "bad").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".bad")]


def test_an_altered_export_is_refused(trained):
    model_dir, _, tmp = trained
    export_model(model_dir, tmp / "onnx2", parity_tickets=50)
    (tmp / "onnx2" / "label_tower.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"label_tower\.onnx"):
        OnnxPredictor(tmp / "onnx2")
    export_model(model_dir, tmp / "onnx3", parity_tickets=50)
    (tmp / "onnx3" / "labels" / "base" / "labels.parquet").write_text("{}")
    with pytest.raises(ArtifactError, match=r"labels\.parquet"):
        OnnxPredictor(tmp / "onnx3")


def test_a_mixed_batch_scores_each_ticket_as_it_would_alone(trained):
    """The predictor feeds ONNX the batch's merchants' labels only: mixing merchants changes nothing,
    and a batch with no known merchant (and no embeddings) abstains instead of failing."""
    model_dir, data, tmp = trained
    export_model(model_dir, tmp / "onnx-mixed", parity_tickets=50)
    predictor = OnnxPredictor(tmp / "onnx-mixed")
    tickets = load_tickets(data, cache_dir=tmp / "cache", progress=False)
    pick = tickets.subset(np.arange(min(40, len(tickets))))
    together, _ = predictor.logits(pick)
    for i in range(len(pick)):
        alone, _ = predictor.logits(pick.subset(np.array([i])))
        np.testing.assert_allclose(alone[0], together[i, : alone.shape[1]], atol=1e-5)
    unknown = make_tickets([("nobody", "Other", None), ("nobody", "Other", unit_vectors(1))])
    pred = predictor.predict(unknown)
    assert pred.abstained.all() and (pred.top_rows == -1).all()
