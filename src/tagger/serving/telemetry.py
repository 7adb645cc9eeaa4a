"""What the API tells its operators: Prometheus metrics (``GET /metrics``), one JSON log line per
request, and the prediction log (:mod:`tagger.serving.prediction_log`).

Metrics use prometheus-client. ``python -m tagger.serving workers=N`` (N > 1) points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker starts: each worker writes its
figures there and any worker's ``/metrics`` reads them all, so the workers report as one. No label
takes values that grow with the number of merchants (per-merchant figures are in the prediction
log): routes, statuses, refusal reasons and answer outcomes are fixed sets, and the model version
one value per promotion.

Everything a request adds here happens after its response has been sent: the metrics, the log line
(formatted and written by a background thread) and the prediction log's rows.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from tagger.serving.prediction_log import PredictionLog
from tagger.serving.sinks import BoundedSink

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = {
    "/predict": "predict",
    "/predict/batch": "predict_batch",
    "/health": "health",
    "/ready": "ready",
    "/feedback": "feedback",
    "/metrics": "metrics",
}
MAX_REQUEST_ID = 128  # characters of a caller's X-Request-ID (longer or unprintable: a new one is made)

REQUESTS = Counter("tagger_requests", "Requests answered, by route and status", ["route", "status"])
LATENCY = Histogram(
    "tagger_request_duration_seconds",
    "From the gate to the response start (the server's own time), by route",
    ["route"],
    buckets=(0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0),
)
REFUSALS = Counter(
    "tagger_refusals",
    "Requests refused before scoring: over_capacity (503), too_large (413), slow_body (408), "
    "timeout (503), unauthorized (401/403)",
    ["reason"],
)
ANSWERS = Counter("tagger_answers", "Tickets answered, by outcome: leaf, parent, abstained", ["outcome"])
FALLBACKS = Counter("tagger_fallback_answers", "Tickets without embeddings, scored from the label prior")
CONFIDENCE = Histogram(
    "tagger_answer_confidence",
    "Confidence of each ticket's top answer",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
MODEL = Gauge(
    "tagger_model_info", "1 for the model version served", ["model_version"], multiprocess_mode="livemax"
)
PROMOTION = Gauge("tagger_promotion", "The registry promotion served", multiprocess_mode="livemax")
GENERATION = Gauge("tagger_label_generation", "The label generation served", multiprocess_mode="livemax")
QUARANTINED = Gauge(
    "tagger_quarantined_merchants", "Merchants kept on their last good labels", multiprocess_mode="livemax"
)
RELOAD_FAILURES = Counter(
    "tagger_reload_failures", "Looks at the registry that failed (the model served stays)"
)
RELOAD_FAILING = Gauge(
    "tagger_reload_failing", "1 while the last look at the registry failed", multiprocess_mode="livemax"
)
REVIEWS = Counter(
    "tagger_feedback_reviews",
    "Agents' reviews stored by POST /feedback: correction or confirmation",
    ["kind"],
)
DROPPED = Counter("tagger_log_dropped", "Log records dropped because the log's buffer was full", ["log"])


def _count_answers(outcomes: dict, answers: list[dict]) -> None:
    fallbacks = 0
    for answer in answers:
        if answer["abstained"]:
            outcomes["abstained"].inc()
        else:
            outcomes["parent" if answer["answer_level"] else "leaf"].inc()
        fallbacks += answer["fallback"]
        CONFIDENCE.observe(answer["confidence"])
    if fallbacks:
        FALLBACKS.inc(fallbacks)


def exposition() -> bytes:
    """The metrics in the Prometheus text format: every worker's, in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def route_of(path: str) -> str:
    """The metric label of a request path (a fixed set: an account id never becomes a label)."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    if path.startswith("/admin/"):
        return "admin"
    return "labels" if path.startswith("/accounts/") else "other"


def request_id(scope) -> str:
    """The caller's ``X-Request-ID`` when it is short and printable, else a new random one."""
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            if len(value) <= MAX_REQUEST_ID and value.isascii() and value.decode().isprintable() and value:
                return value.decode()
            break
    return secrets.token_hex(8)


class Telemetry:
    """One server process's metrics and logs; ``version()`` says the model version served now.
    ``request_log``: the JSON request lines' sink (:func:`request_log`; None: none);
    ``prediction_log``: the answers' log (None: none kept); ``count``: update the request and answer
    metrics (the served model's gauges are always kept)."""

    def __init__(
        self,
        version: Callable[[], str],
        request_log: BoundedSink | None = None,
        prediction_log: PredictionLog | None = None,
        count: bool = True,
    ):
        self.version, self.request_log, self.prediction_log = version, request_log, prediction_log
        self.count = count
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._outcomes = {
            "leaf": ANSWERS.labels("leaf"),
            "parent": ANSWERS.labels("parent"),
            "abstained": ANSWERS.labels("abstained"),
        }
        self._served: tuple | None = None
        self._reload_failures = 0

    def _child(self, route: str, status: int):
        key = (route, status)
        child = self._children.get(key)
        if child is None:  # .labels() takes a lock and builds a key: once per (route, status)
            child = self._children[key] = (REQUESTS.labels(route, str(status)), LATENCY.labels(route))
        return child

    def request(self, scope, rid: str, status: int, seconds: float) -> None:
        """A request answered with ``status`` after ``seconds`` (to the response start)."""
        route = route_of(scope["path"])
        if self.count:
            count, latency = self._child(route, status)
            count.inc()
            latency.observe(seconds)
        if self.request_log is not None:
            info = scope.get("tagger") or {}
            self.request_log.put(
                (
                    time.time(),
                    rid,
                    scope["method"],
                    route,
                    status,
                    seconds,
                    info.get("account"),
                    info.get("tickets"),
                    info.get("model_version") or self.version(),
                )
            )

    def refused(self, reason: str) -> None:
        """A refusal the gate made before scoring (:data:`REFUSALS`' reasons)."""
        if self.count:
            REFUSALS.labels(reason).inc()

    def answered(self, scope, tickets: list, answers: list[dict]) -> None:
        """A prediction request's answers: the outcome counts, the confidence histogram, the
        prediction log; ``scope`` keeps the account and model version for the request's log line."""
        if self.count:
            _count_answers(self._outcomes, answers)
        accounts = {t.account_id for t in tickets}
        scope["tagger"] = {
            "account": next(iter(accounts)) if len(accounts) == 1 else None,
            "tickets": len(tickets),
            "model_version": answers[0]["model_version"] if answers else None,
        }
        if self.prediction_log is not None and answers:
            ids = [(ticket.account_id, ticket.ticket_id) for ticket in tickets]  # not the embeddings
            self.prediction_log.record(scope.get("request_id"), ids, answers)

    def served(self, live) -> None:
        """The model, label generation, quarantine and reload state ``live`` serves now (cheap: called
        after every look at the registry)."""
        current = live.current
        state = (current.version, current.promotion, current.seq, len(live.quarantined))
        if state != self._served:
            if self._served is not None and self._served[0] != current.version:
                MODEL.labels(self._served[0]).set(0)
            MODEL.labels(current.version).set(1)
            PROMOTION.set(current.promotion)
            GENERATION.set(current.seq)
            QUARANTINED.set(len(live.quarantined))
            self._served = state
        failures = live.reload_failures
        if failures > self._reload_failures:
            RELOAD_FAILURES.inc(failures - self._reload_failures)
            self._reload_failures = failures
        RELOAD_FAILING.set(0 if live.last_reload_error is None else 1)

    def close(self) -> None:
        """Write what the logs hold (a graceful shutdown) and leave the multiprocess files' live set."""
        for log in (self.request_log, self.prediction_log):
            if log is not None:
                log.close()
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())


def request_lines(records: list[tuple], stream) -> None:
    """Write request records as JSON lines (one object per request) to a binary ``stream``."""
    out = []
    for at, rid, method, route, status, seconds, account, tickets, version in records:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z",
            "level": "info" if status < 500 else "error",
            "event": "request",
            "request_id": rid,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "account": account,
            "tickets": tickets,
            "model_version": version,
            "pid": os.getpid(),
        }
        out.append(orjson.dumps(line))
    stream.write(b"\n".join(out) + b"\n")
    stream.flush()


def request_log(path: str | None, capacity: int, flush_s: float) -> BoundedSink:
    """The JSON request log: lines appended to the file at ``path`` (None: stderr)."""
    if path is None:
        stream = sys.stderr.buffer
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "ab")  # noqa: SIM115 (open for the server's life; closed with the process)
    on_drop = DROPPED.labels("request").inc
    return BoundedSink(
        lambda records: request_lines(records, stream), capacity, flush_s, "request-log", on_drop
    )
