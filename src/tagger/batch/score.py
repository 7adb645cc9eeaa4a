"""Score one piece of a ticket parquet file: rows checked and parsed as the ingest does, scored by
the API's :class:`~tagger.serving.onnx_predictor.OnnxPredictor`, answered by the API's
:meth:`~tagger.serving.request_path.RequestScorer.answer_columns`.

A piece comes back as one arrow table of :data:`RESULT_SCHEMA`, one row per input row in file
order: a scored ticket has its answer, a quarantined row its ``field``, ``problem`` and ``detail``
(the ingest's :class:`~tagger.data.validation.RowProblem`). Both engines (in process, Ray actors)
run this same code; the time each step took rides along in the table's metadata.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tagger.data.ingest import (
    EMBEDDINGS,
    duplicate_rows,
    parsed_embeddings,
    read_schema,
    scalar_columns,
    scalar_frame,
)
from tagger.data.validation import RowProblem
from tagger.serving.limits import Limits, configured_limits
from tagger.serving.onnx_predictor import OnnxPredictor
from tagger.serving.prediction_log import PREDICTION_SCHEMA
from tagger.serving.registry import Registry
from tagger.serving.request_path import ANSWER_COLUMNS, RequestScorer

# with why=true: the sentences that decided each answer (the API's ?why=true), else null
WHY_TYPE = pa.list_(pa.struct([("sentence", pa.string()), ("weight", pa.float32())]))
RESULT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        *PREDICTION_SCHEMA,  # the API's prediction log has the same columns
        ("why", WHY_TYPE),
        ("field", pa.string()),
        ("problem", pa.string()),
        ("detail", pa.string()),
    ]
)
READ_BUFFER_BYTES = 1 << 20
PROBLEM_COLUMNS = ("row", "ticket_id", "field", "problem", "detail")
PREDICTION_COLUMNS = tuple(PREDICTION_SCHEMA.names)
# read: parquet decoding; parse: row checks and the embeddings JSON; pad: padded batches; onnx: the
# model; top_k: candidate labels, calibration and ranking; answer: answers as the API gives them
STEPS = ("read", "parse", "pad", "onnx", "top_k", "answer")


@dataclass
class Timings:
    """Seconds spent per step (:data:`STEPS`, and ``write`` in the driver) and tickets counted."""

    seconds: Counter = field(default_factory=Counter)

    def to_json(self) -> bytes:
        return json.dumps(dict(self.seconds)).encode()

    def add(self, table: pa.Table) -> None:
        """Add the timings a result table carries in its metadata."""
        meta = table.schema.metadata or {}
        if b"timings" in meta:
            self.seconds.update(json.loads(meta[b"timings"]))


@dataclass(frozen=True)
class Piece:
    """Row group ``row_group`` of the file, whose first row is row ``first_row`` of the file."""

    row_group: int
    first_row: int


def plan(path: str | os.PathLike) -> list[Piece]:
    """The file's row groups as pieces of work, in file order."""
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(int).tolist() if sizes else []
    return [Piece(i, s) for i, s in enumerate(starts)]


class PieceScorer:
    """Scores pieces of one ticket file with one export: built once per process (a Ray actor: once
    per worker). ``duplicates`` is :func:`~tagger.data.ingest.duplicate_rows` of the whole file, so
    a repeated ticket id is quarantined whichever piece it falls in."""

    def __init__(
        self,
        path: str | os.PathLike,
        export_dir: str | os.PathLike | None = None,
        generation: str | None = None,
        registry_dir: str | os.PathLike | None = None,
        version: str | None = None,
        threads: int = 1,
        batch_rows: int = 2048,
        onnx_batch: int = 64,
        limits: Limits | None = None,
        duplicates: dict[int, int] | None = None,
        why: bool = False,
    ):
        self.path = Path(path)
        self.schema = read_schema(self.path, require_labels=False)
        self.columns = [*scalar_columns(self.schema), EMBEDDINGS]
        if registry_dir is not None:  # the registry's model with its merchants' label changes
            registry = Registry(registry_dir, create=False, threads=threads)
            view, _ = registry.label_view(version)  # loads the model once, with these threads
            self.predictor = registry.model(version).predictor.with_view(view)
            registry.close()
        else:  # an export with the labels it was made with
            self.predictor = OnnxPredictor(export_dir, threads=threads)
        if generation is not None and self.predictor.view.generation != generation:
            raise RuntimeError(
                f"the labels moved to {self.predictor.view.generation} while the run started on "
                f"{generation}: run it again"
            )
        self.answers = RequestScorer(self.predictor, limits or configured_limits())
        self.batch_rows, self.onnx_batch, self.why = batch_rows, onnx_batch, why
        self.duplicates = duplicate_rows(self.path) if duplicates is None else duplicates
        view = self.predictor.view
        self.version = f"{self.predictor.serving['model_version']}/{view.generation}"

    def batches(self, pieces: list[Piece]) -> Iterator[tuple[pa.Table, int, float]]:
        """``(table, first row, seconds it took to read)`` of ``pieces``, ``batch_rows`` rows at a time."""
        # column chunks streamed through a 1 MB buffer instead of read whole: memory stays the same
        # whether the file has 8K-row or 1M-row groups (pyarrow pre-buffers a whole row group)
        parquet = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
        for piece in pieces:
            first_row = piece.first_row
            batches = parquet.iter_batches(
                batch_size=self.batch_rows, row_groups=[piece.row_group], columns=self.columns
            )
            while True:
                started = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                yield pa.Table.from_batches([batch]), first_row, time.perf_counter() - started
                first_row += batch.num_rows

    def score(self, table: pa.Table, first_row: int, read_seconds: float = 0.0) -> pa.Table:
        """The result table of ``table``, rows ``first_row`` on of the file."""
        timings = Timings()
        timings.seconds["read"] += read_seconds
        started = time.perf_counter()
        problems: list[RowProblem] = []
        scalars = table.select([c for c in table.column_names if c != EMBEDDINGS])
        frame = scalar_frame(scalars, self.schema, False, problems, first_row, self.duplicates)
        ids = frame["ticket_id"].fillna("<missing>").to_numpy()
        bad = {p.row for p in problems}
        texts = table.column(EMBEDDINGS).to_pylist()
        keep, vectors, sentence_ids = [], [], []
        for row, keys, v in parsed_embeddings(texts, first_row, ids, bad, problems):
            if keys is not None:
                keep.append(row - first_row)
                vectors.append(v)
                sentence_ids.append(keys)
        timings.seconds["parse"] += time.perf_counter() - started
        accounts = frame["account_id"].to_numpy()[keep].tolist()
        answers = self._answers(accounts, vectors, timings, sentence_ids if self.why else None)
        out = self._table(frame, keep, answers, problems, first_row)
        return out.replace_schema_metadata({"timings": timings.to_json()})

    def _answers(
        self,
        accounts: list[str],
        vectors: list[np.ndarray],
        timings: Timings,
        sentence_ids: list[list[str]] | None = None,
    ) -> dict[str, list]:
        """The answers of tickets ``vectors`` of ``accounts``, in their order (with ``why`` when their
        ``sentence_ids`` are given). They are scored grouped by merchant and length: each ONNX batch
        carries the labels of few merchants, not of all, and pads its tickets to about their own
        length, not to the longest email of the piece."""
        if not accounts:
            return {c: [] for c in ANSWER_COLUMNS} | ({"why": []} if sentence_ids is not None else {})
        predictor = self.predictor
        started = time.perf_counter()
        lengths = np.fromiter((len(v) for v in vectors), np.int64, len(vectors))
        order = np.lexsort((lengths, np.asarray(accounts)))
        grouped = [accounts[i] for i in order]
        lengths = lengths[order]
        offsets = np.zeros(len(order) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        embeddings = np.concatenate([vectors[i] for i in order])
        predictor.timings = Counter()
        k = self.answers.limits.top_k
        pred = predictor.predict_arrays(grouped, embeddings, offsets, k, batch_size=self.onnx_batch)
        inside = predictor.timings
        predictor.timings = None
        timings.seconds.update(inside)
        timings.seconds["top_k"] += time.perf_counter() - started - sum(inside.values())
        started = time.perf_counter()
        ids = None if sentence_ids is None else [sentence_ids[i] for i in order]
        cols = self.answers.answer_columns(pred, grouped, sentence_ids=ids)
        back = np.argsort(order)
        cols = {c: [v[i] for i in back] for c, v in cols.items()}
        timings.seconds["answer"] += time.perf_counter() - started
        return cols

    def _table(
        self, frame, keep: list[int], answers: dict[str, list], problems: list[RowProblem], first_row: int
    ) -> pa.Table:
        """Scored rows and quarantined rows together, in file order."""
        n_ok, n_bad = len(keep), len(problems)
        problems = sorted(problems, key=lambda p: p.row)
        rows = np.concatenate([frame["row"].to_numpy()[keep], [p.row for p in problems]]).astype(np.int64)
        order = np.argsort(rows, kind="stable")
        account = frame["account_id"].astype(object).where(frame["account_id"].notna(), None).to_numpy()
        columns = {
            "row": rows,
            "ticket_id": [*frame["ticket_id"].to_numpy()[keep].tolist(), *(p.ticket_id for p in problems)],
            "account_id": [*account[keep].tolist(), *account[[p.row - first_row for p in problems]].tolist()],
            **{c: [*answers[c], *([None] * n_bad)] for c in ANSWER_COLUMNS},
            "why": [*answers.get("why", [None] * n_ok), *([None] * n_bad)],
            "model_version": [self.version] * n_ok + [None] * n_bad,
            "predicted_at": [datetime.now(UTC)] * n_ok + [None] * n_bad,
            "request_id": [None] * (n_ok + n_bad),
            "field": [None] * n_ok + [p.field for p in problems],
            "problem": [None] * n_ok + [p.problem for p in problems],
            "detail": [None] * n_ok + [p.detail for p in problems],
        }
        return pa.table(columns, schema=RESULT_SCHEMA).take(order)
