"""The label side of an export directory, in generations that are swapped atomically.

    EXPORT/labels/CURRENT            the name of the live generation (replaced with os.replace)
    EXPORT/labels/g000001/           one generation, never changed once written:
        labels.json                  accounts and label rows (account_id, label, text, n_train, prior)
        label_vectors.npy            [L, K, d] unit label vectors (the model's label tower output)
        label_names.npy              [L, 384] name embeddings
        account_queries.npy          [A + 1, q] per-account attention-query shifts (q = 0: none)
        manifest.json                SHA-256 of each file, written last

A reader sees either the old generation or the new one, never a mix: a generation directory is
complete and checked (manifest) before CURRENT names it. Writers hold a lock on the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tagger.manifest import atomic_directory, verify, write_manifest
from tagger.model.label_table import LabelTable
from tagger.model.label_update import LabelState

GENERATION_FILES = ("labels.json", "label_vectors.npy", "label_names.npy", "account_queries.npy")
KEEP_GENERATIONS = 5  # older ones are pruned; the live one and its predecessors stay for a rollback
_NAME = re.compile(r"^g(\d{6,})$")


def labels_dir(export_dir: str | os.PathLike) -> Path:
    return Path(export_dir) / "labels"


def current_generation(export_dir: str | os.PathLike) -> str:
    """The live generation's name; raises FileNotFoundError if there is none."""
    return (labels_dir(export_dir) / "CURRENT").read_text().strip()


def read_generation(export_dir: str | os.PathLike, name: str | None = None) -> tuple[str, LabelState]:
    """``(name, state)`` of a generation (the live one by default), checked against its
    manifest; raises :class:`tagger.manifest.ArtifactError` if a file is missing or altered."""
    name = name or current_generation(export_dir)
    if not _NAME.match(name):
        raise ValueError(f"labels/CURRENT names {name!r}, not a generation")
    folder = labels_dir(export_dir) / name
    verify(folder, GENERATION_FILES)
    info = json.loads((folder / "labels.json").read_text())
    frame = pd.DataFrame(info["labels"])
    table = LabelTable(frame[["account_id", "label", "text", "n_train"]])
    queries = np.load(folder / "account_queries.npy")
    state = LabelState(
        table=table,
        vectors=np.load(folder / "label_vectors.npy"),
        prior=frame["prior"].to_numpy(float),
        names=np.load(folder / "label_names.npy"),
        queries=queries if queries.shape[1] else None,
    )
    if len(state.vectors) != len(table) or len(state.names) != len(table):
        raise ValueError(f"generation {name}: {len(state.vectors)} vectors for {len(table)} labels")
    return name, state


def write_generation(export_dir: str | os.PathLike, state: LabelState, change: dict) -> str:
    """Write ``state`` as a new generation and make it live; returns its name. Call under :func:`lock`
    when another writer may run."""
    root = labels_dir(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name))]
    name = f"g{max(numbers, default=0) + 1:06d}"
    with atomic_directory(root / name, replace=False) as tmp:
        frame = state.table.frame
        labels = {
            "generation": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "change": change,
            "accounts": {
                a: {"index": i, "rows": list(state.table.account_slices[a])}
                for i, a in enumerate(state.table.accounts)
            },
            "labels": [
                {
                    "account_id": r.account_id,
                    "label": r.label,
                    "text": r.text,
                    "n_train": int(r.n_train),
                    "prior": float(p),
                }
                for r, p in zip(frame.itertuples(), state.prior, strict=True)
            ],
        }
        (tmp / "labels.json").write_text(json.dumps(labels))
        np.save(tmp / "label_vectors.npy", np.ascontiguousarray(state.vectors, np.float32))
        np.save(tmp / "label_names.npy", np.ascontiguousarray(state.names, np.float32))
        queries = state.queries if state.queries is not None else np.zeros((state.table.n_accounts + 1, 0))
        np.save(tmp / "account_queries.npy", np.ascontiguousarray(queries, np.float32))
        write_manifest(tmp, GENERATION_FILES)
    pointer = root / f".CURRENT-{os.getpid()}"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / "CURRENT")
    _prune(root, name)
    return name


@contextmanager
def lock(export_dir: str | os.PathLike, timeout: float = 30.0):
    """An exclusive lock on the export directory's labels (one writer at a time, across processes)."""
    root = labels_dir(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{root}: another label update holds the lock") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prune(root: Path, live: str) -> None:
    names = sorted(p.name for p in root.iterdir() if _NAME.match(p.name))
    for old in names[:-KEEP_GENERATIONS]:
        if old != live:
            shutil.rmtree(root / old, ignore_errors=True)
