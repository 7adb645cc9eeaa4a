"""A deadline on a request's headers: uvicorn has none, so a client that opens a connection and sends
its headers a byte at a time (or nothing at all) would hold the connection for as long as it likes.

:class:`HeaderDeadline` is uvicorn's httptools protocol with one timer: armed when a connection opens
and when a request's first byte arrives, cancelled when its headers are complete; when it fires the
client gets ``408`` and the connection is closed. The body has its own deadline in the gate
(``limits.body_timeout_s``); an idle kept-alive connection, uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = b'{"detail":{"field":null,"message":"request headers not received in time"}}'
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_BODY) + _BODY
)


class HeaderDeadline(HttpToolsProtocol):
    """httptools with ``timeout`` seconds for a request's headers (set from conf/serve.yaml
    ``header_timeout_s`` in each server process; 0: no deadline)."""

    timeout: float = 5.0
    timed_out: int = 0  # connections closed this way, in this process

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None and self.timeout > 0:
            self._deadline = self.loop.call_later(self.timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request waits on ours, not on the client: its clock starts again
            self._arm()
            return
        type(self).timed_out += 1
        self.transport.write(TIMED_OUT)
        self.transport.close()
