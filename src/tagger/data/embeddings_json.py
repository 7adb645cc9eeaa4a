"""Parse one ticket's ``email_sentence_embeddings`` field: hashed sentence id -> 384 floats.

One strict parser for the API, the ingest and predict.py: JSON only (orjson), caps on the size
and the number of sentences checked before anything is parsed, and every failure, whatever the
input (any string, any bytes, any depth), an :class:`EmbeddingError` naming what is wrong. The fast
path is orjson straight into a float32 array; only a field that fails it pays for the diagnosis
(NaN, a short vector, a non-number).
"""

from __future__ import annotations

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


_NON_FINITE = (b"NaN", b"Infinity")
_MIN_VECTOR_BYTES = 2 * EMBEDDING_DIM


def _load_object(text: str | bytes | memoryview | dict, max_bytes: int | None, max_sentences: int | None):
    """The field's JSON value, its caps checked first (a count of ``[`` bounds the sentences)."""
    if isinstance(text, dict):
        if max_sentences is not None and len(text) > max_sentences:
            raise EmbeddingError("too many sentences", f"{len(text)}; at most {max_sentences}")
        return text
    if not isinstance(text, str | bytes | memoryview):
        raise EmbeddingError("not a JSON object", f"expected its text, got {type(text).__name__}")
    raw = text if isinstance(text, str) else bytes(text)  # orjson reads str and bytes alike
    if max_bytes is not None:
        size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
        if size > max_bytes:
            raise EmbeddingError("too large", f"{size:,} bytes; at most {max_bytes:,}")
    # a vector's text is at least 768 bytes ("0," 384 times): a shorter field cannot hold more than
    # the cap of vectors and costs little to parse, so only a longer one is counted first
    long = max_sentences is not None and len(raw) > max_sentences * _MIN_VECTOR_BYTES
    if long and raw.count("[" if isinstance(raw, str) else b"[") > max_sentences:
        raise EmbeddingError("too many sentences", f"more than {max_sentences} vectors")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        words = _NON_FINITE if isinstance(raw, bytes) else tuple(w.decode() for w in _NON_FINITE)
        if any(word in raw for word in words):  # JSON has no NaN: say so by name
            raise EmbeddingError("NaN or infinite value", "NaN/Infinity is not JSON") from None
        raise EmbeddingError("malformed JSON", str(err)[:200]) from None
    except Exception as err:
        raise EmbeddingError("malformed JSON", f"{type(err).__name__}") from None


def parse_embeddings(
    text: str | bytes | memoryview | dict, max_sentences: int | None = None, max_bytes: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Sentence ids and a float32 ``[n_sentences, 384]`` array; raises :class:`EmbeddingError`
    (``too many sentences`` or ``too large`` past the caps, checked before parsing)."""
    obj = _load_object(text, max_bytes, max_sentences)
    if not isinstance(obj, dict):
        raise EmbeddingError("not a JSON object", f"expected sentence id -> vector, got {type(obj).__name__}")
    if not obj:
        return [], np.empty((0, EMBEDDING_DIM), np.float32)
    if max_sentences is not None and len(obj) > max_sentences:
        raise EmbeddingError("too many sentences", f"{len(obj)}; at most {max_sentences}")
    keys = [str(k) for k in obj]
    values = list(obj.values())
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: reported just below
            array = np.array(values, dtype=np.float32)
    except Exception:
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
