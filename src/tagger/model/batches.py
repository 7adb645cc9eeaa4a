"""Padded batches from the ragged sentence store: ``x [B, S, 384]``, ``mask [B, S]``, accounts, targets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tagger.data.tickets import Tickets


class TicketBatches(Dataset):
    """Tickets held as one flat tensor of sentences plus offsets; batches are gathered in one go.

    ``max_sentences`` keeps the first sentences of a long email (the newest message; quoted
    history follows it). ``sentence_dropout`` hides random sentences while training (never all).
    """

    def __init__(
        self,
        tickets: Tickets,
        account: np.ndarray,
        target: np.ndarray | None = None,
        max_sentences: int = 64,
        sentence_dropout: float = 0.0,
    ):
        self.embeddings = torch.from_numpy(np.ascontiguousarray(tickets.embeddings, dtype=np.float32))
        self.starts = torch.from_numpy(tickets.offsets[:-1].astype(np.int64))
        self.lengths = torch.from_numpy(np.minimum(tickets.n_sentences, max_sentences).astype(np.int64))
        self.account = torch.from_numpy(np.asarray(account, np.int64))
        self.target = None if target is None else torch.from_numpy(np.asarray(target, np.int64))
        self.sentence_dropout = sentence_dropout
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.account)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The padded batch of tickets ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        lengths = self.lengths[idx]
        width = max(int(lengths.max()) if len(idx) else 0, 1)
        pos = torch.arange(width)
        mask = pos[None, :] < lengths[:, None]
        rows = (self.starts[idx][:, None] + pos[None, :]).clamp(max=max(len(self.embeddings) - 1, 0))
        x = self.embeddings[rows] if len(self.embeddings) else torch.zeros(len(idx), width, 384)
        if self.sentence_dropout > 0:
            keep = torch.rand(mask.shape, generator=self.generator) >= self.sentence_dropout
            first = torch.zeros_like(mask)
            first[:, 0] = True
            keep = keep & mask
            keep = torch.where(keep.any(1, keepdim=True), keep, first & mask)
            mask = keep
        x = x * mask[..., None]
        batch = {"x": x, "mask": mask, "account": self.account[idx]}
        if self.target is not None:
            batch["target"] = self.target[idx]
        return batch
