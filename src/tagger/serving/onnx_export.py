"""Export a trained shared model to ONNX, with everything ONNX Runtime needs beside it, and prove
parity with PyTorch on real held-out tickets before the export directory appears.

    model.onnx        inputs  sentences [batch, n_sentences, 384] float32, mask [batch, n_sentences] bool,
                              label_vectors [M, K, d] float32 (the labels of the batch's merchants),
                              label_index [batch, W] int64 (each ticket's own labels in label_vectors,
                              -1 pads), account_query [batch, q] float32 (each ticket's account's
                              attention-query shift; absent without per-account queries)
                      outputs logits [batch, W] (-1e9 at the pads), ticket_vectors [batch, d],
                              sentence_weights [batch, n_sentences] (each sentence's attention share)
                      A ticket costs O(its own merchant's labels): no input grows with other merchants.
    label_tower.onnx  names [n, 384] (label-name embeddings) -> label_vectors [n, d] (a new label)
    name_encoder.onnx all-MiniLM-L6-v2 (input_ids, attention_mask -> unit embeddings [n, 384]) and
    tokenizer.json    its tokenizer: a label name is embedded without torch
    serving.json      format version, model version, temperature, thresholds, max_sentences, fallback,
                      opset, parity (docs/export-format.md)
    manifest.json     SHA-256 of each file (written last)
    labels/base/      the labels the model was exported with (tagger.serving.label_store); merchants'
                      later changes live in the registry, never in this directory
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from tagger.data.cache import load_tickets
from tagger.data.splits import cutoff_seconds
from tagger.data.tickets import Tickets
from tagger.manifest import atomic_directory, sha256, write_manifest
from tagger.model.artifacts import load_shared
from tagger.model.cold_start import label_state, name_weight
from tagger.model.shared import SharedModel
from tagger.paths import resolve
from tagger.serving import name_encoder
from tagger.serving.label_store import write_base
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.onnx_predictor import EXPORT_FILES, FORMAT_VERSION, OnnxPredictor


class ExportError(RuntimeError):
    """The export failed a check (ONNX checker or parity with PyTorch); nothing was written."""


class _Scoring(nn.Module):
    """The model with its label side as inputs: a label update changes inputs, not the graph."""

    def __init__(self, model: SharedModel):
        super().__init__()
        self.model = model

    def forward(self, sentences, mask, label_vectors, label_index, account_query=None):
        tickets, weights = self.model.encode(sentences, mask, account_query)
        return self.model.score(tickets, label_vectors, label_index), tickets, weights


class _LabelTower(nn.Module):
    def __init__(self, model: SharedModel):
        super().__init__()
        self.model = model

    def forward(self, names: torch.Tensor) -> torch.Tensor:
        return self.model.name_vectors(names)


def held_out_tickets(model_dir: Path, n: int, seed: int = 0) -> Tickets:
    """Up to ``n`` real tickets with embeddings from after the model's training cutoff."""
    data = json.loads((model_dir / "data.json").read_text())
    tickets = load_tickets(data["file"], cache_dir=data.get("cache_dir"), progress=False)
    cutoff = cutoff_seconds(data["split"])
    eligible = np.flatnonzero(
        (tickets.meta["unix_timestamp"].to_numpy() >= cutoff) & tickets.meta["has_embeddings"].to_numpy()
    )
    rng = np.random.default_rng(seed)
    return tickets.subset(np.sort(rng.choice(eligible, min(n, len(eligible)), replace=False)))


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    opset: int = 17,
    parity_tickets: int = 2000,
    atol: float = 1e-4,
    name_encoder_cache: str | os.PathLike = "data/cache/name_encoder",
    member: int | None = None,
) -> dict:
    """Export the trained model directory ``model_dir`` to ``out_dir``; returns serving.json.
    ``member``: that member of an ensemble alone (with the ensemble's thresholds)."""
    model_dir = Path(model_dir)
    estimator = load_shared(model_dir)
    if member is not None:
        from tagger.model.ensemble import member_of

        estimator = member_of(estimator, int(member))
    model_manifest = json.loads((model_dir / "manifest.json").read_text())
    info = {
        "model_version": model_dir.name + ("" if member is None else f"-member{member}"),
        "model_dir": str(model_dir.resolve()),
        "trained": model_manifest["created"],
        "thresholds": json.loads((model_dir / "thresholds.json").read_text()),
    }
    return export_estimator(
        estimator,
        out_dir,
        held_out_tickets(model_dir, parity_tickets),
        info,
        opset,
        atol,
        name_encoder_cache,
    )


def export_estimator(
    estimator,
    out_dir: str | os.PathLike,
    parity_tickets: Tickets,
    info: dict,
    opset: int = 17,
    atol: float = 1e-4,
    name_encoder_cache: str | os.PathLike = "data/cache/name_encoder",
) -> dict:
    """Write the export directory of a fitted :class:`SharedEstimator` (atomically; an existing
    ``out_dir`` is refused, never replaced) after checking it
    with onnx.checker and against PyTorch on ``parity_tickets``; raises :class:`ExportError`."""
    out_dir = Path(out_dir)
    if estimator.model.label_bias is not None:
        raise ExportError("export needs score.label_bias: false (label vectors are inputs; a bias is not)")
    with atomic_directory(out_dir, replace=False) as tmp:
        state = label_state(estimator)
        _export_graphs(estimator, state, tmp, opset)
        encoder_dir = name_encoder.cached(resolve(name_encoder_cache), opset)
        for name in name_encoder.FILES:
            shutil.copyfile(encoder_dir / name, tmp / name)
        try:
            for name in ("model.onnx", "label_tower.onnx", "name_encoder.onnx"):
                onnx.checker.check_model(onnx.load(str(tmp / name)), full_check=True)
        except onnx.checker.ValidationError as err:
            raise ExportError(f"onnx.checker rejected the model: {err}") from err
        write_base(tmp, state, {"kind": "export", "model_version": info.get("model_version")})
        serving = _serving_record(estimator, info, tmp, opset)
        (tmp / "serving.json").write_text(json.dumps(serving, indent=2))
        write_manifest(tmp, EXPORT_FILES)
        serving["parity"] = parity = check_parity(estimator, OnnxPredictor(tmp), parity_tickets)
        worst = max(
            parity["max_abs_diff"], parity["label_tower_max_abs_diff"], parity["name_encoder_max_abs_diff"]
        )
        if worst > atol or parity["top1_disagreements"]:
            raise ExportError(f"ONNX and PyTorch disagree: {parity}")
        (tmp / "serving.json").write_text(json.dumps(serving, indent=2))
        write_manifest(tmp, EXPORT_FILES)
    return serving


def _export_graphs(estimator, state, tmp: Path, opset: int) -> None:
    """model.onnx (tickets and their candidate labels in, logits and ticket vectors out) and
    label_tower.onnx (name embeddings in, label vectors out), with dynamic axes."""
    some = state.some()
    inputs = ["sentences", "mask", "label_vectors", "label_index"]
    example = [
        torch.zeros(2, 3, 384),
        torch.ones(2, 3, dtype=torch.bool),
        torch.from_numpy(np.ascontiguousarray(some.vectors, np.float32)),
        torch.tensor([[0, -1], [0, -1]]),
    ]
    if state.unknown_query is not None:
        inputs.append("account_query")
        example.append(torch.zeros(2, len(state.unknown_query)))
    torch.onnx.export(
        _Scoring(estimator.model.eval()).eval(),
        tuple(example),
        str(tmp / "model.onnx"),
        dynamo=False,
        opset_version=opset,
        input_names=inputs,
        output_names=["logits", "ticket_vectors", "sentence_weights"],
        dynamic_axes={
            "sentences": {0: "batch", 1: "n_sentences"},
            "mask": {0: "batch", 1: "n_sentences"},
            "label_vectors": {0: "n_candidates"},
            "label_index": {0: "batch", 1: "width"},
            **({"account_query": {0: "batch"}} if state.unknown_query is not None else {}),
            "logits": {0: "batch", 1: "width"},
            "ticket_vectors": {0: "batch"},
            "sentence_weights": {0: "batch", 1: "n_sentences"},
        },
    )
    torch.onnx.export(
        _LabelTower(estimator.model.eval()).eval(),
        (torch.zeros(2, 384),),
        str(tmp / "label_tower.onnx"),
        dynamo=False,
        opset_version=opset,
        input_names=["names"],
        output_names=["label_vectors"],
        dynamic_axes={"names": {0: "n"}, "label_vectors": {0: "n"}},
    )


def _serving_record(estimator, info: dict, tmp: Path, opset: int) -> dict:
    """serving.json: the model version (with model.onnx's hash), temperature, fallback, the inputs."""
    return {
        "format_version": FORMAT_VERSION,
        **info,
        "model_version": f"{info.get('model_version', 'shared')}+{sha256(tmp / 'model.onnx')[:12]}",
        "temperature": estimator.temperature,
        "max_sentences": estimator.max_sentences,
        "null_fallback": estimator.cfg["confidence"]["null_fallback"],
        "embedding_dim": 384,
        "opset": opset,
        "cold_start": {"name_weight": name_weight(estimator)},
        "inputs": {
            "sentences": "float32 [batch, n_sentences, 384]",
            "mask": "bool [batch, n_sentences]",
            "label_vectors": "float32 [M, K, d]: the label vectors of the batch's merchants "
            "(labels/base/label_vectors.npy rows, or a merchant's row of the registry's label store)",
            "label_index": "int64 [batch, W]: each ticket's own labels as rows of label_vectors, -1 pads",
            "account_query": "float32 [batch, q]: each ticket's account's query shift (labels/base/"
            "account_queries.npy row, or the query of the merchant's row in the registry's label store)",
        },
        "outputs": {
            "logits": "float32 [batch, W]: -1e9 at the pads",
            "ticket_vectors": "float32 [batch, d]: unit ticket vectors",
            "sentence_weights": "float32 [batch, n_sentences]: each sentence's share of the pooled "
            "ticket (attention; 0 at the pads): which sentences decided",
        },
    }


def check_parity(estimator, predictor: OnnxPredictor, tickets: Tickets) -> dict:
    """Max |logit difference| over each ticket's own labels, and top-1 agreement, PyTorch vs ONNX."""
    torch_logits, torch_rows = estimator.logits(tickets)
    onnx_logits, onnx_rows = predictor.logits(tickets)
    width = max(torch_logits.shape[1], onnx_logits.shape[1])
    torch_logits, onnx_logits = _widen(torch_logits, width), _widen(onnx_logits, width)
    own = _widen(torch_rows, width, -1) >= 0
    if not (own == (_widen(onnx_rows, width, -1) >= 0)).all():
        raise ExportError("ONNX and PyTorch give tickets different numbers of candidate labels")
    diff = np.abs(torch_logits - onnx_logits)[own]
    with torch.no_grad():
        names = estimator.name_vectors[:256]
        tower = estimator.model.name_vectors(torch.from_numpy(np.asarray(names, np.float32))).numpy()
    return {
        "tickets": len(tickets),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "top1_disagreements": int((torch_logits.argmax(1) != onnx_logits.argmax(1)).sum()),
        "label_tower_max_abs_diff": float(np.abs(tower - predictor.name_vectors(names)).max()),
        "name_encoder_max_abs_diff": _name_encoder_parity(
            predictor.export_dir, estimator.table.frame["text"]
        ),
    }


def _widen(a: np.ndarray, width: int, fill: float = -1e9) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)


def _name_encoder_parity(export_dir: Path, texts) -> float:
    """Max |difference| of name_encoder.onnx from sentence-transformers on label names and a long text."""
    from tagger.embed import SentenceEmbedder

    sample = [*list(dict.fromkeys(texts))[:64], "refund " * 400]
    reference = SentenceEmbedder(cache_dir=None).embed(sample, progress=False)
    return float(np.abs(NameEncoder(export_dir).embed(sample) - reference).max())
