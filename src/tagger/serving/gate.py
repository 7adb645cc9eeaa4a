"""What every request passes before the API sees it: one plain ASGI middleware (no per-request
framework objects), in this order:

1. ``/health`` goes straight through: it always answers, whatever the load.
2. ``/admin/`` paths and ``/feedback``: the bearer token is checked before anything of the body is read.
3. The body (chunked or not) is read up to ``max_body_bytes`` (413 past it, a Content-Length over
   the cap refused unread) within ``body_timeout_s`` (408 past it, the connection closed): a client
   that sends its body slowly holds a connection, never an admission place.
4. Admission control: at most ``max_in_flight`` requests in this worker at once; past it a request
   is refused at once with 503 and ``Retry-After`` (counted), so the admitted ones keep their latency
   instead of every request queueing without bound.
5. The request gets ``request_timeout_s`` (503 past it).

Every response carries ``Server-Timing: app;dur=MS``, the time from entering the gate to the
response start (the server's own share of a round trip), and ``X-Request-ID`` (the caller's, else a
new one). Once the response is out, the request is counted and logged (:mod:`tagger.serving.telemetry`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from tagger.serving.limits import Limits
from tagger.serving.request_path import error_body
from tagger.serving.telemetry import Telemetry, request_id

CLIENT_LEFT = 499  # the status counted for a request whose client went away before its answer


@dataclass
class Admission:
    """This worker's admission counters (shown by ``/health``)."""

    in_flight: int = 0
    admitted: int = 0
    refused: int = 0
    slow: int = 0  # bodies not received within body_timeout_s (408)


def refuse_admin(authorization: str | None, admin_token: str | None) -> tuple[int, str] | None:
    """(status, message) when the admin call must be refused; the token is compared in constant time."""
    if not admin_token:
        return 403, "the admin endpoint is disabled (no TAGGER_ADMIN_TOKEN)"
    if not _bearer_is(authorization, admin_token):
        return 401, "missing or wrong bearer token"
    return None


def _authorization(scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return value.decode("latin-1")
    return None


def _bearer_is(authorization: str | None, token: str | None) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def refuse_reader(
    authorization: str | None, read_token: str | None, admin_token: str | None
) -> tuple[int, str] | None:
    """(401, message) when a read token is set and the caller has neither it nor the admin token."""
    if may_read(authorization, read_token, admin_token):
        return None
    return 401, "missing or wrong bearer token (a read token is required)"


def may_read(authorization: str | None, read_token: str | None, admin_token: str | None) -> bool:
    """Whether the caller may see details: anyone without a read token set, else a read or admin token."""
    if read_token is None:
        return True
    return _bearer_is(authorization, read_token) or _bearer_is(authorization, admin_token)


async def send_json(send, status: int, body: bytes, headers: list | None = None) -> None:
    """A complete JSON response through ASGI ``send``."""
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """The ASGI middleware described in the module docstring; ``before`` (if given) runs before
    every admitted request (the label reload check when it is not done in the background);
    ``telemetry`` counts and logs every request."""

    def __init__(
        self,
        app,
        limits: Limits,
        admission: Admission,
        admin_token: str | None = None,
        before=None,
        read_token: str | None = None,
        telemetry: Telemetry | None = None,
    ):
        self.app, self.limits, self.admission, self.telemetry = app, limits, admission, telemetry
        self.admin_token, self.before, self.read_token = admin_token, before, read_token
        self.refusal = error_body(None, f"over capacity: more than {limits.max_in_flight} requests in flight")
        self.retry_after = [(b"retry-after", str(limits.retry_after_s).encode())]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        rid = scope["request_id"] = request_id(scope)
        answered = [None, 0.0]  # status, seconds to the response start

        async def timed_send(message):
            if message["type"] == "http.response.start":
                answered[:] = message["status"], time.perf_counter() - start
                timing = (b"server-timing", f"app;dur={answered[1] * 1000:.3f}".encode())
                message["headers"] = [*message.get("headers", ()), timing, (b"x-request-id", rid.encode())]
            await send(message)

        failed = True
        try:
            await self._gated(scope, receive, timed_send)
            failed = False
        finally:  # after the response went out: what the metrics and the logs add is not in its time
            if self.telemetry is not None:
                # no response started: a failure (the server answers 500), or else the client left
                # before its answer (499, as nginx counts it): not a server error
                status = answered[0] if answered[0] is not None else 500 if failed else CLIENT_LEFT
                self.telemetry.request(scope, rid, status, answered[1])

    async def _gated(self, scope, receive, timed_send):
        if self.before is not None:
            self.before()
        if scope["path"] == "/health":
            return await self.app(scope, receive, timed_send)
        refused = None  # the headers are looked at only where a token is asked for
        if scope["path"].startswith("/admin/") or scope["path"] == "/feedback":
            refused = refuse_admin(_authorization(scope), self.admin_token)
        elif self.read_token is not None:
            refused = refuse_reader(_authorization(scope), self.read_token, self.admin_token)
        if refused:
            self._refused("unauthorized")
            return await send_json(timed_send, refused[0], error_body("authorization", refused[1]))
        # the body before admission, under its own deadline: a client that sends it slowly holds a
        # connection until then, never one of the admitted requests' places
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                body = await _read_body(scope, receive, self.limits.max_body_bytes)
        except TimeoutError:
            self.admission.slow += 1
            self._refused("slow_body")
            message = f"the body was not received within {self.limits.body_timeout_s:g} s"
            return await send_json(timed_send, 408, error_body("body", message), [(b"connection", b"close")])
        if body is None:
            self._refused("too_large")
            detail = error_body("body", f"over {self.limits.max_body_bytes} bytes")
            return await send_json(timed_send, 413, detail, [(b"connection", b"close")])
        admission = self.admission
        if admission.in_flight >= self.limits.max_in_flight:
            admission.refused += 1
            self._refused("over_capacity")
            return await send_json(timed_send, 503, self.refusal, self.retry_after)
        admission.in_flight += 1
        admission.admitted += 1
        try:
            await self._admitted(scope, receive, body, timed_send)
        finally:
            admission.in_flight -= 1

    def _refused(self, reason: str) -> None:
        if self.telemetry is not None:
            self.telemetry.refused(reason)

    async def _admitted(self, scope, receive, body: bytes, send):
        started = []

        async def tracked_send(message):
            started.append(message["type"])
            await send(message)

        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                await self.app(scope, _replay(body, receive), tracked_send)
        except TimeoutError:
            if not started:
                self._refused("timeout")
                message = f"no answer within {self.limits.request_timeout_s:g} s"
                await send_json(send, 503, error_body(None, message))


async def _read_body(scope, receive, max_bytes: int) -> bytes | None:
    """The whole body, or None past ``max_bytes`` (a declared Content-Length over it: unread)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_bytes:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():  # the body once, then the server's own messages (a disconnect)
        return pending.pop() if pending else await receive()

    return replayed
