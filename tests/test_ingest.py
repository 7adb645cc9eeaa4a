"""Ingest of ticket parquet files: the ragged store, every kind of bad input, the cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import embeddings_json, ticket, unit_vectors, write_tickets

from tagger.data import SchemaError, load_tickets
from tagger.data import cache as cache_module


def _problems(tickets) -> dict[str, str]:
    return {p.ticket_id: f"{p.field}: {p.problem}" for p in tickets.report.quarantined}


def test_ragged_store_round_trip(tmp_path, cache_dir):
    vectors = unit_vectors(6)
    rows = [
        ticket(0, embeddings_json(vectors[:1], ["h0"])),
        ticket(1, embeddings_json(vectors[1:4], ["h1", "h2", "h0"])),
        ticket(2, None),
        ticket(3, embeddings_json(vectors[4:6], ["h4", "h5"])),
    ]
    path = write_tickets(tmp_path / "t.parquet", rows)
    t = load_tickets(path, cache_dir=cache_dir, progress=False)
    assert len(t) == 4
    assert t.offsets.tolist() == [0, 1, 4, 4, 6]
    assert t.embeddings.dtype == np.float32 and t.embeddings.shape == (6, 384)
    np.testing.assert_allclose(t.sentences(1), vectors[1:4], rtol=0, atol=1e-7)
    np.testing.assert_allclose(t.sentences(3), vectors[4:6], rtol=0, atol=1e-7)
    assert t.sentence_vocab[t.sentence_ids[1:4]].tolist() == ["h1", "h2", "h0"]
    # the same sentence id maps to one vocabulary entry
    assert t.sentence_ids[0] == t.sentence_ids[3]
    assert t.meta["has_embeddings"].tolist() == [True, True, False, True]
    assert t.meta["n_sentences"].tolist() == [1, 3, 0, 2]
    assert t.report.n_quarantined == 0 and t.report.n_no_embeddings == 1


@pytest.mark.parametrize("empty", [None, "", "{}", "null", "  {} "])
def test_null_or_empty_embeddings_keep_the_ticket(tmp_path, cache_dir, empty):
    rows = [ticket(0, embeddings_json(unit_vectors(1))), ticket(1, empty)]
    t = load_tickets(write_tickets(tmp_path / "t.parquet", rows), cache_dir=cache_dir, progress=False)
    assert len(t) == 2
    assert t.meta["has_embeddings"].tolist() == [True, False]
    assert len(t.sentences(1)) == 0


def test_bad_rows_are_quarantined_and_named(tmp_path, cache_dir):
    good = embeddings_json(unit_vectors(1))
    short = json.dumps({"a": [0.1] * 383})
    nan = json.dumps({"a": [float("nan")] + [0.0] * 383})  # json writes NaN, which is not JSON
    inf = json.dumps({"a": [float("inf")] + [0.0] * 383})
    text = json.dumps({"a": ["x"] + [0.0] * 383})
    rows = [
        ticket(0, good),
        ticket(1, '{"a": [0.1, 0.2'),  # truncated JSON
        ticket(2, short),
        ticket(3, nan),
        ticket(4, inf),
        ticket(5, "[1, 2, 3]"),
        ticket(6, text),
        ticket(7, good),
    ]
    t = load_tickets(write_tickets(tmp_path / "t.parquet", rows), cache_dir=cache_dir, progress=False)
    assert t.meta["ticket_id"].tolist() == ["t0", "t7"]
    problems = _problems(t)
    assert problems == {
        "t1": "email_sentence_embeddings: malformed JSON",
        "t2": "email_sentence_embeddings: vector length is not 384",
        "t3": "email_sentence_embeddings: NaN or infinite value",
        "t4": "email_sentence_embeddings: NaN or infinite value",
        "t5": "email_sentence_embeddings: not a JSON object",
        "t6": "email_sentence_embeddings: non-numeric value",
    }
    report = t.report.to_dict()
    assert report["rows"] == 8 and report["kept"] == 2 and report["quarantined"] == 6
    assert report["problems"]["email_sentence_embeddings: NaN or infinite value"] == {
        "count": 2,
        "ticket_ids": ["t3", "t4"],
    }
    detail = {p.ticket_id: p.detail for p in t.report.quarantined}
    assert "383 values" in detail["t2"]
    assert "quarantined 6" in t.report.summary()
    # the good rows' vectors are intact, nothing shifted by the bad ones
    np.testing.assert_allclose(t.sentences(1), unit_vectors(1), atol=1e-7)


def test_only_json_is_accepted_a_python_repr_is_quarantined(tmp_path, cache_dir):
    v = unit_vectors(1)[0].astype(np.float64).tolist()
    rows = [ticket(0, str({"abc": v})), ticket(1, embeddings_json(unit_vectors(1)))]
    t = load_tickets(write_tickets(tmp_path / "t.parquet", rows), cache_dir=cache_dir, progress=False)
    (problem,) = t.report.quarantined
    assert problem.ticket_id == "t0" and problem.problem == "malformed JSON"
    assert t.meta["ticket_id"].tolist() == ["t1"]


def test_duplicate_ticket_id_keeps_the_first(tmp_path, cache_dir):
    emb = embeddings_json(unit_vectors(1))
    rows = [ticket(0, emb), ticket(1, emb), ticket(2, emb)]
    rows[2]["ticket_id"] = "t0"
    t = load_tickets(write_tickets(tmp_path / "t.parquet", rows), cache_dir=cache_dir, progress=False)
    assert t.meta["ticket_id"].tolist() == ["t0", "t1"]
    (problem,) = t.report.quarantined
    assert (problem.row, problem.ticket_id, problem.field, problem.problem) == (
        2,
        "t0",
        "ticket_id",
        "duplicate",
    )
    assert "row 0" in problem.detail


def test_missing_column_is_a_clear_error(tmp_path, cache_dir):
    rows = [ticket(0, None)]
    path = write_tickets(tmp_path / "t.parquet", rows, unix_timestamp=None)
    with pytest.raises(SchemaError, match=r"missing required column.*unix_timestamp"):
        load_tickets(path, cache_dir=cache_dir, progress=False)


def test_mistyped_columns(tmp_path, cache_dir):
    emb = embeddings_json(unit_vectors(1))
    rows = [ticket(i, emb) for i in range(4)]
    path = write_tickets(
        tmp_path / "t.parquet",
        rows,
        unix_timestamp=["1683000000.5", "yesterday", None, "1683000100"],
        account_id=[17, 17, 17, 18],
        contact_reason=["Other", "Other", "Other", None],
    )
    t = load_tickets(path, cache_dir=cache_dir, progress=False)
    assert t.meta["ticket_id"].tolist() == ["t0"]
    assert t.meta["unix_timestamp"].tolist() == [1683000000.5]
    assert t.meta["account_id"].tolist() == ["17"]
    assert _problems(t) == {
        "t1": "unix_timestamp: not a number",
        "t2": "unix_timestamp: missing",
        "t3": "contact_reason: missing",
    }


def test_embeddings_column_of_wrong_type_is_an_error(tmp_path, cache_dir):
    path = write_tickets(tmp_path / "t.parquet", [ticket(0, None)], email_sentence_embeddings=[5])
    with pytest.raises(SchemaError, match="email_sentence_embeddings"):
        load_tickets(path, cache_dir=cache_dir, progress=False)


def test_not_a_parquet_file(tmp_path, cache_dir):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SchemaError, match="not a readable parquet"):
        load_tickets(path, cache_dir=cache_dir, progress=False)


def test_labels_are_normalised_per_account(tmp_path, cache_dir):
    emb = embeddings_json(unit_vectors(1))
    labels = ['"Shipping::Tracking"', "shipping :: tracking", "Shipping::Tracking", "Subscription:: Cancel"]
    rows = [ticket(i, emb, label=lab) for i, lab in enumerate(labels)]
    rows.append(ticket(9, emb, account="acc2", label="shipping::tracking"))
    t = load_tickets(write_tickets(tmp_path / "t.parquet", rows), cache_dir=cache_dir, progress=False)
    assert t.meta["label"].tolist() == [
        "Shipping::Tracking",
        "Shipping::Tracking",
        "Shipping::Tracking",
        "Subscription::Cancel",
        "shipping::tracking",  # another account keeps its own spelling
    ]
    assert t.meta["parent"].tolist()[:4] == ["Shipping"] * 3 + ["Subscription"]
    assert t.meta["depth"].tolist() == [2] * 5


def test_empty_file(tmp_path, cache_dir):
    path = write_tickets(tmp_path / "t.parquet", [ticket(0, None)])
    frame = pd.read_parquet(path).iloc[:0]
    frame.to_parquet(path, index=False)
    t = load_tickets(path, cache_dir=cache_dir, progress=False)
    assert len(t) == 0 and t.embeddings.shape == (0, 384)


def test_cache_is_keyed_by_content_and_reused(tmp_path, cache_dir, monkeypatch):
    emb = embeddings_json(unit_vectors(2))
    path = write_tickets(tmp_path / "t.parquet", [ticket(0, emb), ticket(1, None)])
    first = load_tickets(path, cache_dir=cache_dir, progress=False)
    assert isinstance(first.embeddings, np.memmap)
    entries = list(cache_dir.iterdir())
    assert len(entries) == 1 and (entries[0] / "manifest.json").exists()

    def no_parse(*args, **kwargs):
        raise AssertionError("a cached file must not be parsed again")

    monkeypatch.setattr(cache_module, "parse_file", no_parse)
    second = load_tickets(path, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    pd.testing.assert_frame_equal(first.meta, second.meta)
    monkeypatch.undo()

    # new content, new entry; nothing half-built left behind
    write_tickets(path, [ticket(0, emb)])
    third = load_tickets(path, cache_dir=cache_dir, progress=False)
    assert len(third) == 1
    assert sorted(p.name.startswith(".building") for p in cache_dir.iterdir()) == [False, False]


def test_quarantine_survives_the_cache(tmp_path, cache_dir):
    rows = [ticket(0, "{bad"), ticket(1, None)]
    path = write_tickets(tmp_path / "t.parquet", rows)
    load_tickets(path, cache_dir=cache_dir, progress=False)
    cached = load_tickets(path, cache_dir=cache_dir, progress=False)
    assert cached.report.n_quarantined == 1 and cached.report.n_rows == 2
    assert cached.report.quarantined[0].ticket_id == "t0"


def test_without_cache_reads_into_memory(tmp_path, cache_dir):
    path = write_tickets(tmp_path / "t.parquet", [ticket(0, embeddings_json(unit_vectors(1)))])
    t = load_tickets(path, use_cache=False, progress=False)
    assert not isinstance(t.embeddings, np.memmap)
    assert t.embeddings.shape == (1, 384)
    assert not cache_dir.exists()


def test_subset_gathers_ragged_rows(tmp_path, cache_dir):
    vectors = unit_vectors(4)
    rows = [ticket(0, embeddings_json(vectors[:2])), ticket(1, None), ticket(2, embeddings_json(vectors[2:]))]
    t = load_tickets(write_tickets(tmp_path / "t.parquet", rows), cache_dir=cache_dir, progress=False)
    sub = t.subset(np.array([2, 1]))
    assert sub.offsets.tolist() == [0, 2, 2]
    np.testing.assert_allclose(sub.embeddings, vectors[2:], atol=1e-7)
    assert sub.meta["ticket_id"].tolist() == ["t2", "t1"]


def test_a_cache_entry_built_twice_at_once_keeps_the_first_and_leaves_no_scratch(tmp_path):
    from tagger.manifest import atomic_directory

    entry = tmp_path / "entry"
    with atomic_directory(entry, keep_existing=True) as first:
        (first / "a").write_text("first")
        with atomic_directory(entry, keep_existing=True) as second:  # finishes first
            (second / "a").write_text("second")
    assert (entry / "a").read_text() == "second"  # the one that finished first wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no scratch directory left
