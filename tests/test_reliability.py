"""Issue 7 on the toy export: schemathesis finds no 5xx, every fault case behaves, security measures hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FakeEmbedder, embeddings_json, exported, served_copy, unit_vectors
from fastapi.testclient import TestClient

import tagger.serving.__main__ as launcher
from reliability.faults import broken_exports, run_faults
from reliability.fuzz import fuzz_app
from tagger.serving.api import create_app
from tagger.serving.limits import configured_limits
from tagger.serving.registry import Registry

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def export_dir(trained):
    return exported(trained, "rel-onnx")


@pytest.fixture()
def fresh(export_dir, tmp_path):
    return served_copy(export_dir, tmp_path)


def test_schemathesis_finds_no_server_error(fresh):
    app = create_app(
        fresh,
        configured_limits(max_sentences=10, max_batch=3),
        admin_token=TOKEN,
        embed=FakeEmbedder().embed,
        docs=True,
    )
    result = fuzz_app(app, max_examples=25, token=TOKEN, accounts=["a", "b", "c"])
    assert result["requests"] > 200
    assert result["server_errors"] == 0 and not result["failures"], result["failures"]
    ok = sum(s.get("200", 0) for s in result["by_operation"].values())
    assert ok > 10  # the fuzzing reaches past validation


@pytest.fixture(scope="module")
def faults(trained, export_dir):
    """Every fault case, run once (reliability/faults.py), by name."""
    model_dir, data, _ = trained
    return {c["case"]: c for c in run_faults(export_dir, model_dir, data)["cases"]}


@pytest.mark.parametrize("name", [name for name, _ in broken_exports(Path("."))])
def test_a_broken_export_refuses_to_start(faults, name):
    case = faults[f"start-up: {name}"]
    assert case["ok"], case["outcome"]


@pytest.mark.parametrize(
    ("kind", "at_least"),
    [("hot reload: ", 3), ("start-up: no ", 2), ("parquet", 2), ("a required column", 1), ("model save", 1)],
)
def test_other_fault_cases_behave(faults, kind, at_least):
    cases = [c for name, c in faults.items() if name.startswith(kind)]
    assert len(cases) >= at_least, sorted(faults)
    failed = [c for c in cases if not c["ok"]]
    assert not failed, failed


def test_every_fault_case_behaves(faults):
    """The cases no test above names (a new kind added to faults.py) must behave too."""
    assert len(faults) >= 20
    failed = [c for c in faults.values() if not c["ok"]]
    assert not failed, failed


@pytest.fixture()
def client(fresh):
    app = create_app(
        fresh,
        configured_limits(max_body_bytes=5_000, request_timeout_s=0.2),
        admin_token=TOKEN,
        embed=FakeEmbedder().embed,
    )
    return TestClient(app, raise_server_exceptions=False)


def test_a_chunked_body_over_the_cap_is_refused(client):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"]["field"] == "body"
    small = client.post(
        "/predict",
        json={"account_id": "a", "email_sentence_embeddings": embeddings_json(unit_vectors(1))[:10]},
    )
    assert small.status_code == 422  # under the cap: parsed and validated as usual


def test_a_slow_request_times_out_with_503(client, monkeypatch):
    import tagger.serving.onnx_predictor as op

    original = op.OnnxPredictor.predict_arrays

    def slow(self, *args, **kwargs):
        import time

        time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(op.OnnxPredictor, "predict_arrays", slow)
    r = client.post("/predict", json={"account_id": "a", "email_sentence_embeddings": None})
    assert r.status_code == 503 and "0.2 s" in r.json()["detail"]["message"]
    assert "Traceback" not in r.text


def test_update_caps(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/admin/labels", json={"account_id": "a", "add": ["x" * 201]}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "add"


def test_the_token_is_checked_with_hmac_compare_digest(client, monkeypatch):
    """Constant time is hmac.compare_digest's promise; this checks that the gate relies on it."""
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    client.post(
        "/admin/labels", json={"account_id": "a", "add": ["Y"]}, headers={"Authorization": "Bearer nope"}
    )
    assert calls and calls[0] == (b"nope", TOKEN.encode())


def test_no_stack_trace_on_an_unexpected_error(client, monkeypatch):
    import tagger.serving.onnx_predictor as op

    monkeypatch.setattr(op.OnnxPredictor, "predict_arrays", lambda *a, **k: 1 / 0)
    r = client.post("/predict", json={"account_id": "a", "email_sentence_embeddings": None})
    assert r.status_code == 500 and r.json() == {"detail": {"field": None, "message": "internal error"}}


def test_the_launcher_binds_to_loopback_and_refuses_a_broken_export(fresh, monkeypatch):
    calls = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(kw))
    assert launcher.main([f"registry_dir={fresh}", "port=9123"]) == 0
    assert calls["host"] == "127.0.0.1" and calls["port"] == 9123
    registry = Registry(fresh)
    model_onnx = registry.model_dir(registry.served()[1]) / "model.onnx"
    model_onnx.chmod(0o644)
    model_onnx.write_bytes(b"broken")
    with pytest.raises(SystemExit, match=r"refuses to start.*model\.onnx does not match"):
        launcher.main([f"registry_dir={fresh}"])
    with pytest.raises(SystemExit, match=r"refuses to start.*no registry"):
        launcher.main([f"registry_dir={fresh / 'nothing'}"])
    assert launcher.main(["not-a-key-value"]) == 2
    assert launcher.main(["wokers=2"]) == 2  # a misspelt key of conf/serve.yaml


def test_the_reliability_command_reads_its_settings_from_conf(capsys):
    from reliability.__main__ import main as reliability

    assert reliability(["soak", "minuts=1"]) == 2  # a misspelt key of conf/reliability.yaml
    assert reliability(["soak", "--minutes", "1"]) == 2  # flags are gone: key=value
    assert reliability(["nothing"]) == 2 and "fuzz" in capsys.readouterr().out


def test_schemathesis_over_real_sockets_finds_no_server_error(fresh):
    """The same fuzzing against a running server (uvicorn, httptools), the admin routes with a token."""
    import sys

    from bench.servers import free_port, server_process
    from reliability.fuzz import fuzz_url

    token = "fuzz-token-of-at-least-32-characters"
    port = free_port()
    command = [sys.executable, "-m", "tagger.serving", f"registry_dir={fresh}", f"port={port}", "docs=true"]
    with server_process(command, port, {"TAGGER_ADMIN_TOKEN": token}):
        result = fuzz_url(f"http://127.0.0.1:{port}", max_examples=15, token=token, accounts=["a", "b", "c"])
    assert result["requests"] > 100
    assert result["server_errors"] == 0 and not result["failures"], result["failures"]
