"""Label changes on a served registry: the admin endpoint, the command, refusals, hot reload under
load, rollback of a merchant's change, a damaged row quarantining one merchant only."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest
from conftest import (
    AUTH,
    TOKEN,
    embeddings_json,
    exported,
    fake_embed,
    in_background,
    served_copy,
    unit_vectors,
    wait_for,
)
from fastapi.testclient import TestClient

from tagger.model.label_update import LabelUpdate, UpdateError
from tagger.serving import admin
from tagger.serving.api import create_app
from tagger.serving.registry import Registry


@pytest.fixture()
def export_dir(trained, tmp_path):
    return served_copy(exported(trained, "admin-onnx"), tmp_path)


@pytest.fixture()
def client(export_dir):
    app = create_app(export_dir, admin_token=TOKEN, embed=fake_embed, reload_interval=0.0)
    return TestClient(app, raise_server_exceptions=False)


def _labels(client, account: str) -> dict[str, int]:
    return {x["label"]: x["n_train"] for x in client.get(f"/accounts/{account}/labels").json()["labels"]}


def _generation(registry_dir) -> int:
    return Registry(registry_dir).head()[1]


def _update(registry: Registry, account: str, **change) -> dict:
    return registry.update(LabelUpdate(account, **change), "test", fake_embed)


def _served_labels(registry_dir, account: str) -> tuple[str, ...]:
    """What a server started now would serve for ``account``."""
    registry = Registry(registry_dir)
    view, _ = registry.label_view(registry.served()[1])
    return view.labels_of(account).labels


def test_update_round_trip_through_the_endpoint(client):
    before = client.get("/health").json()
    example = {
        "label": "Warranty Claim",
        "email_sentence_embeddings": embeddings_json(unit_vectors(2, seed=5)),
    }
    r = client.post(
        "/admin/labels",
        json={"account_id": "a", "add": ["Warranty Claim"], "examples": [example]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert "Warranty Claim" in out["labels"] and out["previous"] == before["label_generation"]
    assert _labels(client, "a")["Warranty Claim"] == 1
    health = client.get("/health").json()
    assert health["labels"] == before["labels"] + 1 and health["model_version"] != before["model_version"]
    # the new label can be predicted: its example's own sentences score it first
    pred = client.post(
        "/predict",
        json={"account_id": "a", "email_sentence_embeddings": example["email_sentence_embeddings"]},
    ).json()
    assert pred["top_k"][0]["label"] == "Warranty Claim" and pred["model_version"] == out["model_version"]

    r = client.post("/admin/labels", json={"account_id": "a", "rename": {"refund": "Refunds"}}, headers=AUTH)
    assert r.status_code == 200, r.text
    labels = _labels(client, "a")
    assert "Refunds" in labels and "Refund" not in labels
    r = client.post("/admin/labels", json={"account_id": "a", "retire": ["Refunds"]}, headers=AUTH)
    assert r.status_code == 200 and "Refunds" not in _labels(client, "a")
    # other accounts are untouched
    assert set(_labels(client, "b")) == {"Billing", "Other"}


def test_a_new_account_from_its_label_names(client):
    body = {"account_id": "newco", "create_account": True, "add": ["Order Status", "Returns"]}
    assert client.post("/admin/labels", json=body, headers=AUTH).status_code == 200
    pred = client.post("/predict", json={"account_id": "newco", "email_sentence_embeddings": None}).json()
    assert pred["fallback"] and pred["contact_reason"] in {"Order Status", "Returns"}
    vec = embeddings_json(unit_vectors(1))
    pred = client.post("/predict", json={"account_id": "newco", "email_sentence_embeddings": vec}).json()
    assert {t["label"] for t in pred["top_k"]} == {"Order Status", "Returns"}


@pytest.mark.parametrize(
    ("headers", "body", "status", "field"),
    [
        ({}, {"account_id": "a", "add": ["X"]}, 401, "authorization"),
        ({"Authorization": "Bearer wrong"}, {"account_id": "a", "add": ["X"]}, 401, "authorization"),
        ({"Authorization": TOKEN}, {"account_id": "a", "add": ["X"]}, 401, "authorization"),
        (AUTH, {"account_id": "nobody", "add": ["X"]}, 404, "account_id"),
        (AUTH, {"account_id": "a", "add": ["  "]}, 422, "add[0]"),
        (AUTH, {"account_id": "a", "add": ["refund"]}, 422, "add[0]"),
        (AUTH, {"account_id": "a", "retire": ["No Such"]}, 422, "retire[0]"),
        (AUTH, {"account_id": "c", "retire": ["General"]}, 422, "retire"),
        (AUTH, {"account_id": "a", "rename": {"Refund": "Other"}}, 422, "rename.Refund"),
        (AUTH, {"account_id": "a"}, 422, "body"),
        (AUTH, {"account_id": "a", "create_account": True, "add": ["X"]}, 422, "account_id"),
        (
            AUTH,
            {"account_id": "a", "examples": [{"label": "Refund", "email_sentence_embeddings": "{"}]},
            422,
            "examples[0].email_sentence_embeddings",
        ),
        (
            AUTH,
            {
                "account_id": "a",
                "examples": [
                    {"label": "Nope", "email_sentence_embeddings": embeddings_json(unit_vectors(1))}
                ],
            },
            422,
            "examples.Nope",
        ),
        (AUTH, {"add": ["X"]}, 422, "account_id"),
    ],
)
def test_a_bad_update_is_refused_and_nothing_changes(client, export_dir, headers, body, status, field):
    generation = _generation(export_dir)
    r = client.post("/admin/labels", json=body, headers=headers)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    fields = [d["field"] for d in detail] if isinstance(detail, list) else [detail["field"]]
    assert field in fields, fields
    assert _generation(export_dir) == generation
    assert client.get("/health").json()["label_generation"] == f"g{generation:06d}"


def test_the_admin_endpoint_is_off_without_a_token(export_dir):
    client = TestClient(create_app(export_dir, embed=fake_embed), raise_server_exceptions=False)
    r = client.post("/admin/labels", json={"account_id": "a", "add": ["X"]}, headers=AUTH)
    assert r.status_code == 403


def test_hot_reload_under_concurrent_requests(export_dir):
    """A server sees a label change another writer made within 1 s; no request fails."""
    serving = TestClient(create_app(export_dir, reload_interval=0.05), raise_server_exceptions=False)
    before = serving.get("/health").json()["label_generation"]
    bodies = [
        {"account_id": a, "email_sentence_embeddings": embeddings_json(unit_vectors(2, seed=i))}
        for i, a in enumerate("abc")
    ]
    statuses: list[int] = []

    def load(stop) -> None:
        client = TestClient(serving.app, raise_server_exceptions=False)
        i = 0
        while not stop.is_set():
            statuses.append(client.post("/predict", json=bodies[i % 3]).status_code)
            i += 1

    with in_background(load):
        time.sleep(0.3)
        writer = Registry(export_dir)  # the command's path: another writer of the registry
        result = _update(writer, "b", add=["Chargeback"], rename={"Billing": "Billing::Invoices"})
        live = lambda: serving.get("/health").json()["label_generation"] == result["generation"]  # noqa: E731
        wait_for(live, 1.0, "the update was not live")
        time.sleep(0.3)
    assert result["generation"] != before
    assert len(statuses) > 20 and set(statuses) == {200}
    labels = {x["label"] for x in serving.get("/accounts/b/labels").json()["labels"]}
    assert labels == {"Billing::Invoices", "Chargeback", "Other"}


def _damage_latest_row(registry_dir, account: str) -> None:
    with sqlite3.connect(registry_dir / "registry.sqlite") as db:
        (seq,) = db.execute("SELECT max(seq) FROM label_rows WHERE account=?", (account,)).fetchone()
        db.execute("UPDATE label_rows SET blob=? WHERE account=? AND seq=?", (b"torn", account, seq))


def test_a_damaged_row_quarantines_that_merchant_only(client, export_dir):
    writer = Registry(export_dir)
    _update(writer, "a", add=["Good"])
    assert "Good" in _labels(client, "a")
    _update(writer, "a", add=["Damaged"])
    _damage_latest_row(export_dir, "a")
    health = client.get("/health").json()
    assert health["quarantined"] == ["a"] and health["last_reload_error"] is None
    ready = client.get("/ready")
    assert ready.status_code == 200 and "a" in ready.json()["quarantined"]
    labels = _labels(client, "a")  # its last good labels keep serving
    assert "Good" in labels and "Damaged" not in labels
    r = client.post("/predict", json={"account_id": "a", "email_sentence_embeddings": None})
    assert r.status_code == 200
    r = client.post("/admin/labels", json={"account_id": "b", "add": ["Free"]}, headers=AUTH)
    assert r.status_code == 200 and "Free" in _labels(client, "b")  # other merchants update freely
    # a server started now serves the merchant's last good row too
    fresh = TestClient(create_app(export_dir, reload_interval=0.0))
    assert fresh.get("/health").json()["quarantined"] == ["a"]
    assert "Good" in {x["label"] for x in fresh.get("/accounts/a/labels").json()["labels"]}
    # the next change of that merchant is built from the change log (the truth): quarantine over
    r = client.post("/admin/labels", json={"account_id": "a", "add": ["Later"]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert {"Good", "Damaged", "Later"} <= set(_labels(client, "a"))
    assert client.get("/health").json()["quarantined"] == []


def test_a_failed_look_at_the_registry_is_retried_not_held_against_it(client, export_dir, monkeypatch):
    live = client.app.state.service.live
    real = live.registry.head
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real()

    monkeypatch.setattr(live.registry, "head", flaky)
    _update(Registry(export_dir), "b", add=["Later"])
    assert client.get("/ready").status_code == 503  # the first look failed
    assert "disk I/O error" in client.get("/health").json()["last_reload_error"]
    deadline = time.monotonic() + 5
    while "Later" not in _labels(client, "b"):  # retried with a growing pause, then caught up
        assert time.monotonic() < deadline, "never recovered"
        time.sleep(0.05)
    assert client.get("/ready").status_code == 200


def test_an_update_writes_only_its_merchants_rows_and_a_reload_reads_only_those(client, export_dir):
    """Per-merchant storage: one change row and one label row for the changed merchant, and a
    server catching up reads only that merchant's row."""
    live = client.app.state.service.live
    before = {a: live.predictor.view.labels_of(a) for a in ("a", "b", "c")}
    _update(Registry(export_dir), "b", add=["Chargeback"])
    with sqlite3.connect(export_dir / "registry.sqlite") as db:
        rows = db.execute("SELECT DISTINCT account FROM label_rows").fetchall()
    assert rows == [("b",)]
    client.get("/health")  # catches up
    view = live.predictor.view
    assert view.labels_of("a") is before["a"] and view.labels_of("c") is before["c"]
    assert "Chargeback" in view.labels_of("b").labels


def test_rollback_undoes_a_merchants_last_change_in_effect(client, export_dir):
    writer = Registry(export_dir)
    original = _served_labels(export_dir, "b")
    _update(writer, "b", add=["One"])
    _update(writer, "b", add=["Two"])
    r = client.post("/admin/labels/rollback", json={"account_id": "b"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert set(_labels(client, "b")) == {*original, "One"}
    _update(writer, "b", add=["Three"])  # on top of the rolled-back labels
    writer.revert("b", "test")  # undoes "Three", not "Two" (rolled back before)
    assert set(_served_labels(export_dir, "b")) == {*original, "One"}
    writer.revert("b", "test")
    assert _served_labels(export_dir, "b") == original
    with pytest.raises(UpdateError, match="no label change to roll back"):
        writer.revert("b", "test")
    kinds = [c["kind"] for c in writer.changes("b")]
    assert kinds == ["revert", "revert", "update", "revert", "update", "update"]  # every change is kept


def test_a_merchant_created_by_an_update_cannot_be_rolled_back_to_nothing(export_dir):
    writer = Registry(export_dir)
    _update(writer, "newco", add=["Billing"], create_account=True)
    with pytest.raises(UpdateError, match="created by that change"):
        writer.revert("newco", "test")
    assert _served_labels(export_dir, "newco") == ("Billing",)


def test_an_account_id_is_stripped_once_for_the_whole_update(export_dir):
    result = _update(Registry(export_dir), " b ", add=["Padded"])
    assert "Padded" in result["labels"] and "Padded" in _served_labels(export_dir, "b")


def test_every_change_records_who_made_it(client, export_dir):
    r = client.post(
        "/admin/labels", json={"account_id": "a", "add": ["Who"]}, headers={**AUTH, "X-Changed-By": "agent-7"}
    )
    assert r.status_code == 200 and r.json()["by"] == "api:agent-7"
    assert Registry(export_dir).changes("a")[0]["by"] == "api:agent-7"


def test_the_command(export_dir, capsys):  # the real all-MiniLM-L6-v2 of the export, in ONNX Runtime
    code = admin.main(
        ["account=a", "add=[Damaged Item]", 'rename=["Other=Something Else"]', f"registry_dir={export_dir}"]
    )
    assert code == 0, capsys.readouterr().err
    labels = _served_labels(export_dir, "a")
    assert set(labels) == {"Damaged Item", "Refund", "Shipping::Tracking", "Something Else"}
    assert admin.main(["account=a", "retire=[Nope]", f"registry_dir={export_dir}"]) == 2
    assert "no label 'Nope'" in capsys.readouterr().err
    assert admin.main(["account=a", "history=true", f"registry_dir={export_dir}"]) == 0
    assert "Damaged Item" in capsys.readouterr().out
    assert admin.main(["account=a", "rollback=true", f"registry_dir={export_dir}"]) == 0
    assert "Damaged Item" not in _served_labels(export_dir, "a")
    assert admin.main(["a", "--retire", "Nope"]) == 2  # flags are gone: key=value
    assert admin.main(["acount=a"]) == 2 and "acount" in capsys.readouterr().err


def test_a_row_of_another_models_shape_is_quarantined_and_rebuilt_by_the_next_change(client, export_dir):
    import dataclasses

    from tagger.serving.label_store import encode_labels

    writer = Registry(export_dir)
    _update(writer, "a", add=["Good"])
    _update(writer, "a", add=["Misfit"])
    latest = writer.labels_of(writer.served()[1], "a")
    misfit = dataclasses.replace(latest, vectors=np.ascontiguousarray(latest.vectors[..., :10]))
    blob, sha = encode_labels(misfit)
    with sqlite3.connect(export_dir / "registry.sqlite") as db:  # valid SHA-256, wrong shape
        (seq,) = db.execute("SELECT max(seq) FROM label_rows WHERE account='a'").fetchone()
        db.execute("UPDATE label_rows SET blob=?, sha=? WHERE account='a' AND seq=?", (blob, sha, seq))
    assert client.get("/health").json()["quarantined"] == ["a"]
    fresh = TestClient(create_app(export_dir, reload_interval=0.0))  # a restart keeps the last good row
    assert fresh.get("/health").json()["quarantined"] == ["a"]
    assert {"Good"} == {x["label"] for x in fresh.get("/accounts/a/labels").json()["labels"]} - {
        "Other",
        "Refund",
        "Shipping::Tracking",
    }
    r = client.post("/admin/labels", json={"account_id": "a", "add": ["Later"]}, headers=AUTH)
    assert r.status_code == 200, r.text  # rebuilt from the change log, not a 500
    assert {"Good", "Later"} <= set(_labels(client, "a")) and client.get("/health").json()[
        "quarantined"
    ] == []
