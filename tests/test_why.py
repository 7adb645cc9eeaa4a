"""Why: each answer can name the sentences that decided it (their attention weights), in the API
(``?why=true``) and in predict.py (``why=true``); on a model trained on real text, a ticket's intent
sentence planted among boilerplate is ranked first."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DIM, embeddings_json, exported, served_copy, toy_parquet, unit_vectors
from fastapi.testclient import TestClient

from tagger.serving.api import create_app


@pytest.fixture()
def export(trained):
    return exported(trained, "why-onnx")


@pytest.fixture()
def client(export, tmp_path):
    registry = served_copy(export, tmp_path)
    return TestClient(create_app(registry, reload_interval=0.0), raise_server_exceptions=False)


def _planted(label: str = "Refund", seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Account "a"'s ticket of the toy problem: its boilerplate sentences, and one sentence of
    ``label`` planted third."""
    rng = np.random.default_rng(seed)
    centre = unit_vectors(1, seed=zlib.crc32(f"a|{label}".encode()))[0]
    decisive = centre + 0.3 * rng.normal(size=DIM) / np.sqrt(DIM)
    filler = unit_vectors(3, seed=99)  # shared by every label of every merchant
    x = np.stack([filler[0], filler[1], decisive / np.linalg.norm(decisive), filler[2]]).astype(np.float32)
    return x, ["f1", "f2", "decisive", "f3"]


def test_why_is_off_by_default_and_checked(client):
    x, ids = _planted()
    body = {"account_id": "a", "email_sentence_embeddings": embeddings_json(x, ids)}
    assert "why" not in client.post("/predict", json=body).json()
    assert client.post("/predict?why=perhaps", json=body).status_code == 422
    empty = client.post("/predict?why=true", json={"account_id": "a", "email_sentence_embeddings": None})
    assert empty.status_code == 200 and empty.json()["why"] is None
    one = client.post("/predict?why=true", json=body).json()["why"]
    assert len(one) == 3 and one[0]["weight"] >= one[1]["weight"] >= one[2]["weight"]  # why_sentences
    batch = client.post("/predict/batch?why=true", json={"tickets": [body, body]}).json()
    assert [b["why"] for b in batch] == [one, one]
    weights = client.app.state.service.live.current.predictor.predict_vectors(["a"], [x]).sentence_weights
    assert weights.shape == (1, 4) and weights.sum() == pytest.approx(1.0, abs=1e-5)


def test_an_export_without_sentence_weights_says_so(client):
    scorer = client.app.state.service.live.current.scorer
    scorer.predictor.outputs = {"logits", "ticket_vectors"}  # what an export made before them has
    x, ids = _planted()
    body = {"account_id": "a", "email_sentence_embeddings": embeddings_json(x, ids)}
    answer = client.post("/predict?why=true", json=body)
    assert answer.status_code == 409 and "export it again" in answer.json()["detail"]["message"]


def test_predict_py_writes_why_only_when_asked(export, tmp_path):
    from hydra import compose, initialize_config_dir

    from tagger.batch.run import predict_file
    from tagger.paths import PROJECT_ROOT

    data = toy_parquet(tmp_path / "t.parquet", n_per_label=3)
    for why in (False, True):
        out = tmp_path / f"p{why}.parquet"
        overrides = [
            f"data.path={data}",
            f"export_dir={export}",
            f"out={out}",
            f"why={str(why).lower()}",
            "progress=false",
        ]
        with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
            predict_file(compose("predict", overrides=overrides))
        table = pq.read_table(out)
        assert ("why" in table.column_names) == why
        if why:
            rows = table.column("why").to_pylist()
            with_sentences = [r for r in rows if r]
            assert with_sentences and all(
                abs(sum(w["weight"] for w in r) - 1) < 1e-4 or len(r) == 3 for r in with_sentences
            )
    assert json.loads((tmp_path / "pTrue.json").read_text())["scored"] == len(rows)


def _sentence_labels(data) -> tuple[dict, dict]:
    """Each sentence hash's vector, and the (merchant, label) pairs whose tickets hold it."""
    import orjson

    table = pq.read_table(data, columns=["account_id", "contact_reason", "email_sentence_embeddings"])
    vectors, owners = {}, {}
    for a, label, text in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        for key, v in (orjson.loads(text) if text else {}).items():
            vectors.setdefault(key, v)
            owners.setdefault(key, set()).add((a, label))
    return vectors, owners


def test_on_real_tickets_the_intent_sentence_outweighs_boilerplate(real_trained, tmp_path):
    """A held-out ticket's own intent sentence (one only its label's tickets hold), planted among
    three boilerplate sentences of the data (each in the tickets of 5 labels or more)."""
    import orjson

    export, bodies, data = real_trained
    client = TestClient(create_app(served_copy(export, tmp_path), reload_interval=0.0))
    vectors, owners = _sentence_labels(data)
    filler = sorted((k for k, o in owners.items() if len(o) >= 5), key=lambda k: -len(owners[k]))[:3]
    assert len(filler) == 3
    found = tried = 0
    for body in bodies:
        mine = orjson.loads(body["email_sentence_embeddings"]) if body["email_sentence_embeddings"] else {}
        intent = [k for k in mine if len({label for _, label in owners[k]}) == 1 and k not in filler]
        if not intent:
            continue
        planted = {
            filler[0]: vectors[filler[0]],
            filler[1]: vectors[filler[1]],
            intent[0]: mine[intent[0]],
            filler[2]: vectors[filler[2]],
        }
        answer = client.post("/predict?why=true", json={**body, "email_sentence_embeddings": planted}).json()
        tried += 1
        found += answer["why"][0]["sentence"] == intent[0]
        if tried == 50:
            break
    print(f"intent sentence ranked first: {found} of {tried}")
    assert tried == 50 and found >= 45
