"""The label side of a model on disk: the labels an export was made with, and one merchant's labels as
bytes (what the registry's label store keeps per model and merchant).

    EXPORT/labels/base/            every merchant's labels as export.py wrote them (never changed):
        labels.parquet             account_id, label, text, n_train, prior (merchant-contiguous rows)
        label_vectors.npy          [L, K, d] unit label vectors
        label_names.npy            [L, 384] name embeddings (memory-mapped: only label updates read them)
        account_queries.npy        [A + 1, q] attention-query shifts in account order, the last row
                                   for an unknown account (q = 0: none)
        manifest.json              SHA-256 of each file, written last

The labels merchants changed since live in :mod:`tagger.serving.registry` (SQLite), not here: an
export directory is never written after export.py made it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tagger.manifest import ArtifactError, atomic_directory, verify, write_manifest
from tagger.model.label_table import LabelTable
from tagger.model.label_update import AccountLabels, LabelState

BASE_FILES = ("labels.parquet", "label_vectors.npy", "label_names.npy", "account_queries.npy")
BASE = Path("labels") / "base"


def read_base(export_dir: str | os.PathLike) -> LabelState:
    """Every merchant's labels as exported, checked against their manifest."""
    folder = Path(export_dir) / BASE
    verify(folder, BASE_FILES)
    frame = pd.read_parquet(folder / "labels.parquet")
    table = LabelTable(frame[["account_id", "label", "text", "n_train"]])
    vectors = np.load(folder / "label_vectors.npy")
    names = np.load(folder / "label_names.npy", mmap_mode="r")
    queries = np.load(folder / "account_queries.npy")
    if len(vectors) != len(table) or len(names) != len(table):
        raise ArtifactError(f"{folder}: {len(vectors)} vectors for {len(table)} labels")
    if len(queries) != table.n_accounts + 1:
        raise ArtifactError(f"{folder}: {len(queries)} account queries for {table.n_accounts} accounts")
    return LabelState.from_table(
        table, vectors, frame["prior"].to_numpy(float), names, queries if queries.shape[1] else None
    )


def write_base(export_dir: str | os.PathLike, state: LabelState, change: dict) -> None:
    """Write every merchant's labels as the export's own (export.py, inside its scratch directory)."""
    table, vectors, prior, names, queries = state.to_table()
    with atomic_directory(Path(export_dir) / BASE, replace=False) as tmp:
        frame = table.frame.assign(prior=prior)
        frame.to_parquet(tmp / "labels.parquet", index=False)
        np.save(tmp / "label_vectors.npy", vectors)
        np.save(tmp / "label_names.npy", names)
        if queries is None:
            queries = np.zeros((table.n_accounts + 1, 0), np.float32)
        np.save(tmp / "account_queries.npy", queries)
        write_manifest(tmp, BASE_FILES, change=change)


def encode_labels(labels: AccountLabels) -> tuple[bytes, str]:
    """One merchant's labels as ``.npz`` bytes (no pickle) and their SHA-256."""
    out = io.BytesIO()
    query = labels.query if labels.query is not None else np.zeros(0, np.float32)
    np.savez(
        out,
        labels=np.asarray(labels.labels, str),
        text=np.asarray(labels.text, str),
        n_train=np.asarray(labels.n_train, np.int64),
        prior=np.asarray(labels.prior, float),
        vectors=np.ascontiguousarray(labels.vectors, np.float32),
        names=np.ascontiguousarray(labels.names, np.float32),
        query=np.ascontiguousarray(query, np.float32),
    )
    blob = out.getvalue()
    return blob, hashlib.sha256(blob).hexdigest()


def decode_labels(blob: bytes, sha: str) -> AccountLabels:
    """The labels :func:`encode_labels` wrote; :class:`ArtifactError` if the bytes are damaged."""
    if hashlib.sha256(blob).hexdigest() != sha:
        raise ArtifactError("the stored labels do not match their SHA-256")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            query = z["query"]
            labels = AccountLabels(
                tuple(str(s) for s in z["labels"]),
                tuple(str(s) for s in z["text"]),
                z["n_train"],
                z["prior"],
                z["vectors"],
                z["names"],
                query if query.size else None,
            )
    except (ValueError, KeyError, OSError) as err:
        raise ArtifactError(f"the stored labels cannot be read: {err}") from err
    if not (len(labels.vectors) == len(labels.names) == len(labels) == len(labels.prior) > 0):
        raise ArtifactError(f"the stored labels hold {len(labels.vectors)} vectors for {len(labels)} labels")
    return labels
