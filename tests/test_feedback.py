"""Agents' corrections: the guard rails of folding them in, live precision and raised thresholds, the
durable store (idempotent, crash-safe folds, rollback), POST /feedback and the command."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import AUTH, TOKEN, embeddings_json, exported, fake_embed, serve, served_copy, unit_vectors
from fastapi.testclient import TestClient

from tagger.model.corrections import (
    Correction,
    FoldRule,
    correction_batch,
    live_precision,
    recalibrated_threshold,
)
from tagger.model.label_update import AccountLabels, LabelState, LabelUpdate, apply_update, turn_at_most
from tagger.serving import feedback as feedback_cli
from tagger.serving.api import create_app
from tagger.serving.feedback import FeedbackStore, calibrate_account, fold_account
from tagger.serving.registry import Registry

RULE = FoldRule(min_agree=2, example_weight=3.0, max_turn_deg=30.0, add_unknown=True)


def _c(agent: str, given: str | None = "Other", seed: int | None = 0, **more) -> Correction:
    emb = None if seed is None else unit_vectors(2, seed)
    return Correction("a", agent, given, embeddings=emb, **more)


# ---- the guard rails -------------------------------------------------------------------------
def test_a_label_moves_only_once_enough_corrections_agree():
    labels = ["Other", "Refund", "Shipping::Tracking"]
    one = correction_batch("a", labels, [_c("Refund")], RULE)
    assert one.update is None and one.waiting == {"Refund": 1}
    two = correction_batch("a", labels, [_c("refund", seed=1), _c("Refund", seed=2), _c("Other")], RULE)
    # case-insensitive, spelt as the merchant spells it; the agreeing review moves nothing
    assert list(two.update.examples) == ["Refund"] and two.used == [0, 1]
    assert two.update.example_weight == 3.0 and two.update.max_turn_deg == 30.0 and not two.update.add


def test_an_unknown_label_is_added_by_name_only_when_allowed_and_without_embeddings_nothing_moves():
    labels = ["Other"]
    added = correction_batch("a", labels, [_c("Returns", seed=1), _c("Returns", seed=2)], RULE)
    assert added.update.add == ["Returns"] and len(added.update.examples["Returns"]) == 2
    strict = FoldRule(2, 3.0, 30.0, add_unknown=False)
    refused = correction_batch("a", labels, [_c("Returns", seed=1), _c("Returns", seed=2)], strict)
    assert refused.update is None and refused.waiting == {"Returns": 2}
    blind = correction_batch("a", labels, [_c("Returns", seed=None), _c("Returns", seed=None)], RULE)
    assert blind.update is None and blind.waiting == {}


def _state(n_train: int = 0) -> LabelState:
    vectors = unit_vectors(2, 5)[:, None, :32].copy()
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    labels = AccountLabels(
        ("Other", "Refund"),
        ("other", "refund"),
        np.array([n_train, n_train]),
        np.array([0.5, 0.5]),
        vectors,
        unit_vectors(2, 6),
    )
    return LabelState({"a": labels})


def _fold(state: LabelState, tickets: np.ndarray, **weights) -> np.ndarray:
    update = LabelUpdate("a", examples={"Refund": [np.ones((1, 384), np.float32)] * len(tickets)}, **weights)
    after = apply_update(
        state,
        update,
        lambda texts: (unit_vectors(len(texts), 1), unit_vectors(len(texts), 1)[:, :32]),
        lambda labels, batch: tickets,
        name_weight=1.0,
    )
    return after.accounts["a"].vectors[1, 0]


def test_a_batch_turns_a_label_at_most_max_turn_deg_and_weight_counts():
    state = _state(n_train=10)
    before = state.accounts["a"].vectors[1, 0]
    far = -np.tile(before, (5, 1))  # corrections pointing straight away from the label
    far[:, 0] += 0.1
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    light = _fold(state, far[:1])
    heavy = _fold(state, far[:1], example_weight=5.0)
    angle = lambda v: np.degrees(np.arccos(np.clip(before @ v, -1, 1)))  # noqa: E731
    assert angle(heavy) > angle(light) > 0
    capped = _fold(state, far, example_weight=30.0, max_turn_deg=20.0)
    assert angle(capped) == pytest.approx(20.0, abs=1e-3)
    assert np.linalg.norm(capped) == pytest.approx(1.0, abs=1e-5)


def test_turn_at_most_leaves_a_small_turn_alone():
    a = unit_vectors(1, 1)[:, :8]
    a /= np.linalg.norm(a)
    b = a + 0.01 * unit_vectors(1, 2)[:, :8]
    b /= np.linalg.norm(b)
    assert np.allclose(turn_at_most(a, b, 30.0), b)


# ---- live precision and thresholds ------------------------------------------------------------
def test_precision_kept_leaves_the_threshold_and_precision_broken_raises_it():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 400)
    assert recalibrated_threshold(confidence, np.ones(400, bool), 0.95, 0.05, 30) is None
    # right above 0.8 only: the promise is broken, and the threshold goes to where it holds again
    correct = confidence > 0.8
    raised = recalibrated_threshold(confidence, correct, 0.95, 0.05, 30)
    assert 0.79 < raised < 0.85
    kept = confidence >= raised
    assert correct[kept].mean() >= 0.95 and kept.sum() >= 30
    assert recalibrated_threshold(confidence, np.zeros(400, bool), 0.95, 0.05, 30) > 1.0  # answer nothing
    assert recalibrated_threshold(confidence[:10], correct[:10] & False, 0.95, 0.05, 30) is None  # too few
    p = live_precision(correct, 0.05)
    assert p.low < p.estimate < p.high and p.reviewed == 400 and p.hits == correct.sum()


# ---- the store and its folds ------------------------------------------------------------------
@pytest.fixture()
def registry_dir(trained, tmp_path):
    return served_copy(exported(trained, "feedback-onnx"), tmp_path)


def _returns(i: int) -> Correction:
    """A correction naming a label account "a" does not have, in a direction of its own."""
    v = unit_vectors(1, 7)[0] + 0.05 * unit_vectors(1, 100 + i)[0]
    return Correction("a", "Returns", "Other", 0.9, False, (v / np.linalg.norm(v))[None], f"t{i}")


def test_corrections_fold_into_the_label_store_once_and_a_rollback_undoes_them(registry_dir):
    registry, store = Registry(registry_dir), FeedbackStore(registry_dir)
    assert store.add([_returns(0)], "agent", key="k1") == {"stored": 1, "pending": {"a": 1}}
    assert store.add([_returns(0)], "agent", key="k1")["replayed"]  # a retry stores nothing twice
    waiting = fold_account(store, registry, "a", RULE, "test", fake_embed)
    assert waiting["folded"] == 0 and waiting["waiting"] == {"Returns": 1}
    store.add([_returns(1)], "agent")
    done = fold_account(store, registry, "a", RULE, "test", fake_embed)
    assert done["folded"] == 2 and done["labels_added"] == ["Returns"]
    version = registry.serving()[1]
    assert "Returns" in registry.labels_of(version, "a").labels
    assert store.counts("a") == {"folded": 2, "pending": 0, "moves_nothing": 0, "refused": 0}
    assert fold_account(store, registry, "a", RULE, "test", fake_embed)["why"] == "nothing pending"
    registry.revert("a", "test")  # one rollback undoes the batch; its corrections are not folded again
    assert "Returns" not in registry.labels_of(version, "a").labels
    assert fold_account(store, registry, "a", RULE, "test", fake_embed)["folded"] == 0


def test_a_fold_interrupted_after_its_registry_change_is_finished_not_made_twice(registry_dir, monkeypatch):
    registry, store = Registry(registry_dir), FeedbackStore(registry_dir)
    store.add([_returns(0), _returns(1)], "agent")

    def crash(*args, **kwargs):  # the registry change commits, then the process dies
        raise SystemExit("killed")

    monkeypatch.setattr(store, "mark", crash)
    with pytest.raises(SystemExit):
        fold_account(store, registry, "a", RULE, "test", fake_embed)
    changes = len(registry.changes("a"))
    monkeypatch.undo()
    again = fold_account(FeedbackStore(registry_dir), registry, "a", RULE, "test", fake_embed)  # restarted
    assert again["folded"] == 2 and len(registry.changes("a")) == changes  # the same change, answered again
    assert store.counts("a")["folded"] == 2


def test_reviews_that_break_the_promise_raise_the_served_threshold(registry_dir):
    registry, store = Registry(registry_dir), FeedbackStore(registry_dir)
    version = registry.serving()[1]
    reviews = [
        Correction("a", "Refund" if i % 2 else "Other", "Other", 0.5 + i / 100, model_version=f"{version}/g0")
        for i in range(50)
    ]
    store.add(reviews, "agent")
    app = create_app(registry_dir, admin_token=TOKEN, embed=fake_embed, reload_interval=0.0)
    client = TestClient(app, raise_server_exceptions=False)
    before = client.get("/accounts/a/labels").json()["threshold"]
    target = app.state.service.live.current.scorer.limits.precision_target
    out = calibrate_account(store, registry, "a", target, 0.05, 30, "test")
    assert out["reviewed"] == 50 and out["precision"] == pytest.approx(0.5)
    after = client.get("/accounts/a/labels").json()["threshold"]
    assert after == out["threshold_raised_to"] > 1.0 and (before is None or after > before)


# ---- the API and the command ------------------------------------------------------------------
def _body(n: int = 2, **more) -> dict:
    rows = []
    for i in range(n):
        c = _returns(i)
        rows.append(
            {
                "account_id": "a",
                "agent_label": "Returns",
                "given_label": "Other",
                "confidence": 0.9,
                "ticket_id": f"t{i}",
                "email_sentence_embeddings": embeddings_json(c.embeddings),
                **more,
            }
        )
    return {"corrections": rows}


def test_post_feedback_stores_and_the_command_folds_it_in(registry_dir, capsys):
    client = TestClient(
        create_app(registry_dir, admin_token=TOKEN, embed=fake_embed, reload_interval=0.0),
        raise_server_exceptions=False,
    )
    headers = {**AUTH, "Idempotency-Key": "r1"}
    first = client.post("/feedback", json=_body(), headers=headers)
    assert first.status_code == 200 and first.json() == {"stored": 2, "pending": {"a": 2}, "replayed": False}
    assert client.post("/feedback", json=_body(), headers=headers).json()["replayed"]
    assert client.post("/feedback", json=_body()).status_code == 401
    assert client.post("/feedback", json=_body(account_id="zz"), headers=AUTH).status_code == 404
    bad = client.post("/feedback", json=_body(confidence=3), headers=AUTH)
    assert bad.status_code == 422
    assert client.post("/feedback", json=_body(300), headers=AUTH).status_code == 413
    assert feedback_cli.main(["fold", f"registry_dir={registry_dir}"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["labels_added"] == ["Returns"]
    labels = [x["label"] for x in client.get("/accounts/a/labels").json()["labels"]]
    assert "Returns" in labels
    ticket = {"account_id": "a", "email_sentence_embeddings": embeddings_json(_returns(9).embeddings)}
    assert client.post("/predict", json=ticket).json()["top_k"][0]["label"] == "Returns"


def test_replay_stores_each_row_once_and_reports_bad_rows(registry_dir, tmp_path, capsys):
    rows = _body(2)["corrections"] + [{"account_id": "a", "agent_label": ""}, {"account_id": "a"}]
    path = tmp_path / "corrections.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["replay", f"registry_dir={registry_dir}", f"file={path}"]
    assert feedback_cli.main(argv) == 1  # bad rows: said, and the exit status says so
    out = capsys.readouterr()
    assert "4 rows: 2 stored, 0 already stored, 2 bad" in out.out and "row 2: agent_label" in out.err
    assert feedback_cli.main(argv) == 1
    assert "2 already stored" in capsys.readouterr().out
    assert FeedbackStore(registry_dir).counts("a")["folded"] == 2


def test_feedback_over_real_sockets_refuses_malformed_requests_with_4xx(registry_dir):
    server, url = serve(registry_dir, env={"TAGGER_ADMIN_TOKEN": TOKEN})
    with server, httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/feedback", json=_body()).status_code == 401
        for body in (b"{", b"[]", b'{"corrections": 5}', b'{"corrections": [{}]}', b"[" * 100_000):
            assert 400 <= http.post("/feedback", content=body, headers=AUTH).status_code < 500
        deep = {
            "corrections": [{"account_id": "a", "agent_label": "x", "email_sentence_embeddings": "[" * 5000}]
        }
        assert http.post("/feedback", json=deep, headers=AUTH).status_code == 422
        assert http.post("/feedback", json=_body(), headers=AUTH).status_code == 200
