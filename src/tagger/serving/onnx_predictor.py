"""The ONNX Runtime predictor: everything it needs is in an export directory; torch is not needed.

Scores go through the same :func:`tagger.model.base.predictions_from_logits` as the PyTorch
model, so the backtest, the parity check and the API share one scoring path. The label side
(vectors, account queries, priors) is an input of ``model.onnx`` read from the live label
generation (:mod:`tagger.serving.label_store`), so a label update never touches the model file and
:meth:`OnnxPredictor.refresh` swaps it in while requests are being served.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tagger.data.tickets import Tickets
from tagger.manifest import verify
from tagger.model.base import AccountPrior, Predictions, predictions_from_logits
from tagger.model.batches import pad_sentences
from tagger.model.label_table import LabelTable
from tagger.model.label_update import LabelState
from tagger.serving.label_store import current_generation, read_generation

EXPORT_FILES = ("model.onnx", "label_tower.onnx", "name_encoder.onnx", "tokenizer.json", "serving.json")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelView:
    """One label generation as the model consumes it; a request reads one view from start to end."""

    generation: str
    state: LabelState
    prior: AccountPrior
    inputs: dict[str, np.ndarray]

    @property
    def table(self) -> LabelTable:
        return self.state.table

    @classmethod
    def of(cls, generation: str, state: LabelState) -> LabelView:
        inputs = {
            "label_vectors": np.ascontiguousarray(state.vectors, np.float32),
            "label_account": state.label_account(),
        }
        if state.queries is not None:
            inputs["account_queries"] = np.ascontiguousarray(state.queries, np.float32)
        return cls(generation, state, AccountPrior.from_probs(state.table, state.prior), inputs)


class OnnxPredictor:
    """Predicts contact reasons with ``model.onnx`` and the live label generation of an export directory."""

    def __init__(self, export_dir: str | os.PathLike, threads: int = 1):
        self.export_dir = Path(export_dir)
        self.manifest = verify(self.export_dir, EXPORT_FILES)
        self.serving = json.loads((self.export_dir / "serving.json").read_text())
        self.temperature = float(self.serving["temperature"])
        self.max_sentences = int(self.serving["max_sentences"])
        self.abstain_fallback = self.serving.get("null_fallback") == "abstain"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The label count changes with every label update, so input shapes keep changing: without
        # the arena and the per-shape memory patterns, freed buffers go back instead of piling up.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(
            str(self.export_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.tower = ort.InferenceSession(
            str(self.export_dir / "label_tower.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()
        self.view = LabelView.of(*read_generation(self.export_dir))
        self.last_reload_error: str | None = None
        self._refused: str | None = None

    # ---- the live label generation ----------------------------------------------------------
    @property
    def version(self) -> str:
        return f"{self.serving['model_version']}/{self.view.generation}"

    @property
    def table(self) -> LabelTable:
        return self.view.table

    @property
    def prior(self) -> AccountPrior:
        return self.view.prior

    def refresh(self) -> bool:
        """Load the live generation if it changed; True if it did. A generation that fails its
        checks is refused: the current one keeps serving and ``last_reload_error`` says why."""
        try:
            name = current_generation(self.export_dir)
        except OSError as err:
            self.last_reload_error = f"labels/CURRENT: {err}"
            return False
        if name in (self.view.generation, self._refused):  # generations never change once written
            return False
        with self._lock:
            if name in (self.view.generation, self._refused):
                return False
            try:
                self.use(LabelView.of(*read_generation(self.export_dir, name)))
            except Exception as err:  # a bad generation must never take the service down
                self._refused = name
                self.last_reload_error = f"generation {name} refused: {err}"
                log.error("label reload refused, still serving %s: %s", self.view.generation, err)
                return False
        return True

    def use(self, view: LabelView) -> None:
        """Serve ``view`` from the next request on (a checked generation)."""
        if view.state.vectors.shape[1:] != self.view.state.vectors.shape[1:]:
            raise ValueError(f"label vectors {view.state.vectors.shape} do not fit this model")
        self.view, self.last_reload_error = view, None

    # ---- scoring ----------------------------------------------------------------------------
    def _run(self, tickets: Tickets, view: LabelView, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        account = view.table.account_ids(tickets.meta["account_id"])
        account = np.where(account < 0, view.table.n_accounts, account)
        logits, vectors = [], []
        for start in range(0, len(tickets), batch_size):
            idx = np.arange(start, min(start + batch_size, len(tickets)))
            x, mask = pad_sentences(tickets.embeddings, tickets.offsets, idx, self.max_sentences)
            feed = {"sentences": x, "mask": mask, "account": account[idx], **view.inputs}
            out = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
            logits.append(out[0])
            vectors.append(out[1])
        if not logits:
            return np.zeros((0, len(view.table)), np.float32), np.zeros((0, view.state.vectors.shape[2]))
        return np.concatenate(logits), np.concatenate(vectors)

    def logits(self, tickets: Tickets, batch_size: int = 256, view: LabelView | None = None) -> np.ndarray:
        """Raw logits ``[n, L]``, as :meth:`SharedEstimator.logits` gives them."""
        return self._run(tickets, view or self.view, batch_size)[0]

    def ticket_vectors(self, tickets: Tickets, view: LabelView | None = None) -> np.ndarray:
        """``[n, d]`` unit ticket vectors (what a label's examples fold in)."""
        return self._run(tickets, view or self.view, 256)[1]

    def name_vectors(self, name_embeddings: np.ndarray) -> np.ndarray:
        """``[n, d]`` unit label vectors of label-name embeddings (the label tower)."""
        return self.tower.run(None, {"names": np.asarray(name_embeddings, np.float32)})[0]

    def predict(self, tickets: Tickets, k: int = 5, view: LabelView | None = None) -> Predictions:
        """Top-k labels of each ticket from its own account's labels (the prior without embeddings)."""
        view = view or self.view
        return predictions_from_logits(
            self.logits(tickets, view=view),
            tickets,
            view.table,
            view.prior,
            self.temperature,
            k,
            self.abstain_fallback,
        )
