"""The serving request path: same answers as the predictor, Server-Timing, admission control, and
real server processes (``python -m tagger.serving``) with two workers and under overload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time

import httpx
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from conftest import TOKEN, exported, registry_for, served_copy
from fastapi.testclient import TestClient

from bench.load import http_request, run_load
from bench.servers import free_port, server_process
from tagger.data.embeddings_json import parse_embeddings
from tagger.data.tickets import Tickets
from tagger.serving.api import create_app
from tagger.serving.limits import configured_limits
from tagger.serving.onnx_predictor import OnnxPredictor


@pytest.fixture(scope="module")
def base_export(trained):
    return exported(trained, "serving-onnx")


@pytest.fixture()
def export_dir(base_export, tmp_path):
    return served_copy(base_export, tmp_path)


@pytest.fixture(scope="module")
def bodies(trained):
    """Every ticket of the toy file as a request body (the embeddings field as in the parquet)."""
    _, data, _ = trained
    table = pq.read_table(data, columns=["account_id", "email_sentence_embeddings"]).to_pylist()
    return table[:300]


def test_the_request_path_gives_the_predictors_answers(base_export, bodies):
    """Each answer of /predict equals what OnnxPredictor.predict gives the same ticket through a
    Tickets frame (the backtest's path), for the embeddings as a string and as an object."""
    client = TestClient(create_app(registry_for(base_export)), raise_server_exceptions=False)
    predictor = OnnxPredictor(base_export)
    serving = predictor.serving
    thresholds = serving["thresholds"]
    known = [b for b in bodies if predictor.view.labels_of(b["account_id"]) is not None]
    vectors = [
        parse_embeddings(b["email_sentence_embeddings"])[1]
        if b["email_sentence_embeddings"]
        else np.zeros((0, 384), np.float32)
        for b in known
    ]
    assert len(known) > 100 and any(len(v) == 0 for v in vectors)
    for body, v in zip(known, vectors, strict=True):
        # one ticket a frame, as a request scores it (a batch pads differently: last-bit float noise)
        expected = predictor.predict(Tickets.from_vectors([body["account_id"]], [v]), k=3)
        text = body["email_sentence_embeddings"]
        as_object = {**body, "email_sentence_embeddings": json.loads(text) if text else None}
        account = body["account_id"]
        leaf = thresholds["per_account"]["0.95"].get(account, thresholds["global"]["0.95"])
        parent = thresholds["parent"]["per_account"]["0.95"].get(
            account, thresholds["parent"]["global"]["0.95"]
        )
        ranked = zip(expected.top_rows[0], expected.top_probs[0], strict=True)
        top = [(expected.names[r], float(p)) for r, p in ranked if r >= 0]
        confidence, parent_confidence = float(expected.confidence[0]), float(expected.parent_confidence[0])
        model_abstained = bool(expected.abstained[0])
        at_leaf = not model_abstained and leaf is not None and confidence >= leaf
        at_parent = not (at_leaf or model_abstained) and parent is not None and parent_confidence >= parent
        for sent in (body, as_object):
            got = client.post("/predict", json=sent).json()
            assert [(t["label"], t["score"]) for t in got["top_k"]] == top
            assert got["fallback"] == bool(expected.fallback[0])
            assert got["abstained"] == (not (at_leaf or at_parent))
            assert got["answer_level"] == int(at_parent)
            if at_parent:  # the leaf unsure, its parent sure enough: the parent, with its summed confidence
                assert got["contact_reason"] == expected.parents[0]
                assert got["confidence"] == parent_confidence
            else:
                assert got["contact_reason"] == (top[0][0] if top and not model_abstained else None)
                assert got["confidence"] == confidence


def test_every_answer_says_how_long_the_server_took(base_export):
    client = TestClient(create_app(registry_for(base_export)), raise_server_exceptions=False)
    for r in (
        client.post("/predict", json={"account_id": "a", "email_sentence_embeddings": None}),
        client.get("/health"),
        client.post("/predict", content=b"not json"),
    ):
        name, _, duration = r.headers["server-timing"].partition(";dur=")
        assert name == "app" and 0 < float(duration) < 10_000


def test_past_max_in_flight_a_request_is_refused_at_once_with_retry_after(base_export, monkeypatch):
    import tagger.serving.onnx_predictor as op

    original = op.OnnxPredictor.predict_arrays

    def slow(self, *args, **kwargs):
        time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(op.OnnxPredictor, "predict_arrays", slow)
    app = create_app(registry_for(base_export), configured_limits(max_in_flight=1, retry_after_s=2))
    body = {"account_id": "a", "email_sentence_embeddings": None}

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/predict", json=body))
            await asyncio.sleep(0.1)  # the first one is being scored
            started = time.perf_counter()
            refused = await client.post("/predict", json=body)
            refusal_s = time.perf_counter() - started
            health = await client.get("/health")
            return await first, refused, refusal_s, health

    first, refused, refusal_s, health = asyncio.run(burst())
    assert first.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert "over capacity" in refused.json()["detail"]["message"]
    assert refusal_s < 0.2  # at once, not after the request in flight
    assert health.status_code == 200 and health.json()["refused"] == 1 and health.json()["in_flight"] == 1


def _serve(export_dir, *overrides: str, **env):
    port = free_port()
    command = [sys.executable, "-m", "tagger.serving", f"registry_dir={export_dir}", f"port={port}"]
    command += list(overrides)
    return server_process(command, port, env), port


def test_a_real_server_with_two_workers_takes_label_updates_in_every_worker(export_dir):
    """``python -m tagger.serving workers=2``: both worker processes answer; label updates sent at
    the same time (each lands in whichever worker accepts it) are all kept, and every worker serves
    the last generation within a second."""
    server, port = _serve(export_dir, "workers=2", "reload_interval=0.1", TAGGER_ADMIN_TOKEN=TOKEN)
    url = f"http://127.0.0.1:{port}"
    with server as process:
        workers = set()
        for _ in range(200):  # a fresh connection each time: the kernel hands it to either worker
            workers.add(httpx.get(f"{url}/health").json()["worker"])
            if len(workers) == 2:
                break
        assert len(workers) == 2
        updates = [{"account_id": a, "add": [f"New reason {a}"]} for a in ("a", "b", "c")]
        answers = []

        def send(update):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            answers.append(httpx.post(f"{url}/admin/labels", json=update, headers=headers, timeout=60))

        threads = [threading.Thread(target=send, args=(u,)) for u in updates]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
        last = max(r.json()["generation"] for r in answers)
        deadline, current = time.monotonic() + 1.0, {}
        while time.monotonic() < deadline and not (
            set(current) == workers and set(current.values()) == {last}
        ):
            health = httpx.get(f"{url}/health").json()
            current[health["worker"]] = health["label_generation"]
        assert set(current) == workers and set(current.values()) == {last}, current
        for account in ("a", "b", "c"):
            labels = {x["label"] for x in httpx.get(f"{url}/accounts/{account}/labels").json()["labels"]}
            assert f"New reason {account}" in labels
    assert process.poll() is not None  # stopped with its workers


def test_a_real_server_under_overload_refuses_the_excess_and_keeps_serving(export_dir, bodies):
    """64 connections sending as fast as they can against 4 admitted requests: the excess gets 503
    with Retry-After, nothing else fails, /health answers throughout, and the process stops cleanly."""
    server, port = _serve(export_dir, "limits.max_in_flight=4")
    requests = [http_request("/predict", orjson.dumps(b)) for b in bodies[:100]]
    with server:
        health = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                health.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            result = run_load(port, requests, None, 3.0, connections=64)
        finally:
            stop.set()
            watcher.join()
        summary = result.summary()
        after = httpx.get(f"http://127.0.0.1:{port}/health").json()
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json=bodies[0])
        assert r.status_code == 200
    assert set(summary["statuses"]) == {"200", "503"}, summary["statuses"]
    assert summary["connection_errors"] == 0 and summary["ok"]["n"] > 100
    assert after["refused"] == summary["statuses"]["503"] and after["in_flight"] == 0
    assert health and set(health) == {200}


def test_slow_clients_hold_no_admission_place_and_get_408(export_dir, bodies):
    """100 clients that send their body a byte at a time: a normal client's 200 requests meanwhile
    are all answered (p99 under 50 ms), and each slow one gets 408 once body_timeout_s runs out."""
    import socket

    server, port = _serve(export_dir, "limits.body_timeout_s=3", "limits.max_in_flight=8")
    body = orjson.dumps(bodies[1])
    head = (
        f"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    with server:
        slow = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head)
            slow.append(s)
        stop = threading.Event()

        def trickle() -> None:  # one byte a client every 0.5 s
            sent = 0
            while not stop.wait(0.5) and sent < len(body) - 1:
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.send(body[sent : sent + 1])
                sent += 1

        t = threading.Thread(target=trickle)
        t.start()
        try:
            times, codes = [], []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for i in range(200):
                    started = time.perf_counter()
                    r = client.post("/predict", content=orjson.dumps(bodies[i % len(bodies)]))
                    times.append(time.perf_counter() - started)
                    codes.append(r.status_code)
            answers = []
            for s in slow:  # each slow client is answered 408 once its body deadline passed
                s.settimeout(10)
                answers.append(s.recv(64))
        finally:
            stop.set()
            t.join()
            for s in slow:
                s.close()
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    assert codes == [200] * 200
    assert float(np.percentile(times, 99)) < 0.05, np.percentile(times, 99)
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:20] for a in answers}
    assert health["slow_bodies"] == 100


def test_slow_headers_get_408_and_leave_the_server_serving(export_dir, bodies):
    """Clients that open a connection and send their headers a byte at a time, or nothing: each gets
    408 and a closed connection once header_timeout_s runs out, two workers alike, and a normal
    client is answered meanwhile."""
    import socket

    server, port = _serve(export_dir, "header_timeout_s=1", "workers=2")
    with server:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        trickling = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        started = time.perf_counter()
        for s in trickling:
            s.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json=bodies[0])
        assert r.status_code == 200
        answers = []
        for s in silent + trickling:
            s.settimeout(10)
            answers.append(s.recv(256))
            assert s.recv(256) == b""  # closed
            s.close()
        waited = time.perf_counter() - started
        health = [httpx.get(f"http://127.0.0.1:{port}/health").json() for _ in range(20)]
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:20] for a in answers}
    assert waited < 5
    assert max(h["slow_headers"] for h in health) > 0


def test_a_request_may_ask_for_another_precision_target(base_export, bodies):
    """``?precision_target=`` picks the thresholds of another target the model has (a lower promise
    answers at least as many tickets); one it has no thresholds for is a 422 naming the field."""
    client = TestClient(create_app(registry_for(base_export)), raise_server_exceptions=False)
    predictor = OnnxPredictor(base_export)
    targets = predictor.serving["thresholds"]["targets"]
    assert 0.8 in targets and 0.95 in targets
    known = [b for b in bodies if predictor.view.labels_of(b["account_id"]) is not None][:80]
    answered = {}
    for target in ("0.8", "0.95"):
        got = client.post(f"/predict/batch?precision_target={target}", json={"tickets": known})
        assert got.status_code == 200, got.text
        answered[target] = sum(not a["abstained"] for a in got.json())
    assert answered["0.8"] >= answered["0.95"]
    default = client.post("/predict/batch", json={"tickets": known}).json()
    assert sum(not a["abstained"] for a in default) == answered["0.95"]  # conf/serve.yaml's target
    for bad in ("0.93", "abc", "1e999"):
        got = client.post(f"/predict?precision_target={bad}", json=known[0])
        assert got.status_code == 422 and got.json()["detail"]["field"] == "precision_target", got.text
