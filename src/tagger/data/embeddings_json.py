"""Parse one ticket's ``email_sentence_embeddings`` field: hashed sentence id -> 384 floats.

The fast path is orjson straight into a float32 array. Only a row that fails it pays for
the slower diagnosis that names exactly what is wrong (NaN, a short vector, bad JSON).
"""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import orjson

EMBEDDING_DIM = 384
_EMPTY_TEXTS = {"", "{}", "null", "none", "nan"}


class EmbeddingError(ValueError):
    """A malformed embeddings field: ``kind`` is a short fixed phrase, ``detail`` the specifics."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def is_empty(text: object) -> bool:
    """True for a null or empty embeddings field (the ticket is kept, flagged no embeddings)."""
    if text is None:
        return True
    if isinstance(text, float) and math.isnan(text):
        return True
    if isinstance(text, dict):
        return not text
    if isinstance(text, str | bytes | memoryview):
        # only a short field can be empty: never copy a long one to look at it
        return len(text) <= 16 and _text(text).strip().lower() in _EMPTY_TEXTS
    return False


def _text(text: str | bytes | memoryview) -> str:
    return text if isinstance(text, str) else bytes(text).decode("utf-8", "replace")


def _load_object(text: str | bytes | memoryview | dict) -> dict:
    if isinstance(text, dict):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as err:
        fast_error = err
    raw = _text(text).strip()
    try:  # the standard library accepts NaN and Infinity, which we report by name below
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:  # a Python dict repr (single quotes) as some exports write it
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise EmbeddingError("malformed JSON", str(fast_error)) from None
    return value


def parse_embeddings(text: str | bytes | memoryview | dict) -> tuple[list[str], np.ndarray]:
    """Sentence ids and a float32 ``[n_sentences, 384]`` array; raises :class:`EmbeddingError`."""
    obj = _load_object(text)
    if not isinstance(obj, dict):
        raise EmbeddingError(
            "not a JSON object", f"expected sentence id -> vector, got {type(obj).__name__}"
        )
    if not obj:
        return [], np.empty((0, EMBEDDING_DIM), np.float32)
    keys = [str(k) for k in obj]
    values = list(obj.values())
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: reported just below
            array = np.array(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1] != EMBEDDING_DIM:
        raise EmbeddingError(*_diagnose(keys, values))
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise EmbeddingError("NaN or infinite value", f"in the vector of sentence {keys[bad]!r}")
    return keys, array


def _diagnose(keys: list[str], values: list) -> tuple[str, str]:
    for key, vector in zip(keys, values, strict=True):
        if not isinstance(vector, list):
            return "vector is not a list", f"sentence {key!r}: got {type(vector).__name__}"
        if len(vector) != EMBEDDING_DIM:
            return (
                f"vector length is not {EMBEDDING_DIM}",
                f"sentence {key!r} has {len(vector)} values",
            )
        for value in vector:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return "non-numeric value", f"sentence {key!r}: {value!r}"
    return "vectors could not be read as numbers", ""
