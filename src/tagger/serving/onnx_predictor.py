"""The ONNX Runtime predictor: everything it needs is in an export directory; torch is not needed.

Scores go through the same :func:`tagger.model.base.predictions_from_logits` as the PyTorch
model, so the backtest, the parity check and the API share one scoring path. The label side
(vectors, account queries, priors) is an input of ``model.onnx`` given as a :class:`LabelView`
(the export's own labels by default; a server's come from :mod:`tagger.serving.registry`), so a
label update never touches the model file and :meth:`OnnxPredictor.use` swaps it in while requests
are being served.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tagger.data.tickets import Tickets
from tagger.manifest import ArtifactError, verify
from tagger.model.base import MASKED, Predictions, predictions_from_logits
from tagger.model.batches import by_length, pad_sentences
from tagger.model.label_table import gather_rows
from tagger.model.label_update import AccountLabels, LabelState
from tagger.serving.label_store import read_base

BASE_GENERATION = "g000000"  # the export's own labels, before any change
# the export format (docs/export-format.md) this reader understands; serving.json says its own
FORMAT_VERSION = 1
EXPORT_FILES = ("model.onnx", "label_tower.onnx", "name_encoder.onnx", "tokenizer.json", "serving.json")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidates:
    """The labels a batch of tickets is scored against: the union of its merchants' labels
    (``vectors [M, K, d]``, ``prior [M]``, ``names [M]``), each ticket's own rows in it
    (``index [n, W]``, -1 pads; no rows for an unknown account) and its account's query shift."""

    vectors: np.ndarray
    index: np.ndarray
    prior: np.ndarray
    names: np.ndarray
    queries: np.ndarray | None


@dataclass(frozen=True)
class Scored:
    """What the model gave for some tickets: ``logits [n, W]`` over each ticket's own labels,
    ``vectors [n, d]`` (unit ticket vectors), and ``rows [n, W]`` (-1 pads) into the candidate
    labels' ``prior`` and ``names``."""

    logits: np.ndarray
    vectors: np.ndarray
    rows: np.ndarray
    prior: np.ndarray
    names: np.ndarray
    weights: np.ndarray | None = None  # [n, S] each sentence's weight (exports with sentence_weights)


@dataclass(frozen=True)
class LabelView:
    """One label generation as the model consumes it; a request reads one view from start to end."""

    generation: str
    state: LabelState

    def labels_of(self, account: str) -> AccountLabels | None:
        return self.state.accounts.get(account)

    def candidates(self, accounts: list[str]) -> Candidates:
        """What tickets of ``accounts`` are scored against: O(the labels of these merchants)."""
        state = self.state
        only = state.accounts.get(accounts[0]) if len(accounts) == 1 else None
        if only is not None and len(only):  # one ticket (a request): its merchant's arrays as they are
            query = None if state.unknown_query is None else only.query[None].astype(np.float32, copy=False)
            return Candidates(
                np.ascontiguousarray(only.vectors, np.float32),
                np.arange(len(only), dtype=np.int64)[None],
                only.prior,
                np.asarray(only.labels, object),
                query,
            )
        order = list(dict.fromkeys(accounts))
        parts = [state.accounts.get(a) for a in order]
        sizes = np.array([len(p) if p is not None else 0 for p in parts], np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
        position = {a: i for i, a in enumerate(order)}
        which = np.fromiter((position[a] for a in accounts), np.int64, len(accounts))
        known = [p for p in parts if p is not None]
        if len(known) == 1:  # the common case, one merchant: its arrays as they are, no copy
            only = known[0]
            vectors, prior, names = only.vectors, only.prior, np.asarray(only.labels, object)
        elif known:
            vectors = np.concatenate([p.vectors for p in known])
            prior = np.concatenate([p.prior for p in known])
            names = np.asarray([lab for p in known for lab in p.labels], object)
        else:
            # one dummy row: ONNX gathers from a non-empty table; no ticket points at it
            vectors, prior, names = _empty_vectors(state), np.zeros(1), np.array([None], object)
        queries = None
        if state.unknown_query is not None:
            rows = [p.query if p is not None else state.unknown_query for p in parts]
            queries = np.stack(rows).astype(np.float32, copy=False)[which]
        return Candidates(
            np.ascontiguousarray(vectors, np.float32),
            gather_rows(starts, sizes, which),
            prior,
            names,
            queries,
        )


def _empty_vectors(state: LabelState) -> np.ndarray:
    some = state.some()
    shape = some.vectors.shape[1:] if some is not None else (1, 1)
    return np.zeros((1, *shape), np.float32)


class OnnxPredictor:
    """Predicts contact reasons with ``model.onnx`` and the live label generation of an export directory.

    A ticket is scored against its own merchant's labels only, so what it costs does not depend on
    how many other merchants the export holds; a reload reads only the merchants that changed.
    """

    def __init__(self, export_dir: str | os.PathLike, threads: int = 1, view: LabelView | None = None):
        self.export_dir = Path(export_dir)
        self.manifest = verify(self.export_dir, EXPORT_FILES)
        self.serving = json.loads((self.export_dir / "serving.json").read_text())
        made = int(self.serving.get("format_version", 1))  # exports made before the field are version 1
        if made > FORMAT_VERSION:
            raise ArtifactError(
                f"{self.export_dir}: export format {made}; this reader knows {FORMAT_VERSION} (update tagger)"
            )
        self.temperature = float(self.serving["temperature"])
        self.max_sentences = int(self.serving["max_sentences"])
        self.abstain_fallback = self.serving.get("null_fallback") == "abstain"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The label count changes from one merchant to the next, so input shapes keep changing:
        # without the arena and the per-shape memory patterns, freed buffers go back instead of piling up.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(
            str(self.export_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.tower = ort.InferenceSession(
            str(self.export_dir / "label_tower.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = {o.name for o in self.session.get_outputs()}
        base = LabelView(BASE_GENERATION, read_base(self.export_dir))
        some = base.state.some()
        self._label_shape = some.vectors.shape[1:] if some is not None else None
        self.view = base
        if view is not None:
            self.use(view)
        # a Counter here collects the seconds spent padding and in ONNX Runtime (batch scoring)
        self.timings: Counter | None = None

    @property
    def version(self) -> str:
        """The model version and its label generation, as answers name them."""
        return f"{self.serving['model_version']}/{self.view.generation}"

    def with_view(self, view: LabelView) -> OnnxPredictor:
        """A predictor sharing this one's ONNX sessions, serving ``view``."""
        other = copy.copy(self)
        other.timings = None
        other.use(view)
        return other

    def use(self, view: LabelView, changed: list[str] | None = None) -> None:
        """Serve ``view`` from the next request on (a checked generation); ``changed`` names the
        merchants whose labels differ from the current view (None: all of them)."""
        shape = self._label_shape
        for account in view.state.accounts if changed is None else changed:
            vectors = view.state.accounts[account].vectors
            if vectors.shape[1:] != shape:
                raise ValueError(
                    f"label vectors {vectors.shape} of {account!r} do not fit this model {shape}"
                )
        self.view = view

    # ---- scoring ----------------------------------------------------------------------------
    def _run(
        self,
        accounts: list[str],
        embeddings: np.ndarray,
        offsets: np.ndarray,
        view: LabelView,
        batch_size: int,
    ) -> Scored:
        """Tickets ``i`` = ``embeddings[offsets[i]:offsets[i + 1]]`` of ``accounts[i]``; every batch is
        fed its own merchants' labels only; the result indexes them one batch after the other."""
        n = len(accounts)
        # one batch: in order; several: by length, each padded to little more than its own tickets
        order = np.arange(n) if n <= batch_size else by_length(offsets, self.max_sentences)
        batches = []
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            cand = view.candidates([accounts[i] for i in idx])
            started = time.perf_counter()
            feed = self.feed(cand, embeddings, offsets, idx)
            padded = time.perf_counter()
            logits, vectors, *weights = self.session.run(None, feed)
            if self.timings is not None:
                self.timings["pad"] += padded - started
                self.timings["onnx"] += time.perf_counter() - padded
            batches.append((idx, logits, vectors, cand, weights[0] if weights else None))
        if len(batches) == 1:  # one request: its candidates as they are
            _, logits, vectors, cand, weights = batches[0]
            return Scored(logits, vectors, cand.index, cand.prior, cand.names, weights)
        width = max((b[1].shape[1] for b in batches), default=1)
        has_weights = bool(batches) and batches[0][4] is not None
        out = Scored(
            np.full((n, width), MASKED, np.float32),
            np.zeros((n, self._label_shape[-1]), np.float32),
            np.full((n, width), -1, np.int64),
            np.concatenate([b[3].prior for b in batches]) if batches else np.zeros(1),
            np.concatenate([b[3].names for b in batches]) if batches else np.array([None], object),
            np.zeros((n, max(b[4].shape[1] for b in batches)), np.float32) if has_weights else None,
        )
        offset = 0
        for idx, logits, vectors, cand, weights in batches:
            out.logits[idx, : logits.shape[1]] = logits
            out.rows[idx, : logits.shape[1]] = np.where(cand.index >= 0, cand.index + offset, -1)
            out.vectors[idx] = vectors
            if has_weights:
                out.weights[idx, : weights.shape[1]] = weights
            offset += len(cand.prior)
        return out

    def feed(self, cand: Candidates, embeddings: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> dict:
        """The inputs of ``model.onnx`` for tickets ``idx`` (ragged ``embeddings``/``offsets``) scored
        against ``cand``."""
        x, mask = pad_sentences(embeddings, offsets, idx, self.max_sentences)
        feed = {"sentences": x, "mask": mask, "label_vectors": cand.vectors, "label_index": cand.index}
        if cand.queries is not None and "account_query" in self._inputs:
            feed["account_query"] = cand.queries
        return feed

    def _run_tickets(self, tickets: Tickets, view: LabelView | None, batch_size: int) -> Scored:
        accounts = tickets.meta["account_id"].astype(str).tolist()
        return self._run(accounts, tickets.embeddings, tickets.offsets, view or self.view, batch_size)

    def logits(
        self, tickets: Tickets, batch_size: int = 256, view: LabelView | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits ``[n, W]`` of each ticket's own labels, in the order
        :meth:`SharedEstimator.logits` gives them, and their candidate ``rows [n, W]``."""
        scored = self._run_tickets(tickets, view, batch_size)
        return scored.logits, scored.rows

    def ticket_vectors(self, tickets: Tickets, view: LabelView | None = None) -> np.ndarray:
        """``[n, d]`` unit ticket vectors (what a label's examples fold in)."""
        return self._run_tickets(tickets, view, 256).vectors

    def name_vectors(self, name_embeddings: np.ndarray) -> np.ndarray:
        """``[n, d]`` unit label vectors of label-name embeddings (the label tower)."""
        return self.tower.run(None, {"names": np.asarray(name_embeddings, np.float32)})[0]

    def predict(self, tickets: Tickets, k: int = 5, view: LabelView | None = None) -> Predictions:
        """Top-k labels of each ticket from its own account's labels (the prior without embeddings)."""
        accounts = tickets.meta["account_id"].astype(str).tolist()
        has = tickets.meta["has_embeddings"].to_numpy()
        return self.predict_arrays(accounts, tickets.embeddings, tickets.offsets, k, view, has)

    def predict_vectors(
        self, accounts: list[str], vectors: list[np.ndarray], k: int = 5, view: LabelView | None = None
    ) -> Predictions:
        """:meth:`predict` of tickets given as one ``[n_i, 384]`` float32 array each (an API request;
        no data frame built)."""
        lengths = np.fromiter((len(v) for v in vectors), np.int64, len(vectors))
        offsets = np.zeros(len(vectors) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        embeddings = vectors[0] if len(vectors) == 1 else np.concatenate(vectors)
        return self.predict_arrays(accounts, embeddings, offsets, k, view)

    def predict_arrays(
        self,
        accounts: list[str],
        embeddings: np.ndarray,
        offsets: np.ndarray,
        k: int = 5,
        view: LabelView | None = None,
        has_embeddings: np.ndarray | None = None,
        batch_size: int = 256,
    ) -> Predictions:
        """:meth:`predict` of ragged tickets: ``embeddings[offsets[i]:offsets[i + 1]]`` of ``accounts[i]``
        (``has_embeddings`` by default: a ticket has sentences), ``batch_size`` tickets per ONNX call."""
        scored = self._run(accounts, embeddings, offsets, view or self.view, batch_size)
        pred = predictions_from_logits(
            scored.logits,
            scored.rows,
            offsets[1:] > offsets[:-1] if has_embeddings is None else has_embeddings,
            scored.prior,
            scored.names,
            self.temperature,
            k,
            self.abstain_fallback,
        )
        pred.sentence_weights = scored.weights
        return pred
