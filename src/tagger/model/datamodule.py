"""The ragged tickets as a LightningDataModule: training and validation batches of
:class:`~tagger.model.batches.TicketBatches` (each batch padded to its own longest ticket and
carrying its tickets' own merchants' label rows)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from tagger.model.batches import TicketBatches


class TicketDataModule(L.LightningDataModule):
    """``train`` shuffled with a seeded generator (the same order for the same seed), ``val``
    (None: no validation, as in a refit) in order."""

    def __init__(
        self,
        train: TicketBatches,
        val: TicketBatches | None,
        batch_size: int = 128,
        val_batch_size: int = 512,
        seed: int = 0,
    ):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.train.collate,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val is None:
            return []
        # by length: the metrics do not depend on the order, and padding a batch to its longest
        # email costs most of the time when lengths are mixed
        return DataLoader(
            self.val,
            batch_size=self.val_batch_size,
            sampler=self.val.by_length().tolist(),
            collate_fn=self.val.collate,
        )
