"""Padded batches from the ragged sentence store: ``x [B, S, 384]``, ``mask [B, S]``, accounts, targets.

:func:`pad_sentences` (numpy only) is the one padding used everywhere: training batches here,
and the ONNX Runtime predictor, which must not need torch.
"""

from __future__ import annotations

import numpy as np


def pad_sentences(
    embeddings: np.ndarray, offsets: np.ndarray, indices: np.ndarray, max_sentences: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``max_sentences`` sentences of tickets ``indices``, zero-padded, and their mask.

    A long email keeps its first sentences (the newest message; quoted history follows it).
    """
    indices = np.asarray(indices, np.int64)
    starts = offsets[indices]
    lengths = np.minimum(offsets[indices + 1] - starts, max_sentences)
    width = max(int(lengths.max()) if len(indices) else 0, 1)
    pos = np.arange(width)
    mask = pos[None, :] < lengths[:, None]
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 384
    x = np.zeros((len(indices), width, dim), np.float32)
    if mask.any():
        x[mask] = embeddings[(starts[:, None] + pos[None, :])[mask]]
    return x, mask


def by_length(offsets: np.ndarray, max_sentences: int) -> np.ndarray:
    """Ticket indices ordered by their kept sentence count (stable). Scoring batches taken in this
    order are padded to little more than their own tickets' lengths: with mixed lengths (2 sentences
    on average, up to 64) padding to a batch's longest email is most of its cost."""
    return np.argsort(np.minimum(np.diff(np.asarray(offsets)), max_sentences), kind="stable")


class TicketBatches:
    """Training and scoring batches of a set of tickets for the PyTorch model (a map-style dataset:
    item ``i`` is index ``i``; :meth:`collate` builds the batch).

    ``table`` (a :class:`tagger.model.label_table.LabelTable`) gives each ticket its own account's
    label rows (``rows [B, W]``); the first ``max_sentences`` sentences of an email are kept
    (conf/model/shared.yaml: ``encoder.max_sentences``). ``target`` holds label rows (-1: unseen),
    turned into positions in ``rows``. ``sentence_dropout`` hides random sentences while training
    (never all of a ticket's).
    """

    def __init__(
        self,
        tickets,
        account: np.ndarray,
        table,
        max_sentences: int,
        target: np.ndarray | None = None,
        sentence_dropout: float = 0.0,
    ):
        self.embeddings = np.ascontiguousarray(tickets.embeddings, dtype=np.float32)
        self.offsets = np.asarray(tickets.offsets, np.int64)
        self.max_sentences = max_sentences
        self.table = table
        self.account = np.asarray(account, np.int64)
        self.target = None
        if target is not None:  # the row's position in its account's contiguous rows
            target = np.asarray(target, np.int64)
            self.target = np.where(target >= 0, target - table.starts[self.account], -1)
        self.sentence_dropout = sentence_dropout

    def __len__(self) -> int:
        return len(self.account)

    def __getitem__(self, i: int) -> int:
        return i

    def by_length(self) -> np.ndarray:
        """Ticket indices in :func:`by_length` order (scoring only: training batches are shuffled)."""
        return by_length(self.offsets, self.max_sentences)

    def collate(self, indices) -> dict:
        """The padded batch of tickets ``indices``."""
        import torch  # here, not at the top: the ONNX serving path imports this module without torch

        idx = np.asarray(indices, np.int64)
        x, mask = pad_sentences(self.embeddings, self.offsets, idx, self.max_sentences)
        x, mask = torch.from_numpy(x), torch.from_numpy(mask)
        if self.sentence_dropout > 0:
            keep = (torch.rand(mask.shape) >= self.sentence_dropout) & mask
            first = torch.zeros_like(mask)
            first[:, 0] = True
            mask = torch.where(keep.any(1, keepdim=True), keep, first & mask)
            x = x * mask[..., None]
        account = self.account[idx]
        batch = {
            "x": x,
            "mask": mask,
            "account": torch.from_numpy(account),
            "rows": torch.from_numpy(self.table.gather(account)),
        }
        if self.target is not None:
            batch["target"] = torch.from_numpy(self.target[idx])
        return batch
