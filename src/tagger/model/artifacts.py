"""A trained shared model on disk: one directory, written atomically, checked when loaded.

weights.pt       model state dict
labels.parquet   account_id, label, text, n_train, prior, vector (label vectors: prototypes x dim)
name_vectors.npy all-MiniLM-L6-v2 embeddings of the label names
model.json       architecture, temperature, fallback, accounts
config.yaml      the resolved Hydra config of the run
data.json        fingerprint of the training data (file hash, windows, counts)
metrics.json     validation metrics
manifest.json    creation time and the SHA-256 of every file above (written last)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tagger.manifest import ArtifactError, atomic_directory, verify, write_manifest
from tagger.model.base import AccountPrior
from tagger.model.label_table import LabelTable
from tagger.model.shared import SharedConfig, SharedModel
from tagger.model.shared_estimator import SharedEstimator

FILES = (
    "thresholds.json",
    "weights.pt",
    "labels.parquet",
    "name_vectors.npy",
    "model.json",
    "config.yaml",
    "data.json",
    "metrics.json",
)


def save_shared(
    estimator: SharedEstimator,
    out_dir: str | os.PathLike,
    config_yaml: str,
    data: dict,
    metrics: dict,
    thresholds: dict | None = None,
) -> Path:
    """Write the model directory ``out_dir`` (built beside it, then renamed into place)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replace=False) as tmp:
        model = estimator.model
        torch.save(model.state_dict(), tmp / "weights.pt")
        labels = estimator.table.frame.copy()
        labels["prior"] = estimator.prior.probs
        with torch.no_grad():
            vectors = model.label_vectors().numpy().astype(np.float32)
        labels["vector"] = list(vectors.reshape(len(vectors), -1))  # prototypes x dim, flattened
        labels.to_parquet(tmp / "labels.parquet", index=False)
        np.save(tmp / "name_vectors.npy", np.asarray(estimator.name_vectors, np.float32))
        info = {
            "architecture": asdict(model.cfg),
            "temperature": estimator.temperature,
            "model_config": estimator.cfg,  # conf/'s model section as it was trained
            "n_accounts": estimator.table.n_accounts,
            "n_labels": len(estimator.table),
            "fit": estimator.fit_info,
            # an ensemble (tagger.model.ensemble): its members' temperatures, one per member
            "member_temperatures": getattr(model, "temperatures", None),
        }
        (tmp / "model.json").write_text(json.dumps(info, indent=2))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "data.json").write_text(json.dumps(data, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "thresholds.json").write_text(json.dumps(thresholds or {}, indent=2))
        write_manifest(tmp, FILES)
    return out_dir


def load_shared(model_dir: str | os.PathLike) -> SharedEstimator:
    """A :class:`SharedEstimator` ready to predict, from a directory written by :func:`save_shared`."""
    model_dir = Path(model_dir)
    verify(model_dir, FILES)
    info = json.loads((model_dir / "model.json").read_text())
    labels = pd.read_parquet(model_dir / "labels.parquet")
    table = LabelTable(labels[["account_id", "label", "text", "n_train"]])
    name_vectors = np.load(model_dir / "name_vectors.npy")
    if "model_config" not in info:
        raise ArtifactError(f"{model_dir}: saved before model.json kept the model's config; train it again")
    estimator = SharedEstimator(info["model_config"], trainer={})
    estimator.table = table
    estimator.name_vectors = name_vectors
    estimator.prior = AccountPrior.from_probs(table, labels["prior"].to_numpy())
    estimator.temperature = float(info["temperature"])
    estimator.fit_info = info.get("fit", {})

    def member() -> SharedModel:
        return SharedModel(
            SharedConfig(**info["architecture"]), torch.from_numpy(name_vectors), table.n_accounts
        )

    temperatures = info.get("member_temperatures")
    if temperatures:
        from tagger.model.ensemble import EnsembleModel

        model = EnsembleModel([member() for _ in temperatures], temperatures)
    else:
        model = member()
    model.load_state_dict(torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True))
    estimator.model = model.eval()
    return estimator
