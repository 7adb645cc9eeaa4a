"""Records written off the request path: a request appends to a bounded buffer and goes on; one
background thread writes what gathered every ``flush_s`` seconds. A record that finds the buffer
full is dropped and counted, never waited for: a slow disk must not slow an answer."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class BoundedSink:
    """``put(record)`` from any thread, at most ``capacity`` records waiting; ``write(records)`` runs
    in the sink's own thread (named ``name``). ``on_drop()`` is called for each dropped record."""

    def __init__(
        self,
        write: Callable[[list[Any]], None],
        capacity: int,
        flush_s: float,
        name: str,
        on_drop: Callable[[], None] | None = None,
    ):
        self._write, self.capacity, self.flush_s = write, int(capacity), float(flush_s)
        self._on_drop = on_drop
        self._pending: deque = deque()
        self.dropped = self.written = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, record: Any) -> bool:
        """Queue ``record`` for writing; False (and counted) when the buffer is full."""
        if len(self._pending) >= self.capacity:  # deque's own maxlen would drop silently
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return False
        self._pending.append(record)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> None:
        """Write what is waiting now (the sink's thread does this every ``flush_s``)."""
        pending, batch = self._pending, []
        while pending:
            batch.append(pending.popleft())
        if not batch:
            return
        try:
            self._write(batch)
            self.written += len(batch)
        except Exception:  # a failed write loses those records (counted), never the server
            self.failed += len(batch)
            log.exception("%s: %d records not written", self._thread.name, len(batch))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and write what is left (a graceful shutdown loses nothing queued); a
        write stuck past ``timeout_s`` (a full pipe, a hung disk) leaves the rest counted as dropped
        rather than holding the shutdown."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.dropped += len(self._pending)
            self._pending.clear()
            return
        self.flush()
