"""describe: the statistics of a ticket file and the CLI that prints them."""

from __future__ import annotations

import json

from conftest import embeddings_json, ticket, unit_vectors, write_tickets

from tagger.data import load_tickets
from tagger.data.__main__ import main
from tagger.data.describe import describe, format_description


def _file(tmp_path):
    v = unit_vectors(8)
    rows = [
        ticket(0, embeddings_json(v[:1]), account="a", label="Other"),
        ticket(1, embeddings_json(v[1:4]), account="a", label="Shipping::Tracking"),
        ticket(2, None, account="a", label="Other"),
        ticket(3, embeddings_json(v[4:6]), account="b", label="Other"),
        ticket(4, None, account="b", label='"Other"'),
        ticket(5, embeddings_json(v[6:7]), account="b", label="Billing::Invoice::Copy"),
        ticket(6, "{broken", account="b", label="Other"),
    ]
    return write_tickets(tmp_path / "t.parquet", rows)


def test_statistics(tmp_path, cache_dir):
    stats = describe(load_tickets(_file(tmp_path), cache_dir=cache_dir, progress=False))
    assert stats["tickets"] == 6 and stats["accounts"] == 2
    assert stats["null_embeddings"]["share"] == 2 / 6
    assert stats["null_embeddings"]["worst_accounts"][0] == {"account_id": "a", "share": 1 / 3, "tickets": 3}
    s = stats["sentences_per_email"]
    assert (s["mean"], s["median"], s["max"]) == (7 / 4, 1.5, 3)
    lab = stats["labels"]
    assert lab["raw"] == 5 and lab["normalised"] == 4 and lab["changed_by_normalisation"] == 1
    assert lab["max_depth"] == 3
    assert lab["tickets_per_label"] == {"median": 1.5, "mean": 1.5, "max": 2}
    assert lab["labels_per_account"] == {"min": 2, "median": 2.0, "max": 2}
    assert lab["labels_at_several_accounts"] == 1
    assert stats["validation"]["quarantined"] == 1
    assert stats["time_span"]["days"] == round(5 * 60 / 86400, 1)
    text = format_description(stats)
    assert "tickets                 6" in text and "email_sentence_embeddings: malformed JSON: 1" in text


def test_cli_prints_and_writes_json(tmp_path, cache_dir, capsys):
    out = tmp_path / "d.json"
    quarantine = tmp_path / "q.csv"
    code = main(
        [
            "describe",
            f"path={_file(tmp_path)}",
            f"json={out}",
            f"cache_dir={cache_dir}",
            f"quarantine={quarantine}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "null embeddings" in printed and "quarantined" in printed
    assert json.loads(out.read_text())["tickets"] == 6
    assert "t6" in quarantine.read_text()


def test_cli_names_a_missing_column(tmp_path, cache_dir, capsys):
    path = write_tickets(tmp_path / "t.parquet", [ticket(0, None)], contact_reason=None)
    assert main(["describe", f"path={path}", f"cache_dir={cache_dir}"]) == 2
    assert "contact_reason" in capsys.readouterr().err
    assert main(["describe", str(path)]) == 2  # flags and bare words are gone: key=value
    assert main(["describe", f"path={path}", "wrst=3"]) == 2 and "wrst" in capsys.readouterr().err
