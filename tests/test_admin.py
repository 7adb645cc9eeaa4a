"""Label updates on a served export: the admin endpoint, the command, refusals, hot reload under load."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import FakeEmbedder, embeddings_json, exported, served_copy, unit_vectors
from fastapi.testclient import TestClient
from test_export import trained  # noqa: F401  (the module-scoped trained model)

from tagger.serving import admin, label_store
from tagger.serving.api import create_app
from tagger.serving.label_store import current_generation, labels_dir
from tagger.serving.onnx_predictor import OnnxPredictor

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _embed(texts: list[str]) -> np.ndarray:
    return FakeEmbedder().embed(texts)


@pytest.fixture()
def export_dir(trained, tmp_path):  # noqa: F811
    return served_copy(exported(trained, "admin-onnx"), tmp_path)


@pytest.fixture()
def client(export_dir):
    app = create_app(export_dir, admin_token=TOKEN, embed=_embed, reload_interval=0.0)
    return TestClient(app, raise_server_exceptions=False)


def _labels(client, account: str) -> dict[str, int]:
    return {x["label"]: x["n_train"] for x in client.get(f"/accounts/{account}/labels").json()["labels"]}


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
    generation = current_generation(export_dir)
    r = client.post("/admin/labels", json=body, headers=headers)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    fields = [d["field"] for d in detail] if isinstance(detail, list) else [detail["field"]]
    assert field in fields, fields
    assert current_generation(export_dir) == generation
    assert client.get("/health").json()["label_generation"] == generation


def test_the_admin_endpoint_is_off_without_a_token(export_dir):
    client = TestClient(create_app(export_dir, embed=_embed), raise_server_exceptions=False)
    r = client.post("/admin/labels", json={"account_id": "a", "add": ["X"]}, headers=AUTH)
    assert r.status_code == 403


def test_hot_reload_under_concurrent_requests(export_dir):
    """A second server process on the same export sees a label update within 1 s; no request fails."""
    serving = TestClient(create_app(export_dir, reload_interval=0.05), raise_server_exceptions=False)
    before = serving.get("/health").json()["label_generation"]
    bodies = [
        {"account_id": a, "email_sentence_embeddings": embeddings_json(unit_vectors(2, seed=i))}
        for i, a in enumerate("abc")
    ]
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        client = TestClient(serving.app, raise_server_exceptions=False)
        i = 0
        while not stop.is_set():
            statuses.append(client.post("/predict", json=bodies[i % 3]).status_code)
            i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        writer = OnnxPredictor(export_dir)  # the command's path: another process writing the update
        update = admin.LabelUpdate("b", add=["Chargeback"], rename={"Billing": "Billing::Invoices"})
        result = admin.update_export(writer, [update], _embed, by="test")
        written = time.perf_counter()
        while serving.get("/health").json()["label_generation"] != result["generation"]:
            assert time.perf_counter() - written < 1.0, "the update was not live within 1 s"
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert result["generation"] != before
    assert len(statuses) > 20 and set(statuses) == {200}
    labels = {x["label"] for x in serving.get("/accounts/b/labels").json()["labels"]}
    assert labels == {"Billing::Invoices", "Chargeback", "Other"}


def test_a_broken_generation_is_refused_and_the_last_good_one_keeps_serving(client, export_dir):
    good = current_generation(export_dir)
    writer = OnnxPredictor(export_dir)
    name = label_store.write_generation(export_dir, {"a": writer.view.labels_of("a")}, {"kind": "test"})
    version = label_store.read_log(export_dir, label_store.generation_number(name))["accounts"]["a"]
    (labels_dir(export_dir) / version / "label_vectors.npy").write_bytes(b"truncated")
    health = client.get("/health").json()
    assert health["label_generation"] == good and name in health["last_reload_error"]
    r = client.post("/predict", json={"account_id": "a", "email_sentence_embeddings": None})
    assert r.status_code == 200


def test_an_update_writes_only_its_merchants_labels_and_a_reload_reads_only_those(export_dir):
    """Per-merchant storage: the base is untouched, one version directory and one log entry appear,
    and a server catching up reads the changed merchant's files only."""
    root = labels_dir(export_dir)
    base = {p: p.stat().st_mtime_ns for p in (root / "base").iterdir()}
    serving = OnnxPredictor(export_dir)
    before = {a: serving.view.labels_of(a) for a in ("a", "b", "c")}
    writer = OnnxPredictor(export_dir)
    admin.update_export(writer, [admin.LabelUpdate("b", add=["Chargeback"])], _embed, by="test")
    assert {p: p.stat().st_mtime_ns for p in (root / "base").iterdir()} == base
    assert [p.name for p in (root / "accounts").iterdir()] == [label_store.account_key("b")]
    assert serving.refresh()
    assert serving.view.labels_of("a") is before["a"] and serving.view.labels_of("c") is before["c"]
    assert "Chargeback" in serving.view.labels_of("b").labels


def _update(predictor: OnnxPredictor, account: str, **change) -> str:
    update = admin.LabelUpdate(account, **change)
    return admin.update_export(predictor, [update], _embed, by="test")["generation"]


def _rollback(export_dir, account: str) -> str:
    with label_store.lock(export_dir):
        return label_store.rollback(export_dir, account)


def test_rollback_brings_back_a_merchants_previous_labels(export_dir):
    writer = OnnxPredictor(export_dir)
    original = writer.view.labels_of("b").labels
    _update(writer, "b", add=["One"])
    _update(writer, "b", add=["Two"])
    _rollback(export_dir, "b")
    assert writer.refresh() and set(writer.view.labels_of("b").labels) == {*original, "One"}
    _update(writer, "b", add=["Three"])  # on top of the rolled-back labels
    _rollback(export_dir, "b")  # back to what "Three" replaced, not to "Two" (rolled back before)
    assert writer.refresh() and set(writer.view.labels_of("b").labels) == {*original, "One"}
    _rollback(export_dir, "b")
    assert writer.refresh() and writer.view.labels_of("b").labels == original
    with pytest.raises(ValueError, match="no earlier version"):
        _rollback(export_dir, "b")
    assert OnnxPredictor(export_dir).view.labels_of("b").labels == original  # what a new server reads


def test_a_merchant_created_by_an_update_cannot_be_rolled_back_to_nothing(export_dir):
    writer = OnnxPredictor(export_dir)
    _update(writer, "newco", add=["Billing"], create_account=True)
    with pytest.raises(ValueError, match="no earlier version"):
        _rollback(export_dir, "newco")
    assert OnnxPredictor(export_dir).view.labels_of("newco").labels == ("Billing",)


def test_a_refused_merchant_version_is_fixed_by_rolling_it_back(client, export_dir):
    writer = OnnxPredictor(export_dir)
    good = client.get("/health").json()["label_generation"]
    bad = _update(writer, "a", add=["Broken"])
    version = label_store.live_entry(export_dir, "a", label_store.generation_number(bad))["path"]
    (labels_dir(export_dir) / version / "labels.json").write_text("{}")
    assert client.get("/health").json()["label_generation"] == good  # refused
    fixed = _rollback(export_dir, "a")
    health = client.get("/health").json()
    assert health["label_generation"] == fixed and health["last_reload_error"] is None
    assert "Broken" not in _labels(client, "a")


def test_startup_reads_the_latest_snapshot_not_the_whole_log(export_dir, monkeypatch):
    monkeypatch.setattr(label_store, "SNAPSHOT_EVERY", 2)
    writer = OnnxPredictor(export_dir)
    for i in range(5):
        _update(writer, "abc"[i % 3], add=[f"Reason {i}"])
    log = labels_dir(export_dir) / "log"
    assert (log / "live-g000004.json").exists()
    for n in range(1, 5):  # what the snapshot covers is not read again
        (log / f"g{n:06d}.json").unlink()
    fresh = OnnxPredictor(export_dir)
    assert fresh.view.generation == writer.view.generation == "g000005"
    for account in "abc":
        assert fresh.view.labels_of(account).labels == writer.view.labels_of(account).labels


def test_an_account_id_is_stripped_once_for_the_whole_update(export_dir):
    writer = OnnxPredictor(export_dir)
    result = admin.update_export(writer, [admin.LabelUpdate(" b ", add=["Padded"])], _embed, by="test")
    assert "Padded" in result["accounts"]["b"] and "Padded" in writer.view.labels_of("b").labels


def test_the_command(export_dir, capsys):  # the real all-MiniLM-L6-v2 of the export, in ONNX Runtime
    code = admin.main(
        ["account=a", "add=[Damaged Item]", 'rename=["Other=Something Else"]', f"export_dir={export_dir}"]
    )
    assert code == 0, capsys.readouterr().err
    labels = OnnxPredictor(export_dir).view.labels_of("a").labels
    assert set(labels) == {"Damaged Item", "Refund", "Shipping::Tracking", "Something Else"}
    assert admin.main(["account=a", "retire=[Nope]", f"export_dir={export_dir}"]) == 2
    assert "no label 'Nope'" in capsys.readouterr().err
    assert admin.main(["a", "--retire", "Nope"]) == 2  # flags are gone: key=value
    assert admin.main(["acount=a"]) == 2 and "acount" in capsys.readouterr().err


def test_a_writer_that_crashed_before_current_moved_leaves_nothing_live(export_dir, monkeypatch):
    """A crash after the log entry, the histories and the snapshot but before CURRENT: the next
    writer undoes them, so neither a reader, a rollback nor a snapshot ever sees that generation."""
    monkeypatch.setattr(label_store, "SNAPSHOT_EVERY", 2)
    writer = OnnxPredictor(export_dir)
    _update(writer, "a", add=["First"])  # g000001
    before = {x: writer.view.labels_of(x).labels for x in "ab"}
    real = label_store._set_current

    def crash(root, name):
        raise OSError("disk gone")

    monkeypatch.setattr(label_store, "_set_current", crash)
    with pytest.raises(OSError):
        update = [admin.LabelUpdate("a", add=["Never"]), admin.LabelUpdate("b", add=["Never"])]
        admin.update_export(OnnxPredictor(export_dir), update, _embed, by="test")
    assert (labels_dir(export_dir) / "log" / "live-g000002.json").exists()  # the crash's leftovers
    monkeypatch.setattr(label_store, "_set_current", real)
    _update(OnnxPredictor(export_dir), "c", add=["Later"])  # g000002 again, for another merchant
    fresh = OnnxPredictor(export_dir)  # reads the new snapshot
    assert fresh.view.generation == "g000002"
    assert {x: fresh.view.labels_of(x).labels for x in "ab"} == before
    assert "Later" in fresh.view.labels_of("c").labels
    _rollback(export_dir, "a")  # back to the exported labels, not to the update that never went live
    assert "First" not in OnnxPredictor(export_dir).view.labels_of("a").labels
    with pytest.raises(ValueError, match="no label update"):
        _rollback(export_dir, "b")
