"""Ingest a ticket parquet file (schema in docs/data.md) into :class:`Tickets`.

Scalar columns are read whole (they are small); the embeddings column is streamed in
record batches and parsed row by row with orjson straight into a float32 file, so memory
grows with the parsed vectors, not with the JSON text. Every problem row is quarantined and
named in the :class:`ValidationReport`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tagger.data.embeddings_json import EMBEDDING_DIM, EmbeddingError, is_empty, parse_embeddings
from tagger.data.labels import canonical_labels, label_levels
from tagger.data.validation import RowProblem, SchemaError, ValidationReport

EMBEDDINGS = "email_sentence_embeddings"
REQUIRED_COLUMNS = ("account_id", "ticket_id", "unix_timestamp", EMBEDDINGS)
LABEL_COLUMN = "contact_reason"
OPTIONAL_COLUMNS = ("channel", "raw_body", "processed_body")
BATCH_ROWS = 4096


def read_schema(path: str | os.PathLike, require_labels: bool = True) -> pa.Schema:
    """The file's arrow schema; raises :class:`SchemaError` naming any missing required column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ticket file not found: {path}")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(f"{path} is not a readable parquet file: {err}") from err
    required = (*REQUIRED_COLUMNS, LABEL_COLUMN) if require_labels else REQUIRED_COLUMNS
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise SchemaError(
            f"{path}: missing required column(s) {', '.join(missing)}; the file has {', '.join(schema.names)}"
        )
    return schema


def _string_column(values: pd.Series, name: str) -> pd.Series:
    """Strings as given; ints (``raw_body`` hashes, numeric ids) become their decimal text."""
    if pd.api.types.is_float_dtype(values):
        whole = values.dropna()
        if (whole == np.floor(whole)).all():
            values = values.astype("Int64")
    out = values.astype("string")
    out.name = name
    return out


def _timestamps(values: pd.Series, field: pa.Field) -> pd.Series:
    """Seconds since 1970 as float64; an arrow timestamp column is converted, text is parsed."""
    if pa.types.is_timestamp(field.type) or pa.types.is_date(field.type):
        stamp = pd.to_datetime(values, utc=True)
        return (stamp - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _scalar_frame(
    path: Path, schema: pa.Schema, require_labels: bool, problems: list[RowProblem]
) -> pd.DataFrame:
    table = pq.read_table(path, columns=scalar_columns(schema))
    return scalar_frame(table, schema, require_labels, problems)


def scalar_columns(schema: pa.Schema) -> list[str]:
    """The columns read besides the embeddings: the required ones, the label and the optional ones."""
    names = (*REQUIRED_COLUMNS, LABEL_COLUMN, *OPTIONAL_COLUMNS)
    return [c for c in names if c in schema.names and c != EMBEDDINGS]


def duplicate_rows(path: str | os.PathLike) -> dict[int, int]:
    """``{row: first row with the same ticket_id}`` of every repeated ticket id of ``path`` (only the
    id column is read, so a file scored in chunks is checked for duplicates across its chunks)."""
    ids = pq.read_table(path, columns=["ticket_id"]).column(0).to_pandas()
    ids = _string_column(ids, "ticket_id")
    dup = ids.notna() & ids.duplicated(keep="first")
    if not dup.any():
        return {}
    first = pd.Series(np.arange(len(ids)), index=ids).groupby(level=0).first()
    return {int(r): int(first[ids.iat[r]]) for r in np.flatnonzero(dup.to_numpy())}


def scalar_frame(
    table: pa.Table,
    schema: pa.Schema,
    require_labels: bool,
    problems: list[RowProblem],
    first_row: int = 0,
    duplicate_of: dict[int, int] | None = None,
) -> pd.DataFrame:
    """The scalar columns of ``table`` (rows ``first_row`` on of the file) checked row by row; each
    bad field adds a :class:`RowProblem` to ``problems``. Duplicated ticket ids are found within
    ``table`` unless ``duplicate_of`` (:func:`duplicate_rows` of the whole file) is given."""
    frame = pd.DataFrame({"row": np.arange(first_row, first_row + table.num_rows, dtype=np.int64)})
    for name in table.column_names:
        values = table.column(name).to_pandas()
        if name == "unix_timestamp":
            frame[name] = _timestamps(values, schema.field(name))
            frame["_raw_ts"] = values.astype("string")
        else:
            frame[name] = _string_column(values, name)
    ids = frame["ticket_id"].fillna("<missing>").to_numpy()

    def flag(mask: np.ndarray, field: str, problem: str, detail=None) -> None:
        for r in np.flatnonzero(mask):
            problems.append(
                RowProblem(first_row + int(r), str(ids[r]), field, problem, detail(r) if detail else "")
            )

    flag(frame["ticket_id"].isna().to_numpy(), "ticket_id", "missing")
    flag(frame["account_id"].isna().to_numpy(), "account_id", "missing")
    ts = frame["unix_timestamp"].to_numpy()
    flag(frame["_raw_ts"].isna().to_numpy(), "unix_timestamp", "missing")
    flag(
        (frame["_raw_ts"].notna() & ~np.isfinite(ts)).to_numpy(),
        "unix_timestamp",
        "not a number",
        lambda r: f"value {frame['_raw_ts'].iat[r]!r}",
    )
    frame = frame.drop(columns="_raw_ts")
    if LABEL_COLUMN in frame:
        empty = frame[LABEL_COLUMN].isna() | (frame[LABEL_COLUMN].str.strip("\"' ") == "")
        if require_labels:
            flag(empty.to_numpy(), LABEL_COLUMN, "missing")
    if duplicate_of is None:
        dup = frame["ticket_id"].notna() & frame["ticket_id"].duplicated(keep="first")
        first_row_of = frame.drop_duplicates("ticket_id").set_index("ticket_id")["row"]
        flag(dup.to_numpy(), "ticket_id", "duplicate", lambda r: f"first seen at row {first_row_of[ids[r]]}")
    elif duplicate_of:
        dup = np.fromiter((first_row + r in duplicate_of for r in range(len(frame))), bool, len(frame))
        flag(dup, "ticket_id", "duplicate", lambda r: f"first seen at row {duplicate_of[first_row + r]}")
    return frame


def prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced by a background thread: parquet decompression (which releases the GIL)
    overlaps the JSON parsing on another core."""
    done = object()
    slots: queue.Queue = queue.Queue(depth)

    def produce() -> None:
        try:
            for item in items:
                slots.put(item)
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)
        slots.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := slots.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _embedding_batches(path: Path) -> Iterator[list]:
    """Rows of the embeddings column, batch by batch, as zero-copy byte views (None for null)."""
    parquet = pq.ParquetFile(path)
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=[EMBEDDINGS])
    for batch in prefetched(batches):
        column = batch.column(0)
        if pa.types.is_null(column.type):  # every row null (a writer could not infer a type): no sentences
            yield [None] * len(column)
            continue
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
            offset_type = np.int32
        elif pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
            offset_type = np.int64
        else:
            raise SchemaError(
                f"{path}: column {EMBEDDINGS} has type {column.type}; expected a JSON string per row"
            )
        _, offsets_buffer, data_buffer = column.buffers()
        offsets = np.frombuffer(offsets_buffer, offset_type)[column.offset : column.offset + len(column) + 1]
        data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        yield [
            data[start:end] if ok else None
            for start, end, ok in zip(
                offsets[:-1].tolist(), offsets[1:].tolist(), valid.tolist(), strict=True
            )
        ]


def parse_file(
    path: str | os.PathLike,
    out_dir: Path,
    require_labels: bool = True,
    progress: bool = True,
) -> dict:
    """Parse ``path`` into ``out_dir`` (the cache layout of :mod:`tagger.data.cache`).

    Writes ``embeddings.f32`` (raw float32 rows), ``offsets.npy``, ``sentence_ids.npy``,
    ``sentence_vocab.npy``, ``meta.parquet`` and ``quarantine.parquet``; returns the
    report and counts for the manifest.
    """
    path = Path(path)
    schema = read_schema(path, require_labels)
    problems: list[RowProblem] = []
    frame = _scalar_frame(path, schema, require_labels, problems)
    parsed = _write_embeddings(path, out_dir, frame, problems, progress)
    meta = frame[parsed.keep].reset_index(drop=True)
    meta["has_embeddings"] = parsed.has_embeddings[parsed.keep]
    meta["n_sentences"] = np.diff(np.asarray(parsed.offsets, np.int64)).astype(np.int32)
    _add_labels(meta)
    np.save(out_dir / "offsets.npy", np.asarray(parsed.offsets, np.int64))
    np.save(
        out_dir / "sentence_ids.npy",
        np.concatenate(parsed.sentence_ids) if parsed.sentence_ids else np.empty(0, np.int32),
    )
    np.save(out_dir / "sentence_vocab.npy", np.asarray(list(parsed.vocab), dtype=str))
    meta.to_parquet(out_dir / "meta.parquet", index=False)
    report = ValidationReport(
        n_rows=len(frame),
        n_kept=int(parsed.keep.sum()),
        n_no_embeddings=int((~meta["has_embeddings"]).sum()),
        quarantined=sorted(problems, key=lambda p: p.row),
    )
    pd.DataFrame(report.rows(), columns=["row", "ticket_id", "field", "problem", "detail"]).to_parquet(
        out_dir / "quarantine.parquet", index=False
    )
    return {"report": report, "n_tickets": len(meta), "n_sentences": parsed.n_sentences, "dim": EMBEDDING_DIM}


@dataclass
class _Parsed:
    """What the embeddings pass produced: per kept ticket its sentence offsets and ids, the sentence
    vocabulary, and per row whether it is kept and has embeddings."""

    offsets: list[int]
    sentence_ids: list[np.ndarray]
    vocab: dict[str, int]
    has_embeddings: np.ndarray
    keep: np.ndarray
    n_sentences: int


def _write_embeddings(
    path: Path, out_dir: Path, frame: pd.DataFrame, problems: list, progress: bool
) -> _Parsed:
    """Stream the embeddings column in record batches, appending each good ticket's vectors to
    ``embeddings.f32``; a bad field quarantines its row (added to ``problems``)."""
    n_rows = len(frame)
    bad_rows = {p.row for p in problems}
    ids = frame["ticket_id"].fillna("<missing>").to_numpy()
    out = _Parsed([0], [], {}, np.zeros(n_rows, bool), np.ones(n_rows, bool), 0)
    vocab, offsets, has_embeddings, keep = out.vocab, out.offsets, out.has_embeddings, out.keep
    n_sentences = 0
    start = 0
    with (
        open(out_dir / "embeddings.f32", "wb") as sink,
        tqdm(
            total=n_rows, desc=f"parse {path.name}", unit="ticket", disable=not progress, leave=False
        ) as bar,
    ):
        for texts in _embedding_batches(path):
            chunk_ids = ids[start : start + len(texts)]
            for row, keys, vectors in parsed_embeddings(texts, start, chunk_ids, bad_rows, problems):
                if keys is None:
                    keep[row] = False
                    continue
                sink.write(vectors.tobytes())
                out.sentence_ids.append(
                    np.fromiter((vocab.setdefault(k, len(vocab)) for k in keys), np.int32, len(keys))
                )
                n_sentences += len(keys)
                offsets.append(n_sentences)
                has_embeddings[row] = len(keys) > 0
            start += len(texts)
            bar.update(len(texts))
    out.n_sentences = n_sentences
    return out


_NO_SENTENCES = np.empty((0, EMBEDDING_DIM), np.float32)


def parsed_embeddings(
    texts: list, first_row: int, ids: np.ndarray, bad_rows: set[int], problems: list[RowProblem]
) -> Iterator[tuple[int, list[str] | None, np.ndarray | None]]:
    """``(row, sentence ids, [n, 384] vectors)`` of each embeddings field of ``texts`` (rows
    ``first_row`` on of the file; ``ids`` their ticket ids). A null or empty field gives no
    sentences; a row in ``bad_rows`` or a malformed field gives
    ``(row, None, None)``, the latter with a :class:`RowProblem` added to ``problems``."""
    for row, text in enumerate(texts, first_row):
        if row in bad_rows:
            yield row, None, None
        elif is_empty(text):
            yield row, [], _NO_SENTENCES
        else:
            try:
                keys, vectors = parse_embeddings(text)
            except EmbeddingError as err:
                problems.append(RowProblem(row, str(ids[row - first_row]), EMBEDDINGS, err.kind, err.detail))
                yield row, None, None
            else:
                yield row, keys, vectors


def _add_labels(meta: pd.DataFrame) -> None:
    """Canonical label, its parent (first level) and depth, when the file has labels."""
    if LABEL_COLUMN not in meta or meta[LABEL_COLUMN].isna().all():
        return
    raw = meta[LABEL_COLUMN].fillna("")
    meta["label"] = canonical_labels(meta["account_id"], raw).astype("string")
    levels = {label: label_levels(label) for label in pd.unique(meta["label"])}
    meta["parent"] = meta["label"].map(lambda v: levels[v][0] if levels[v] else v).astype("string")
    meta["depth"] = meta["label"].map(lambda v: len(levels[v])).astype(np.int16)
