"""The HTTP API: predictions, the fallback, a batch, every error code, the OpenAPI schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import embeddings_json, exported, registry_for, unit_vectors
from fastapi.testclient import TestClient

from tagger.serving.api import create_app
from tagger.serving.limits import configured_limits


@pytest.fixture(scope="module")
def client(trained):
    app = create_app(
        registry_for(exported(trained, "api-onnx")),
        configured_limits(max_sentences=10, max_batch=3, max_body_bytes=200_000),
        docs=True,
    )
    return TestClient(app, raise_server_exceptions=False)


def _vec(n: int = 1) -> str:
    return embeddings_json(unit_vectors(n))


def test_predict_from_a_json_string_and_an_object(client):
    for body in (
        {"account_id": "a", "email_sentence_embeddings": _vec(2)},
        {"account_id": "a", "email_sentence_embeddings": json.loads(_vec(2))},
    ):
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["contact_reason"] in {"Shipping::Tracking", "Refund", "Other"}
        assert 0 <= out["confidence"] <= 1 and len(out["top_k"]) == 3
        assert {t["label"] for t in out["top_k"]} <= {"Shipping::Tracking", "Refund", "Other"}
        assert out["model_version"] and out["fallback"] is False


@pytest.mark.parametrize("empty", [None, "", "{}", {}])
def test_no_embeddings_get_the_fallback(client, empty):
    r = client.post("/predict", json={"account_id": "b", "email_sentence_embeddings": empty})
    assert r.status_code == 200 and r.json()["fallback"] is True
    assert r.json()["contact_reason"] in {"Billing", "Other"}


def test_batch(client):
    body = {
        "tickets": [
            {"account_id": "a", "email_sentence_embeddings": _vec()},
            {"account_id": "c", "email_sentence_embeddings": None},
        ]
    }
    r = client.post("/predict/batch", json=body)
    assert r.status_code == 200 and len(r.json()) == 2
    assert r.json()[1]["contact_reason"] == "General"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"account_id": "a", "email_sentence_embeddings": '{"x": [0.1, '}, 422, "email_sentence_embeddings"),
        (
            {"account_id": "a", "email_sentence_embeddings": json.dumps({"x": [0.1] * 383})},
            422,
            "email_sentence_embeddings",
        ),
        (
            {"account_id": "a", "email_sentence_embeddings": json.dumps({"x": [float("nan")] * 384})},
            422,
            "email_sentence_embeddings",
        ),
        ({"account_id": "a", "email_sentence_embeddings": "[1, 2]"}, 422, "email_sentence_embeddings"),
        ({"email_sentence_embeddings": None}, 422, "account_id"),
        ({"account_id": "nobody", "email_sentence_embeddings": None}, 404, "account_id"),
        (
            {"account_id": "a", "email_sentence_embeddings": embeddings_json(unit_vectors(11))},
            413,
            "email_sentence_embeddings",
        ),
    ],
)
def test_errors_name_the_field(client, body, status, field):
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    fields = [d["field"] for d in detail] if isinstance(detail, list) else [detail["field"]]
    assert any(field in f for f in fields)


def test_batch_and_body_caps(client):
    one = {"account_id": "a", "email_sentence_embeddings": None}
    assert client.post("/predict/batch", json={"tickets": [one] * 4}).status_code == 413
    big = {"account_id": "a", "email_sentence_embeddings": "x" * 300_000}
    assert client.post("/predict", json=big).status_code == 413
    bad = client.post("/predict/batch", json={"tickets": [one, {"account_id": "zz"}]})
    assert bad.status_code == 404 and bad.json()["detail"]["field"] == "tickets[1].account_id"


def test_no_malformed_input_gives_a_server_error(client):
    for raw in (
        b"",
        b"not json",
        b"[]",
        b'{"account_id": 5}',
        b'{"account_id": "a", "email_sentence_embeddings": 5}',
    ):
        r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (raw, r.status_code, r.text)


def test_health_labels_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    labels = client.get("/accounts/a/labels").json()
    assert {x["label"] for x in labels["labels"]} == {"Shipping::Tracking", "Refund", "Other"}
    assert np.isclose(sum(x["prior"] for x in labels["labels"]), 1.0)
    assert client.get("/accounts/nobody/labels").status_code == 404
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/accounts/{account_id}/labels"} <= set(schema["paths"])


def test_a_read_token_guards_every_route_but_liveness(trained):
    read, admin = "r" * 32, "a" * 32
    app = create_app(registry_for(exported(trained, "api-onnx")), admin_token=admin, read_token=read)
    client = TestClient(app, raise_server_exceptions=False)
    body = {"account_id": "a", "email_sentence_embeddings": None}
    assert client.get("/health").json() == {"status": "ok"}  # liveness, no details
    assert client.post("/predict", json=body).status_code == 401
    assert client.get("/accounts/a/labels").status_code == 401
    assert client.get("/accounts/nobody/labels").status_code == 401  # which merchants exist: not said
    assert client.get("/ready").status_code == 401
    for token in (read, admin):
        headers = {"Authorization": f"Bearer {token}"}
        assert client.post("/predict", json=body, headers=headers).status_code == 200
        assert "model_version" in client.get("/health", headers=headers).json()
    assert client.get("/accounts/a/labels", headers={"Authorization": "Bearer wrong"}).status_code == 401
    headers = {"Authorization": f"Bearer {read}"}
    assert client.get("/docs", headers=headers).status_code == 404  # off unless enabled
    assert client.get("/openapi.json", headers=headers).status_code == 404


def test_short_tokens_refuse_to_start(trained, monkeypatch):
    from tagger.serving.api import app_from_config, serve_config

    registry = registry_for(exported(trained, "api-onnx"))
    monkeypatch.setenv("TAGGER_ADMIN_TOKEN", "short")
    with pytest.raises(SystemExit, match="TAGGER_ADMIN_TOKEN has 5 characters; at least 32"):
        app_from_config(serve_config(), registry)
    monkeypatch.setenv("TAGGER_ADMIN_TOKEN", "x" * 32)
    monkeypatch.setenv("TAGGER_READ_TOKEN", "y" * 31)
    with pytest.raises(SystemExit, match="TAGGER_READ_TOKEN"):
        app_from_config(serve_config(), registry)
