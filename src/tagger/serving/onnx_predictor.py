"""The ONNX Runtime predictor: everything it needs is in an export directory; torch is not needed.

Scores go through the same :func:`tagger.model.base.predictions_from_logits` as the PyTorch
model, so the backtest, the parity check and the API share one scoring path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from tagger.data.tickets import Tickets
from tagger.manifest import verify
from tagger.model.base import AccountPrior, Predictions, predictions_from_logits
from tagger.model.batches import pad_sentences
from tagger.model.label_table import LabelTable

EXPORT_FILES = ("model.onnx", "labels.json", "serving.json")


class OnnxPredictor:
    """Predicts contact reasons with ``model.onnx`` and the label table of an export directory."""

    def __init__(self, export_dir: str | os.PathLike, threads: int = 1):
        self.export_dir = Path(export_dir)
        self.manifest = verify(self.export_dir, EXPORT_FILES)
        self.serving = json.loads((self.export_dir / "serving.json").read_text())
        labels = json.loads((self.export_dir / "labels.json").read_text())
        frame = pd.DataFrame(labels["labels"])
        self.table = LabelTable(frame[["account_id", "label", "text", "n_train"]])
        self.prior = AccountPrior.from_probs(self.table, frame["prior"].to_numpy())
        self.temperature = float(self.serving["temperature"])
        self.max_sentences = int(self.serving["max_sentences"])
        self.abstain_fallback = self.serving.get("null_fallback") == "abstain"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.export_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    @property
    def version(self) -> str:
        return self.serving["model_version"]

    def logits(self, tickets: Tickets, batch_size: int = 256) -> np.ndarray:
        """Raw logits ``[n, L]``, as :meth:`SharedEstimator.logits` gives them."""
        account = self.table.account_ids(tickets.meta["account_id"])
        account = np.where(account < 0, self.table.n_accounts, account)
        out = []
        for start in range(0, len(tickets), batch_size):
            idx = np.arange(start, min(start + batch_size, len(tickets)))
            x, mask = pad_sentences(tickets.embeddings, tickets.offsets, idx, self.max_sentences)
            out.append(self.session.run(None, {"sentences": x, "mask": mask, "account": account[idx]})[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.table)), np.float32)

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        """Top-k labels of each ticket from its own account's labels (the prior without embeddings)."""
        return predictions_from_logits(
            self.logits(tickets), tickets, self.table, self.prior, self.temperature, k, self.abstain_fallback
        )
