"""python predict.py: a ticket file scored by the API's predictor, bad rows quarantined as the ingest
does, the same answers as /predict, and engine=ray giving the same rows as engine=local."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FakeEmbedder, exported, served_copy
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir

from tagger.batch.run import outputs, predict_file
from tagger.batch.score import PieceScorer
from tagger.data.cache import load_tickets
from tagger.model.label_update import LabelUpdate
from tagger.paths import PROJECT_ROOT
from tagger.serving.api import create_app
from tagger.serving.registry import Registry


@pytest.fixture(scope="module")
def export_dir(trained):
    return exported(trained, "predict-onnx")


@pytest.fixture(scope="module")
def bad_file(trained, tmp_path_factory):
    """The toy tickets, several row groups, with one row of each kind of problem the ingest names,
    an account the export does not know, and no label column (a file to score has none)."""
    _, data, _ = trained
    table = pq.read_table(data).drop_columns(["contact_reason"])
    d = table.to_pydict()
    d["ticket_id"][5] = None
    d["ticket_id"][70] = d["ticket_id"][3]  # a duplicate in a later row group
    d["account_id"][9] = None
    d["account_id"][11] = "unknown-merchant"
    d["email_sentence_embeddings"][13] = "{not json"
    d["email_sentence_embeddings"][14] = '{"s": [1.0, 2.0]}'
    d["unix_timestamp"] = [str(v) for v in d["unix_timestamp"]]
    d["unix_timestamp"][17] = "yesterday"
    path = tmp_path_factory.mktemp("predict") / "bad.parquet"
    pq.write_table(pa.table(d), path, row_group_size=64)
    return path


def _config(data, export_dir, out, *extra: str):
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            "predict",
            overrides=[
                f"data.path={data}",
                f"export_dir={export_dir}",
                f"out={out}",
                "progress=false",
                *extra,
            ],
        )


def test_rows_are_quarantined_exactly_as_the_ingest_does_and_the_rest_scored(bad_file, export_dir, tmp_path):
    summary = predict_file(_config(bad_file, export_dir, tmp_path / "p.parquet", "batch_rows=16"))
    files = outputs(tmp_path / "p.parquet")
    ingest = load_tickets(bad_file, use_cache=False, require_labels=False, progress=False)
    quarantine = pd.read_parquet(files["quarantine"])
    assert quarantine.to_dict("records") == ingest.report.rows()  # same rows, fields, problems, details
    assert len(quarantine) == 6
    predictions = pd.read_parquet(files["predictions"])
    assert predictions["ticket_id"].tolist() == ingest.meta["ticket_id"].tolist()  # kept rows, file order
    assert summary["rows"] == ingest.report.n_rows and summary["scored"] == len(predictions)
    assert summary["validation"] == ingest.report.to_dict()
    assert json.loads(files["summary"].read_text())["scored"] == len(predictions)
    unknown = predictions[predictions["account_id"] == "unknown-merchant"].iloc[0]
    assert unknown["abstained"] and pd.isna(unknown["label"]) and len(unknown["top_labels"]) == 0
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_each_row_is_what_the_api_answers_for_the_same_ticket(trained, export_dir, tmp_path):
    """By default predict.py scores with the registry's promoted model and every label change, as
    the API serves them."""
    _, data, _ = trained
    registry = served_copy(export_dir, tmp_path)
    Registry(registry).update(LabelUpdate("a", add=["Added since"]), "test", FakeEmbedder().embed)
    summary = predict_file(_config(data, "null", tmp_path / "p.parquet", f"registry_dir={registry}"))
    assert summary["model_version"].endswith("/g000001")
    predictions = pd.read_parquet(tmp_path / "p.parquet")
    rows = pq.read_table(data).to_pylist()
    assert len(predictions) == len(rows)
    assert "Added since" in {label for labels in predictions["top_labels"] for label in labels}
    client = TestClient(create_app(registry), raise_server_exceptions=False)
    for i in range(0, len(rows), 7):  # a spread of tickets, those without embeddings included
        body = {
            "account_id": rows[i]["account_id"],
            "email_sentence_embeddings": rows[i]["email_sentence_embeddings"],
        }
        api = client.post("/predict", json=body).json()
        got = predictions.iloc[i]
        assert got["ticket_id"] == rows[i]["ticket_id"]
        assert got["label"] == api["contact_reason"]
        assert list(got["top_labels"]) == [t["label"] for t in api["top_k"]]
        np.testing.assert_allclose(got["top_scores"], [t["score"] for t in api["top_k"]], atol=1e-5)
        assert got["confidence"] == pytest.approx(api["confidence"], abs=1e-5)
        assert bool(got["abstained"]) == api["abstained"] and bool(got["fallback"]) == api["fallback"]
        assert got["model_version"] == api["model_version"]


def test_a_damaged_row_is_said_and_a_scorer_refuses_labels_that_moved(trained, export_dir, tmp_path):
    """A merchant whose latest label row is damaged is scored with its last good labels and named in
    the summary; a scorer (a Ray actor) refuses to score on labels other than the run started on."""
    _, data, _ = trained
    registry = served_copy(export_dir, tmp_path)
    writer = Registry(registry)
    writer.update(LabelUpdate("a", add=["Damaged since"]), "test", FakeEmbedder().embed)
    with sqlite3.connect(registry / "registry.sqlite") as db:
        db.execute("UPDATE label_rows SET blob=? WHERE account='a'", (b"torn",))
    summary = predict_file(_config(data, "null", tmp_path / "p.parquet", f"registry_dir={registry}"))
    assert list(summary["quarantined_merchants"]) == ["a"] and summary["model_version"].endswith("/g000001")
    predictions = pd.read_parquet(tmp_path / "p.parquet")
    assert "Damaged since" not in {label for labels in predictions["top_labels"] for label in labels}
    scorer = {"path": data, "registry_dir": registry, "version": writer.served()[1], "generation": "g000001"}
    PieceScorer(**scorer)  # the labels the run started on
    writer.update(LabelUpdate("b", add=["Later"]), "test", FakeEmbedder().embed)
    with pytest.raises(RuntimeError, match="moved to g000002"):
        PieceScorer(**scorer)


def test_the_ray_engine_gives_the_local_engine_s_rows(bad_file, export_dir, tmp_path):
    pytest.importorskip("ray")
    local = predict_file(_config(bad_file, export_dir, tmp_path / "local.parquet", "batch_rows=16"))
    ray = predict_file(
        _config(
            bad_file, export_dir, tmp_path / "ray.parquet", "engine=ray", "ray.workers=2", "batch_rows=16"
        )
    )
    for kind in ("predictions", "quarantine"):
        a = pd.read_parquet(outputs(tmp_path / "local.parquet")[kind])
        b = pd.read_parquet(outputs(tmp_path / "ray.parquet")[kind])
        when = ["predicted_at"] if kind == "predictions" else []  # when each run scored its rows
        pd.testing.assert_frame_equal(a.drop(columns=when), b.drop(columns=when))
    assert ray["validation"] == local["validation"] and ray["workers"] == 2


def test_the_command_line_scores_a_file_and_refuses_a_missing_one(trained, export_dir, tmp_path):
    _, data, _ = trained
    args = [sys.executable, "predict.py", f"export_dir={export_dir}", "progress=false"]
    done = subprocess.run(
        [*args, f"data.path={data}", f"out={tmp_path / 'p.parquet'}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "tickets/s" in done.stdout and (tmp_path / "p.parquet").exists()
    missing = subprocess.run(
        [*args, f"data.path={tmp_path / 'nope.parquet'}", f"out={tmp_path / 'q.parquet'}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "ticket file not found" in missing.stderr
    assert not (tmp_path / "q.parquet").exists()
    no_registry = subprocess.run(
        [sys.executable, "predict.py", f"registry_dir={tmp_path / 'none'}", f"data.path={data}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert no_registry.returncode != 0 and "no registry here" in no_registry.stderr
    assert "Traceback" not in no_registry.stderr


def test_the_defaults_answer_as_the_api_does():
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        predict, serve = compose("predict"), compose("serve")
    assert predict.top_k == serve.limits.top_k and predict.precision_target == serve.limits.precision_target


def test_an_empty_file_gives_empty_outputs_and_hostile_rows_are_quarantined(trained, export_dir, tmp_path):
    _, data, _ = trained
    table = pq.read_table(data)
    empty = tmp_path / "empty.parquet"
    pq.write_table(table.slice(0, 0), empty)
    summary = predict_file(_config(empty, export_dir, tmp_path / "e.parquet"))
    assert summary["rows"] == 0 and pd.read_parquet(tmp_path / "e.parquet").empty
    assert pd.read_parquet(tmp_path / "e.quarantine.parquet").empty
    hostile = table.slice(0, 3).to_pydict()
    hostile["email_sentence_embeddings"][1] = "[" * 100_000 + "]" * 100_000  # deeply nested
    hostile["email_sentence_embeddings"][2] = str({"x": [0.1] * 384})  # a Python literal: not JSON
    path = tmp_path / "hostile.parquet"
    pq.write_table(pa.table(hostile), path)
    summary = predict_file(_config(path, export_dir, tmp_path / "h.parquet"))
    quarantine = pd.read_parquet(tmp_path / "h.quarantine.parquet")
    assert summary["scored"] == 1 and sorted(quarantine["row"]) == [1, 2]
    assert set(quarantine["problem"]) == {"malformed JSON"}
