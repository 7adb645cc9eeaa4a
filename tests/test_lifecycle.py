"""The life of a model: immutable exports in a registry, promote and rollback with every label change
carried onto the new model, idempotent admin changes, deadlines, and refusals that write nothing."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
from conftest import (
    AUTH,
    TOKEN,
    embeddings_json,
    exported,
    fake_embed,
    in_background,
    served_copy,
    tiny_run,
    unit_vectors,
    wait_for,
)
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir

from tagger.manifest import ArtifactError
from tagger.model.label_update import LabelUpdate, UpdateError
from tagger.paths import PROJECT_ROOT
from tagger.serving.api import create_app
from tagger.serving.limits import configured_limits
from tagger.serving.onnx_export import export_model
from tagger.serving.registry import LockTimeout, Registry
from tagger.training import run


@pytest.fixture(scope="module")
def retrained(trained):
    """The next model: trained on the same tickets after merchant a's agents began tagging half of
    its "Refund" tickets "Refunds" (so it knows both names), exported."""
    _, data, tmp = trained
    frame = pd.read_parquet(data)
    refund = np.flatnonzero((frame["account_id"] == "a") & (frame["contact_reason"] == "Refund"))
    frame.loc[refund[::2], "contact_reason"] = "Refunds"
    later = tmp / "later.parquet"
    frame.to_parquet(later, index=False)
    overrides = [
        *tiny_run(tmp / "later", later),
        "data.val_days=0.05",
        f"output_dir={tmp / 'later-out'}",
        f"models_dir={tmp / 'later-models'}",
        "trainer.max_epochs=2",
        "compare_with=[]",
        "seed=7",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        out = run(compose("config", overrides=overrides))
    export_model(out["model_dir"], tmp / "later-onnx", parity_tickets=50)
    return tmp / "later-onnx"


@pytest.fixture()
def registry_dir(trained, tmp_path):
    return served_copy(exported(trained, "lifecycle-onnx"), tmp_path)


def _labels(registry: Registry, account: str) -> set[str]:
    view, _ = registry.label_view(registry.served()[1])
    return set(view.labels_of(account).labels)


def _change(registry: Registry, account: str, **change) -> dict:
    return registry.update(LabelUpdate(account, **change), "test", fake_embed)


def test_promote_carries_every_label_change_and_says_what_it_could_not(registry_dir, retrained):
    registry = Registry(registry_dir)
    first = registry.served()[1]
    _change(registry, "a", add=["Billing::Invoice copy"])
    _change(registry, "a", rename={"Refund": "Refunds"})
    _change(registry, "a", retire=["Other"])
    ticket = unit_vectors(2, seed=3)
    _change(registry, "b", examples={"Billing": [ticket]})
    _change(registry, "newco", create_account=True, add=["Order Status", "Returns"])
    served_a = _labels(registry, "a")
    assert served_a == {"Billing::Invoice copy", "Refunds", "Shipping::Tracking"}

    version, new = registry.register(retrained, by="test")
    assert new and version != first
    report = registry.promote(version, by="test")
    assert registry.served()[1] == version and report["previous"] == first
    assert report["merchants_carried"] == 3
    # all three changes of merchant a are served by the new model, and the new merchant too
    assert _labels(registry, "a") == served_a
    assert _labels(registry, "newco") == {"Order Status", "Returns"}
    # the new model learnt "Refunds" and still knows "Refund": the rename retires the old name, said so
    notes = report["not_carried_as_asked"]["a"]
    assert any("already knows 'Refunds'" in n and "'Refund' retired" in n for n in notes), notes
    # the example was folded in under the new model too: its ticket count is one more than trained
    view, _ = registry.label_view(version)
    b = view.labels_of("b")
    base_b = registry.model(version).base.accounts["b"]
    assert b.n_train[b.labels.index("Billing")] == base_b.n_train[base_b.labels.index("Billing")] + 1

    # a change made under the new model, then a rollback: the old model serves every change
    _change(registry, "a", add=["Made later"])
    back = registry.rollback(by="test")
    assert registry.served()[1] == first and back["kind"] == "rollback"
    assert _labels(registry, "a") == {*served_a, "Made later"}
    assert _labels(registry, "newco") == {"Order Status", "Returns"}
    # promoting what is served changes nothing; re-running promote of the new one replays again
    assert registry.promote(first, by="test")["unchanged"]
    registry.promote(version, by="test")
    assert _labels(registry, "a") == {*served_a, "Made later"}


def test_a_promotion_reaches_a_running_server_without_a_failed_request(registry_dir, retrained):
    serving = TestClient(create_app(registry_dir, reload_interval=0.05), raise_server_exceptions=False)
    first = serving.get("/health").json()["model_version"]
    body = {"account_id": "a", "email_sentence_embeddings": embeddings_json(unit_vectors(2, seed=1))}
    answers: list[tuple[int, str]] = []

    def load(stop) -> None:
        client = TestClient(serving.app, raise_server_exceptions=False)
        while not stop.is_set():
            r = client.post("/predict", json=body)
            answers.append((r.status_code, r.json().get("model_version", "")))

    with in_background(load):
        time.sleep(0.3)
        registry = Registry(registry_dir)  # another process's writer: the command
        version, _ = registry.register(retrained, by="test")
        registry.promote(version, by="test")
        served = lambda: serving.get("/health").json()["model_version"].startswith(version)  # noqa: E731
        wait_for(served, 5, "the promotion was not served")
        time.sleep(0.3)
    statuses = {s for s, _ in answers}
    versions = {v.split("/")[0] for _, v in answers}
    assert statuses == {200} and len(answers) > 20
    assert versions == {first.split("/")[0], version}  # both models answered, nothing failed


def test_the_same_idempotency_key_applies_a_change_once(registry_dir):
    client = TestClient(create_app(registry_dir, admin_token=TOKEN, embed=fake_embed, reload_interval=0.0))
    body = {"account_id": "b", "add": ["Chargeback"]}
    headers = {**AUTH, "Idempotency-Key": "retry-1"}
    first = client.post("/admin/labels", json=body, headers=headers)
    again = client.post("/admin/labels", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json()["replayed"] and {**again.json(), "replayed": False} == first.json()
    assert len(Registry(registry_dir).changes("b")) == 1
    other = client.post("/admin/labels", json={"account_id": "b", "add": ["Other thing"]}, headers=headers)
    assert other.status_code == 422 and other.json()["detail"]["field"] == "Idempotency-Key"


def test_an_update_waits_for_the_lock_less_than_its_deadline_and_never_commits_after(registry_dir):
    limits = configured_limits(request_timeout_s=2.0)
    app = create_app(
        registry_dir, limits, admin_token=TOKEN, embed=fake_embed, reload_interval=0.0, lock_wait=5.0
    )
    client = TestClient(app, raise_server_exceptions=False)
    holder = sqlite3.connect(registry_dir / "registry.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the registry
    try:
        started = time.perf_counter()
        r = client.post("/admin/labels", json={"account_id": "b", "add": ["Late"]}, headers=AUTH)
        took = time.perf_counter() - started
    finally:
        holder.execute("ROLLBACK")
    assert r.status_code == 503 and took < 2.0, (r.status_code, took)  # before the gate's deadline
    time.sleep(0.2)
    assert Registry(registry_dir).changes("b") == []  # and nothing was committed afterwards
    registry = Registry(registry_dir)

    def slow(texts):  # the name encoder stalls past the deadline: the change is refused, not committed
        time.sleep(1.0)
        return fake_embed(texts)

    with pytest.raises(UpdateError, match="deadline"):
        registry.update(LabelUpdate("b", add=["Late"]), "test", slow, deadline=time.monotonic() + 0.8)
    assert registry.changes("b") == [] and "Late" not in _labels(registry, "b")


def test_a_second_writer_waits_then_gives_up_writing_nothing(registry_dir):
    holder = sqlite3.connect(registry_dir / "registry.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LockTimeout):
            Registry(registry_dir, lock_wait=0.2).update(LabelUpdate("b", add=["X"]), "test", fake_embed)
    finally:
        holder.execute("ROLLBACK")


def test_exports_are_immutable_and_registering_again_adds_nothing(trained, registry_dir, tmp_path):
    registry = Registry(registry_dir)
    version = registry.served()[1]
    model_dir = registry.model_dir(version)
    modes = [p.stat().st_mode for p in model_dir.rglob("*") if p.is_file()]
    assert modes and not any(m & 0o222 for m in modes)  # read-only (root could still write: said in the docs)
    source = exported(trained, "lifecycle-onnx")
    assert registry.register(source, by="test") == (version, False)
    with pytest.raises(ArtifactError, match="exists"):  # export never writes into an existing directory
        export_model(trained[0], model_dir, parity_tickets=10)
    with pytest.raises(ArtifactError, match="exists"):
        export_model(trained[0], source, parity_tickets=10)
    assert [m["version"] for m in registry.models()] == [version]


def test_promote_and_rollback_through_the_api_and_the_command(registry_dir, retrained, capsys):
    from tagger.serving import models

    client = TestClient(create_app(registry_dir, admin_token=TOKEN, embed=fake_embed, reload_interval=0.0))
    first = Registry(registry_dir).served()[1]
    assert models.main(["register", f"path={retrained}", f"registry_dir={registry_dir}"]) == 0
    assert models.main(["list", f"registry_dir={registry_dir}"]) == 0
    later = Registry(registry_dir).models()[-1]["version"]
    r = client.post("/admin/promote", json={"model_version": later}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert client.get("/health").json()["model_version"].startswith(later)
    assert client.post("/admin/promote", json={"model_version": "nope"}, headers=AUTH).status_code == 404
    assert client.post("/admin/rollback", headers=AUTH).status_code == 200
    assert client.get("/health").json()["model_version"].startswith(first)
    assert models.main(["promote", f"version={later}", f"registry_dir={registry_dir}"]) == 0
    assert "now serving" in capsys.readouterr().out
    assert models.main(["rollback", f"registry_dir={registry_dir}"]) == 0
    assert Registry(registry_dir).served()[1] == first
    assert models.main(["promote", "version=nope", f"registry_dir={registry_dir}"]) == 1
    assert client.get("/admin/models", headers=AUTH).json()["promotions"][0]["kind"] == "rollback"


def test_a_writer_killed_at_random_instants_always_leaves_a_committed_state(registry_dir, retrained):
    """kill -9 during label updates and promotions (python -m reliability crash runs 100 points)."""
    from reliability.crash import run_crash

    registry = Registry(registry_dir)
    versions = [registry.served()[1], registry.register(retrained, by="test")[0]]
    registry.close()
    result = run_crash(registry_dir, versions, points=12, seed=1)
    assert result["recovered"] == 12, result["failures"]
    assert result["acknowledged_lost"] == 0 and result["acknowledged_updates"] > 0
