"""Property-based tests (hypothesis): no input crashes the embeddings parser or the request validation.

Any bytes, any text, any JSON value in the embeddings field gives a ticket (float32 [n, 384], finite)
or a clear error (EmbeddingError with a kind; 4xx naming the field over HTTP), never anything else.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import embeddings_json, ticket, unit_vectors, write_tickets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import client  # noqa: F401  (the API on the toy export)

from tagger.data.cache import load_tickets
from tagger.data.embeddings_json import EMBEDDING_DIM, EmbeddingError, is_empty, parse_embeddings

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _vector_like():
    """Near-valid vectors: the right length or not, floats or not, NaN sometimes."""
    return st.one_of(
        st.lists(FLOATS, min_size=EMBEDDING_DIM, max_size=EMBEDDING_DIM),
        st.lists(FLOATS, min_size=0, max_size=EMBEDDING_DIM + 2),
        JSON_VALUES,
    )


NEAR_VALID = st.dictionaries(st.text(min_size=0, max_size=12), _vector_like(), max_size=4)


def _check(value) -> None:
    """The parser's contract: a finite float32 [n, 384] array and its ids, or an EmbeddingError."""
    try:
        ids, vectors = parse_embeddings(value)
    except EmbeddingError as err:
        assert err.kind and str(err)
        return
    assert vectors.dtype == np.float32 and vectors.shape == (len(ids), EMBEDDING_DIM)
    assert np.isfinite(vectors).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes(raw):
    _check(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_any_text(text):
    _check(text)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_json_value_as_text(value):
    _check(json.dumps(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NEAR_VALID)
def test_near_valid_objects(obj):
    text = json.dumps(obj)  # NaN / Infinity become the non-standard tokens some exporters write
    _check(text)
    _check(text.encode())
    if not is_empty(obj):
        _check(obj)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.data())
def test_valid_objects_round_trip(n, data):
    vectors = np.array(
        [[data.draw(st.floats(-1e6, 1e6, width=32)) for _ in range(EMBEDDING_DIM)] for _ in range(n)],
        np.float32,
    )
    ids = [f"s{i}" for i in range(n)]
    got_ids, got = parse_embeddings(json.dumps(dict(zip(ids, vectors.tolist(), strict=True))))
    assert got_ids == ids
    np.testing.assert_array_equal(got, vectors)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.text(max_size=300), NEAR_VALID.map(json.dumps)), min_size=1, max_size=8)
)
def test_ingest_keeps_or_quarantines_every_row(texts):
    """Whole files through the streaming ingest: every row is kept or quarantined with a reason."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tickets(Path(tmp) / "t.parquet", [ticket(i, t) for i, t in enumerate(texts)])
        tickets = load_tickets(path, cache_dir=Path(tmp) / "cache", progress=False)
        assert len(tickets) + tickets.report.n_quarantined == len(texts)
        assert sum(tickets.report.counts().values()) == tickets.report.n_quarantined
        assert np.isfinite(np.asarray(tickets.embeddings)).all()
        for i in range(len(tickets)):
            assert tickets.sentences(i).shape[1] == EMBEDDING_DIM


# ---- the request validation of the API ---------------------------------------------------------


EMBEDDINGS_FIELD = st.one_of(
    st.none(),
    st.text(max_size=300),
    NEAR_VALID.map(json.dumps),
    NEAR_VALID,
    JSON_VALUES,
    st.integers(1, 12).map(lambda n: embeddings_json(unit_vectors(n))),
)
BODIES = st.one_of(
    st.fixed_dictionaries(
        {"account_id": st.one_of(st.sampled_from(["a", "b", "c", "nobody", ""]), JSON_VALUES)},
        optional={"email_sentence_embeddings": EMBEDDINGS_FIELD},
    ),
    JSON_VALUES,
)


def _assert_answer(r, status_ok=(200,)) -> None:
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code in status_ok:
        return
    detail = body["detail"]
    fields = [d["field"] for d in detail] if isinstance(detail, list) else [detail["field"]]
    assert fields and all(isinstance(f, str) for f in fields), body
    assert "Traceback" not in r.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(BODIES)
def test_predict_never_fails_on_any_body(client, body):  # noqa: F811
    r = client.post(
        "/predict", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    _assert_answer(r)
    if r.status_code == 200:
        out = r.json()
        assert 0.0 <= out["confidence"] <= 1.0 and not math.isnan(out["confidence"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(BODIES, max_size=5))
def test_batch_never_fails_on_any_body(client, tickets):  # noqa: F811
    r = client.post(
        "/predict/batch",
        content=json.dumps({"tickets": tickets}),
        headers={"content-type": "application/json"},
    )
    _assert_answer(r)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=500))
def test_predict_never_fails_on_any_bytes(client, raw):  # noqa: F811
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text


HOSTILE = {
    "deeply nested arrays": "[" * 200_000 + "]" * 200_000,
    "deeply nested objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "a Python literal of 0.6 MB": str({str(i): [0.1] * 384 for i in range(150)}),
    "NaN tokens": json.dumps({"a": [float("nan")] * 384}),
    "lone surrogates": '{"\ud800": [1]}',
    "a huge number": '{"a": [' + "9" * 100_000 + "]}",
    "8 MB of spaces": " " * 8_000_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_field_is_a_field_error_in_bounded_time(name):
    """Refused with an EmbeddingError, never a crash, in under 50 ms plus 5 ms a MB (the goal of the
    API's answers; the parse is most of it)."""
    import time

    text = HOSTILE[name]
    started = time.perf_counter()
    with pytest.raises(EmbeddingError):
        parse_embeddings(text, max_sentences=256)
    took = time.perf_counter() - started
    assert took < 0.05 + 0.005 * len(text) / 1e6, f"{name}: {took * 1000:.1f} ms"
