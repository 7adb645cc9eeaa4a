"""The life of a model end to end, with real processes: export.py registers and serves a model, the
API takes label changes over HTTP, train.py and export.py make the next model, the models command
promotes it under load (no request fails), every label change is still served, by the running
server and by one started afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import embeddings_json, in_background, serve, tiny_run, unit_vectors, wait_for

from tagger.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # trains, exports and serves over real sockets

TOKEN = "e2e-token-of-at-least-32-characters"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Changed-By": "e2e"}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, env={**os.environ, **ENV}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _serve(registry):
    return serve(registry, "reload_interval=0.1", env={**ENV, "TAGGER_ADMIN_TOKEN": TOKEN})


def _labels(url: str, account: str) -> set[str]:
    return {x["label"] for x in httpx.get(f"{url}/accounts/{account}/labels").json()["labels"]}


def test_label_changes_outlive_their_model(trained, tmp_path):
    model_dir, data, _ = trained
    registry = tmp_path / "registry"
    out = _run("export.py", f"model_dir={model_dir}", f"registry_dir={registry}", "parity.tickets=50")
    assert "registered" in out and "now serving" in out  # the first model of an empty registry is served
    server, url = _serve(registry)
    with server:
        first = httpx.get(f"{url}/health").json()["model_version"].split("/")[0]
        changes = [
            {"account_id": "a", "add": ["Billing::Invoice copy"]},
            {"account_id": "a", "rename": {"Refund": "Refunds"}},
            {"account_id": "a", "retire": ["Other"]},
        ]
        for i, change in enumerate(changes):
            r = httpx.post(f"{url}/admin/labels", json=change, headers={**AUTH, "Idempotency-Key": f"c{i}"})
            assert r.status_code == 200, r.text
        wanted = {"Billing::Invoice copy", "Refunds", "Shipping::Tracking"}
        assert _labels(url, "a") == wanted

        # the next model: train.py and export.py as an operator runs them, on later data
        _run(
            "train.py",
            *tiny_run(tmp_path / "next", data),
            "data.val_days=0.05",
            f"output_dir={tmp_path / 'next-out'}",
            f"models_dir={tmp_path / 'next-models'}",
            "trainer.max_epochs=2",
            "compare_with=[]",
            "seed=5",
        )
        (next_model,) = (tmp_path / "next-models").glob("shared-*")
        out = _run("export.py", f"model_dir={next_model}", f"registry_dir={registry}", "parity.tickets=50")
        assert "registered" in out and "now serving" not in out  # registered, not served yet
        assert httpx.get(f"{url}/health").json()["model_version"].startswith(first)

        # promote under load: every request answered 200, by one model or the other
        body = {"account_id": "a", "email_sentence_embeddings": embeddings_json(unit_vectors(2))}
        statuses = []

        def load(stop) -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    statuses.append(client.post(f"{url}/predict", json=body).status_code)

        with in_background(load, threads=2):
            out = _run("-m", "tagger.serving.models", "promote", f"registry_dir={registry}", "by=e2e")
            assert "now serving" in out
            swapped = lambda: not httpx.get(f"{url}/health").json()["model_version"].startswith(first)  # noqa: E731
            wait_for(swapped, 10, "the running server did not swap to the promoted model")
            time.sleep(0.3)
        assert len(statuses) > 10 and set(statuses) == {200}
        assert _labels(url, "a") == wanted  # all three changes, on the new model
    server, url = _serve(registry)  # a server started afterwards serves them too
    with server:
        assert not httpx.get(f"{url}/health").json()["model_version"].startswith(first)
        assert _labels(url, "a") == wanted
    # and the history says who changed what
    history = _run("-m", "tagger.serving.admin", "account=a", "history=true", f"registry_dir={registry}")
    assert history.count("api:e2e") == 3
