"""Shared helpers: small ticket parquet files written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DIM = 384


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit float32 vectors."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embeddings_json(vectors: np.ndarray, ids: list[str] | None = None) -> str:
    """The embeddings field as the real data writes it."""
    ids = ids or [str(1000 + i) for i in range(len(vectors))]
    return json.dumps({k: v.astype(np.float64).tolist() for k, v in zip(ids, vectors, strict=True)})


def ticket(i: int, emb: object, account: str = "acc1", label: str = "Shipping::Tracking", **extra) -> dict:
    """One row of the ticket schema."""
    row = {
        "account_id": account,
        "ticket_id": f"t{i}",
        "raw_body": 10_000 + i,
        "channel": "email",
        "unix_timestamp": 1_683_000_000.0 + 60 * i,
        "contact_reason": label,
        "processed_body": 20_000 + i,
        "email_sentence_embeddings": emb,
    }
    row.update(extra)
    return row


def write_tickets(path: Path, rows: list[dict], **column_overrides) -> Path:
    """Write ``rows`` to a parquet file (optionally replacing whole columns)."""
    frame = pd.DataFrame(rows)
    for name, values in column_overrides.items():
        if values is None:
            frame = frame.drop(columns=name)
        else:
            frame[name] = values
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
