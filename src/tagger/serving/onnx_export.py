"""Export a trained shared model to ONNX, with everything ONNX Runtime needs beside it, and prove
parity with PyTorch on real held-out tickets before the export directory appears.

    model.onnx        inputs  sentences [batch, n_sentences, 384] float32, mask [batch, n_sentences] bool,
                              account [batch] int64 (index in labels.json; n_accounts = unknown),
                              label_vectors [n_labels, K, d] float32, label_account [n_labels] int64,
                              account_queries [n_accounts + 1, q] float32 (attention pooling per account)
                      outputs logits [batch, n_labels], ticket_vectors [batch, d]
    label_tower.onnx  names [n, 384] (label-name embeddings) -> label_vectors [n, d] (a new label)
    name_encoder.onnx all-MiniLM-L6-v2 (input_ids, attention_mask -> unit embeddings [n, 384]) and
    tokenizer.json    its tokenizer: a label name is embedded without torch
    serving.json      model version, temperature, thresholds, max_sentences, fallback, opset, parity
    manifest.json     SHA-256 of each file (written last)
    labels/           the label side, in generations (tagger.serving.label_store): updated without
                      touching model.onnx
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
from tagger.data.tickets import Tickets
from tagger.manifest import atomic_directory, sha256, write_manifest
from tagger.model.artifacts import load_shared
from tagger.model.cold_start import label_state, name_weight
from tagger.model.shared import SharedModel
from tagger.paths import resolve
from tagger.serving import name_encoder
from tagger.serving.label_store import write_generation
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.onnx_predictor import EXPORT_FILES, OnnxPredictor
from tagger.training import cutoff_seconds


class ExportError(RuntimeError):
    """The export failed a check (ONNX checker or parity with PyTorch); nothing was written."""


class _Scoring(nn.Module):
    """The model with its label side as inputs: a label update changes inputs, not the graph."""

    def __init__(self, model: SharedModel):
        super().__init__()
        self.model = model

    def forward(self, sentences, mask, account, label_vectors, label_account, account_queries=None):
        tickets = self.model.ticket_vectors(sentences, mask, account, account_queries)
        own = label_account[None, :] == account[:, None]
        return self.model.score(tickets, label_vectors, own), tickets


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
) -> dict:
    """Export the trained model directory ``model_dir`` to ``out_dir``; returns serving.json."""
    model_dir = Path(model_dir)
    model_manifest = json.loads((model_dir / "manifest.json").read_text())
    info = {
        "model_version": model_dir.name,
        "model_dir": str(model_dir.resolve()),
        "trained": model_manifest["created"],
        "thresholds": json.loads((model_dir / "thresholds.json").read_text()),
    }
    return export_estimator(
        load_shared(model_dir),
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
    """Write the export directory of a fitted :class:`SharedEstimator` (atomically) after checking it
    with onnx.checker and against PyTorch on ``parity_tickets``; raises :class:`ExportError`."""
    out_dir = Path(out_dir)
    if estimator.model.label_bias is not None:
        raise ExportError("export needs score.label_bias: false (label vectors are inputs; a bias is not)")
    scoring = _Scoring(estimator.model.eval()).eval()
    with atomic_directory(out_dir) as tmp:
        state = label_state(estimator)
        inputs = ["sentences", "mask", "account", "label_vectors", "label_account"]
        example = [
            torch.zeros(2, 3, 384),
            torch.ones(2, 3, dtype=torch.bool),
            torch.zeros(2, dtype=torch.long),
            torch.from_numpy(state.vectors),
            torch.from_numpy(state.label_account()),
        ]
        if state.queries is not None:
            inputs.append("account_queries")
            example.append(torch.from_numpy(state.queries))
        labels_axis = {0: "n_labels"}
        torch.onnx.export(
            scoring,
            tuple(example),
            str(tmp / "model.onnx"),
            dynamo=False,
            opset_version=opset,
            input_names=inputs,
            output_names=["logits", "ticket_vectors"],
            dynamic_axes={
                "sentences": {0: "batch", 1: "n_sentences"},
                "mask": {0: "batch", 1: "n_sentences"},
                "account": {0: "batch"},
                "label_vectors": labels_axis,
                "label_account": labels_axis,
                **({"account_queries": {0: "n_accounts_1"}} if state.queries is not None else {}),
                "logits": {0: "batch", 1: "n_labels"},
                "ticket_vectors": {0: "batch"},
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
        encoder_dir = name_encoder.cached(resolve(name_encoder_cache), opset)
        for name in name_encoder.FILES:
            shutil.copyfile(encoder_dir / name, tmp / name)
        try:
            for name in ("model.onnx", "label_tower.onnx", "name_encoder.onnx"):
                onnx.checker.check_model(onnx.load(str(tmp / name)), full_check=True)
        except onnx.checker.ValidationError as err:
            raise ExportError(f"onnx.checker rejected the model: {err}") from err
        write_generation(tmp, state, {"kind": "export", "model_version": info.get("model_version")})
        serving = {
            **info,
            "model_version": f"{info.get('model_version', 'shared')}+{sha256(tmp / 'model.onnx')[:12]}",
            "temperature": estimator.temperature,
            "max_sentences": int(estimator.cfg.get("encoder", {}).get("max_sentences", 64)),
            "null_fallback": estimator.cfg.get("confidence", {}).get("null_fallback", "prior"),
            "embedding_dim": 384,
            "opset": opset,
            "cold_start": {"name_weight": name_weight(estimator)},
            "inputs": {
                "sentences": "float32 [batch, n_sentences, 384]",
                "mask": "bool [batch, n_sentences]",
                "account": "int64 [batch]: labels/<generation>/labels.json accounts[...].index, "
                "n_accounts for unknown",
                "label_vectors": "float32 [n_labels, K, d]: labels/<generation>/label_vectors.npy",
                "label_account": "int64 [n_labels]: the account index of each label row",
                "account_queries": "float32 [n_accounts + 1, q]: labels/<generation>/account_queries.npy",
            },
            "outputs": {
                "logits": "float32 [batch, n_labels]: other accounts' labels are -1e9",
                "ticket_vectors": "float32 [batch, d]: unit ticket vectors",
            },
        }
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


def check_parity(estimator, predictor: OnnxPredictor, tickets: Tickets) -> dict:
    """Max |logit difference| over each ticket's own labels, and top-1 agreement, PyTorch vs ONNX."""
    torch_logits = estimator.logits(tickets)
    onnx_logits = predictor.logits(tickets)
    own = estimator.table.mask()[np.maximum(estimator.table.account_ids(tickets.meta["account_id"]), 0)]
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


def _name_encoder_parity(export_dir: Path, texts) -> float:
    """Max |difference| of name_encoder.onnx from sentence-transformers on label names and a long text."""
    from tagger.embed import SentenceEmbedder

    sample = [*list(dict.fromkeys(texts))[:64], "refund " * 400]
    reference = SentenceEmbedder(cache_dir=None).embed(sample, progress=False)
    return float(np.abs(NameEncoder(export_dir).embed(sample) - reference).max())
