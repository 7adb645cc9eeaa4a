"""The prediction log: every answer the API gives, one row per ticket, in rotating parquet files.

A request appends its answers to a bounded buffer (:class:`~tagger.serving.sinks.BoundedSink`) and
goes on; the log's thread writes them to ``predictions-<UTC time>-<pid>-<n>.parquet.partial``, one
row group per flush, and closes and renames the file to ``.parquet`` once it holds ``rotate_rows``
rows or is ``rotate_s`` old (checked at each write), and at shutdown. A reader takes the
``.parquet`` files only: each is complete. A crash loses the open file's rows (at most
``rotate_s`` seconds of answers); a full buffer drops rows and counts them
(``tagger_log_dropped_total{log="prediction"}``). The schema is :data:`PREDICTION_SCHEMA`, the same
as predict.py's output, so a drift report reads either.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tagger.serving.sinks import BoundedSink

PREDICTION_SCHEMA = pa.schema(
    [
        ("ticket_id", pa.string()),
        ("account_id", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float32()),
        ("answer_level", pa.int8()),
        ("top_labels", pa.list_(pa.string())),
        ("top_scores", pa.list_(pa.float32())),
        ("abstained", pa.bool_()),
        ("fallback", pa.bool_()),
        ("model_version", pa.string()),
        ("predicted_at", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
    ]
)
PARTIAL = ".partial"


def answer_rows(records: list[tuple]) -> pa.Table:
    """The log's rows of ``(time, request_id, [(account_id, ticket_id)], answers)`` records."""
    cols: dict[str, list] = {name: [] for name in PREDICTION_SCHEMA.names}
    for at, request_id, tickets, answers in records:
        when = datetime.fromtimestamp(at, UTC)
        for (account_id, ticket_id), answer in zip(tickets, answers, strict=True):
            top = answer["top_k"]
            cols["ticket_id"].append(ticket_id)
            cols["account_id"].append(account_id)
            cols["label"].append(answer["contact_reason"])
            cols["confidence"].append(answer["confidence"])
            cols["answer_level"].append(answer["answer_level"])
            cols["top_labels"].append([t["label"] for t in top])
            cols["top_scores"].append([t["score"] for t in top])
            cols["abstained"].append(answer["abstained"])
            cols["fallback"].append(answer["fallback"])
            cols["model_version"].append(answer["model_version"])
            cols["predicted_at"].append(when)
            cols["request_id"].append(request_id)
    return pa.table(cols, schema=PREDICTION_SCHEMA)


class PredictionLog:
    """Rotating parquet files of answers under ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        rotate_rows: int,
        rotate_s: float,
        capacity: int,
        flush_s: float,
        on_drop: Callable[[], None] | None = None,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rotate_rows, self.rotate_s = int(rotate_rows), float(rotate_s)
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._rows, self._opened, self._seq = 0, 0.0, itertools.count()
        self.sink = BoundedSink(self._write, capacity, flush_s, "prediction-log", on_drop)

    def record(
        self, request_id: str | None, tickets: list[tuple[str, str | None]], answers: list[dict]
    ) -> bool:
        """Log one request's answers, ``tickets`` their (account_id, ticket_id) pairs (the request
        path: one append, no I/O); False when dropped."""
        return self.sink.put((time.time(), request_id, tickets, answers))

    def _write(self, records: list[tuple]) -> None:
        table = answer_rows(records)
        if self._writer is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self._path = self.directory / f"predictions-{stamp}-{os.getpid()}-{next(self._seq):04d}.parquet"
            self._writer = pq.ParquetWriter(f"{self._path}{PARTIAL}", PREDICTION_SCHEMA, compression="zstd")
            self._rows, self._opened = 0, time.monotonic()
        self._writer.write_table(table)
        self._rows += table.num_rows
        if self._rows >= self.rotate_rows or time.monotonic() - self._opened >= self.rotate_s:
            self._finish()

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        os.replace(f"{self._path}{PARTIAL}", self._path)  # readers see complete files only
        self._writer = None

    def close(self) -> None:
        """Write what is queued and close the open file (a graceful shutdown)."""
        self.sink.close()
        self._finish()


def read_prediction_log(path: str | os.PathLike) -> pa.Table:
    """Every complete file of a prediction log directory (or one parquet file), in one table."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        return PREDICTION_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=PREDICTION_SCHEMA) for f in files])
