"""What the API tells its operators, over real sockets: /metrics (two workers reporting as one), the
JSON request log with request ids, the prediction log, and a graceful shutdown that loses nothing."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest
from conftest import exported, serve, served_copy

from tagger.serving.prediction_log import PREDICTION_SCHEMA, read_prediction_log
from tagger.serving.sinks import BoundedSink


@pytest.fixture(scope="module")
def bodies(trained):
    _, data, _ = trained
    columns = ["ticket_id", "account_id", "email_sentence_embeddings"]
    return pq.read_table(data, columns=columns).to_pylist()[:120]


def _serve(registry, tmp_path, *overrides):
    logs = [f"logs.requests={tmp_path / 'requests.jsonl'}", f"logs.predictions={tmp_path / 'predictions'}"]
    return serve(registry, *logs, "logs.flush_s=0.05", *overrides)


def _samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` in a Prometheus text exposition: labels -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key[len(name) :]] = float(value)
    return out


@pytest.mark.slow
def test_two_workers_report_as_one_and_every_request_is_logged(trained, bodies, tmp_path):
    """Every request counted once in /metrics whichever worker answered it or is scraped; no label
    grows with merchants; each request's id comes back and names one JSON log line; every answer
    is in the prediction log with its ticket id."""
    registry = served_copy(exported(trained, "telemetry-onnx"), tmp_path)
    server, url = _serve(registry, tmp_path, "workers=2")
    with server:
        ids = []
        for i, body in enumerate(bodies[:60]):
            with httpx.Client() as client:  # a fresh connection each time: either worker takes it
                answer = client.post(f"{url}/predict", json=body, headers={"X-Request-ID": f"req-{i}"})
            assert answer.status_code == 200 and answer.headers["x-request-id"] == f"req-{i}"
            ids.append(f"req-{i}")
        batch = httpx.post(f"{url}/predict/batch", json={"tickets": bodies[60:100]})
        assert batch.status_code == 200 and len(batch.headers["x-request-id"]) == 16
        assert httpx.post(f"{url}/predict", content=b"{not json").status_code == 422
        workers = {httpx.get(f"{url}/health").json()["worker"] for _ in range(40)}
        scrapes = [httpx.get(f"{url}/metrics") for _ in range(20)]
    assert len(workers) == 2
    for scrape in scrapes:  # whichever worker answered the scrape, the same totals
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
        requests = _samples(scrape.text, "tagger_requests_total")
        assert requests['{route="predict",status="200"}'] == 60
        assert requests['{route="predict_batch",status="200"}'] == 1
        assert requests['{route="predict",status="422"}'] == 1
        answers = _samples(scrape.text, "tagger_answers_total")
        assert sum(answers.values()) == 100
        assert _samples(scrape.text, "tagger_answer_confidence_count")[""] == 100
        (version,) = [k for k, v in _samples(scrape.text, "tagger_model_info").items() if v == 1]
        assert "model_version=" in version
    label_values = set(re.findall(r'="([^"]*)"', scrapes[-1].text))
    assert label_values and not label_values & {b["account_id"] for b in bodies}  # none per merchant
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    predicted = {x["request_id"]: x for x in lines if x["route"] == "predict" and x["status"] == 200}
    assert set(ids) <= set(predicted)
    first = predicted["req-0"]
    assert first["account"] == bodies[0]["account_id"] and first["tickets"] == 1
    assert first["duration_ms"] > 0 and first["model_version"].startswith(version.split('"')[1])
    log = read_prediction_log(tmp_path / "predictions")
    assert log.schema == PREDICTION_SCHEMA and log.num_rows == 100
    assert set(log.column("ticket_id").to_pylist()) == {b["ticket_id"] for b in bodies[:100]}
    assert set(ids) <= set(log.column("request_id").to_pylist())


@pytest.mark.slow
def test_a_graceful_shutdown_finishes_requests_in_flight_and_writes_the_logs(trained, bodies, tmp_path):
    """SIGTERM while batches are being scored: every request that was sent before it is answered
    200, and every answer given is in the prediction log once the server has exited."""
    registry = served_copy(exported(trained, "telemetry-onnx"), tmp_path)
    server, url = _serve(registry, tmp_path, "logs.rotate_s=3600")
    batch = {"tickets": bodies * 2}  # 240 tickets: long enough to be in flight
    statuses, answered = [], []

    def send():
        try:
            with httpx.Client(timeout=30) as client:
                answer = client.post(f"{url}/predict/batch", json=batch)
            statuses.append(answer.status_code)
            answered.append(len(answer.json()))
        except httpx.TransportError:  # sent after the listener closed: never admitted
            statuses.append("not connected")

    with server as process:
        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["in_flight"] < 1:  # a batch is being scored now
            assert time.monotonic() < deadline, "no request in flight"
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it once drained
    assert answered and set(statuses) <= {200, "not connected"}, statuses
    log = read_prediction_log(tmp_path / "predictions")
    assert log.num_rows == sum(answered)  # the open file closed and renamed at shutdown
    assert not list((tmp_path / "predictions").glob("*.partial"))


def test_a_full_log_buffer_drops_and_counts_instead_of_waiting():
    """put() never blocks: past the capacity a record is dropped and counted; close() writes the rest."""
    written, release = [], threading.Event()

    def slow_write(records):
        release.wait(5)
        written.extend(records)

    dropped = []
    sink = BoundedSink(
        slow_write, capacity=3, flush_s=0.01, name="test-log", on_drop=lambda: dropped.append(1)
    )
    sink.put("first")
    time.sleep(0.05)  # the thread has taken "first" and waits inside slow_write
    started = time.perf_counter()
    kept = [sink.put(i) for i in range(10)]
    assert time.perf_counter() - started < 0.05
    assert kept == [True] * 3 + [False] * 7 and sink.dropped == 7 and len(dropped) == 7
    release.set()
    sink.close()
    assert written == ["first", 0, 1, 2]


def test_the_grafana_dashboard_queries_only_metrics_the_api_exports():
    """Every metric a panel of docs/grafana/tagger-dashboard.json queries is one the API defines."""
    from tagger.paths import PROJECT_ROOT
    from tagger.serving.telemetry import exposition

    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    families = {family(n) for n in re.findall(r"^# TYPE (\S+) ", exposition().decode(), re.MULTILINE)}
    dashboard = json.loads((PROJECT_ROOT / "docs/grafana/tagger-dashboard.json").read_text())
    queried = {
        family(name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"tagger_[a-z_]+", target["expr"])
    }
    assert len(dashboard["panels"]) >= 8 and queried
    assert queried <= families, queried - families


def test_a_request_left_unanswered_counts_as_the_client_leaving_and_a_failure_as_500():
    import asyncio
    import contextlib

    from tagger.serving.gate import CLIENT_LEFT, Admission, Gate
    from tagger.serving.limits import configured_limits

    seen = []

    class Recorder:
        def request(self, scope, rid, status, seconds):
            seen.append(status)

    async def client_left(scope, receive, send):  # the client went away: nothing is sent
        return None

    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    scope = {
        "type": "http",
        "path": "/accounts/a/labels",
        "method": "GET",
        "headers": [],
        "query_string": b"",
    }
    for app in (client_left, broken):
        gate = Gate(app, configured_limits(), Admission(), telemetry=Recorder())
        with contextlib.suppress(RuntimeError):  # the bug reaches uvicorn, which answers 500
            asyncio.run(gate(dict(scope), receive, send))
    assert seen == [CLIENT_LEFT, 500]
