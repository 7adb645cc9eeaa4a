"""The export as a contract (docs/export-format.md): its format version is checked by every reader,
the README's Python snippet runs as written, and the Node.js reference consumer (clients/node)
gives the HTTP API's answers on real held-out tickets, label changes and raised thresholds included."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import embeddings_json, exported, fake_embed, serve, served_copy, toy_problem

from tagger.manifest import ArtifactError, write_manifest
from tagger.model.label_update import LabelUpdate
from tagger.paths import PROJECT_ROOT
from tagger.serving.limits import configured_limits
from tagger.serving.onnx_predictor import EXPORT_FILES, FORMAT_VERSION, OnnxPredictor
from tagger.serving.registry import Registry
from tagger.serving.request_path import RequestScorer

NODE = shutil.which("node")
CLIENT = PROJECT_ROOT / "clients" / "node"


def _snippet() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    return re.search(r"<!-- snippet: export -->\n```python\n(.*?)```", text, re.S).group(1)


def _api_answer(registry_dir: Path, body: dict) -> dict:
    """What the API answers ``body`` (its request scorer, in process)."""
    registry = Registry(registry_dir, create=False)
    version = registry.serving()[1]
    view, _ = registry.label_view(version)
    predictor = registry.model(version).predictor.with_view(view)
    return json.loads(RequestScorer(predictor, configured_limits()).one(json.dumps(body).encode()))


def test_the_readme_snippet_runs_as_written(trained, tmp_path):
    served_copy(exported(trained, "contract-onnx"), tmp_path)
    toy = toy_problem(n_per_label=2, seed=3)
    for i in (0, 1):
        body = {
            "account_id": str(toy.meta["account_id"].iat[i]),
            "email_sentence_embeddings": embeddings_json(toy.sentences(i)),
        }
        (tmp_path / "ticket.json").write_text(json.dumps(body))
        run = subprocess.run(
            [sys.executable, "-c", _snippet()], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        mine, api = json.loads(run.stdout), _api_answer(tmp_path / "registry", body)
        assert mine["label"] == api["top_k"][0]["label"]
        assert mine["confidence"] == pytest.approx(api["top_k"][0]["score"], abs=1e-5)
        assert mine["auto_tagged"] == (not api["abstained"] and api["answer_level"] == 0)


def test_an_export_of_a_newer_format_is_refused_by_every_reader(trained, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(exported(trained, "contract-onnx"), export)
    for f in export.rglob("*"):
        f.chmod(0o644 if f.is_file() else 0o755)
    serving = json.loads((export / "serving.json").read_text())
    assert serving["format_version"] == FORMAT_VERSION == 1
    (export / "serving.json").write_text(json.dumps({**serving, "format_version": FORMAT_VERSION + 1}))
    write_manifest(export, EXPORT_FILES)
    with pytest.raises(ArtifactError, match="export format 2"):
        OnnxPredictor(export)
    if NODE and (CLIENT / "node_modules").exists():
        run = subprocess.run(
            [NODE, str(CLIENT / "predict.mjs"), str(export)], input="", capture_output=True, text=True
        )
        assert run.returncode == 1 and "export format 2" in run.stderr


# ---- the Node.js consumer against the HTTP API, on real tickets --------------------------------
@pytest.fixture()
def real_registry(real_trained, tmp_path):
    """The real-data model's registry (a copy of its own) and its held-out tickets as /predict bodies."""
    export, bodies, _ = real_trained
    return served_copy(export, tmp_path), bodies


@pytest.mark.slow
@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_node_consumer_gives_the_apis_answers(real_registry, tmp_path):
    assert (CLIENT / "node_modules").exists(), "run `npm ci --prefix clients/node` first (.ci/run does)"
    registry_dir, bodies = real_registry
    registry = Registry(registry_dir)
    version = registry.serving()[1]
    labels = registry.labels_of(version, bodies[0]["account_id"]).labels
    # the registry's label store: one merchant gains a label and renames one; another's threshold
    # is raised from reviews; the consumer must honour both, as the API does
    registry.update(
        LabelUpdate(
            bodies[0]["account_id"],
            add=["Returns::Label printing"],
            rename={labels[0]: f"{labels[0]} (renamed)"},
        ),
        "test",
        fake_embed,
    )
    other = next(b["account_id"] for b in bodies if b["account_id"] != bodies[0]["account_id"])
    registry.set_threshold(version, other, "0.95", 0.5, "test", {})
    with_embeddings = [b for b in bodies if b["email_sentence_embeddings"]]
    sample = with_embeddings[:150] + [b for b in bodies if not b["email_sentence_embeddings"]][:5]
    assert len(with_embeddings) >= 100
    lines = "\n".join(json.dumps(b) for b in sample)
    run = subprocess.run(
        [NODE, str(CLIENT / "predict.mjs"), str(registry_dir / "models" / version)],
        input=lines,
        capture_output=True,
        text=True,
        check=True,
    )
    node = [json.loads(line) for line in run.stdout.splitlines()]
    server, url = serve(registry_dir)
    with server, httpx.Client(base_url=url, timeout=10) as http:
        api = [http.post("/predict", json=b).json() for b in sample]
    assert len(node) == len(api) == len(sample)
    for n, a in zip(node, api, strict=True):
        assert n["contact_reason"] == a["contact_reason"] and n["abstained"] == a["abstained"]
        assert [t["label"] for t in n["top_k"]] == [t["label"] for t in a["top_k"]]
        assert (n["answer_level"], n["fallback"], n["model_version"]) == (
            a["answer_level"],
            a["fallback"],
            a["model_version"],
        )
        assert abs(n["confidence"] - a["confidence"]) <= 1e-4
        assert np.allclose([t["score"] for t in n["top_k"]], [t["score"] for t in a["top_k"]], atol=1e-4)
    assert any("(renamed)" in t["label"] for n in node for t in n["top_k"])  # the label store was read
