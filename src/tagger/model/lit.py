"""Lightning wrapper of :class:`SharedModel`: the loss, the optimiser, validation metrics."""

from __future__ import annotations

from contextlib import contextmanager

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tagger.model.shared import SharedModel


@contextmanager
def _cpu_bincount_allowed():
    """torchmetrics counts with torch.bincount, which has no CUDA-deterministic kernel, so under
    ``deterministic=True`` it falls back to an O(n * classes^2) loop. On CPU bincount is exact and
    deterministic, so the switch is lifted for the update only."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)


class LitShared(L.LightningModule):
    """Cross-entropy over the ticket's own account's labels, with optional logit adjustment.

    Logit adjustment (Menon et al., 2021) adds ``tau * log prior`` to the logits while training
    only, so the learned scores are not dominated by each account's big catch-all labels.
    Validation targets of labels unseen in training are class ``n_labels`` (always wrong).
    """

    def __init__(
        self,
        model: SharedModel,
        log_prior: torch.Tensor,
        imbalance: str = "logit_adjust",
        tau: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ):
        super().__init__()
        self.model = model
        self.register_buffer("log_prior", log_prior.float())
        self.imbalance, self.tau = imbalance, tau
        self.lr, self.weight_decay = lr, weight_decay
        n = len(log_prior) + 1
        self.val_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(n, average="micro"),
                "top3": MulticlassAccuracy(n, average="micro", top_k=min(3, n)),
                "macro_f1": MulticlassF1Score(n, average="macro"),
            },
            prefix="val_",
        )

    def _logits(self, batch: dict) -> torch.Tensor:
        return self.model(batch["x"], batch["mask"], batch["account"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)
        weight = None
        if self.imbalance == "logit_adjust":
            logits = logits + self.tau * self.log_prior
        elif self.imbalance == "class_balanced":
            # inverse frequency within the account, tempered by tau
            weight = torch.exp(-self.tau * self.log_prior)
            weight = weight / weight.mean()
        elif self.imbalance != "none":
            raise ValueError(
                f"unknown imbalance method {self.imbalance!r}: logit_adjust, class_balanced, none"
            )
        loss = F.cross_entropy(logits, batch["target"], weight=weight)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._logits(batch)
        # one extra column for "a label the model has never seen": never predicted
        padded = torch.cat([logits, torch.full_like(logits[:, :1], -1e9)], dim=1)
        target = batch["target"].clone()
        target[target < 0] = logits.shape[1]
        seen = batch["target"] >= 0
        if seen.any():
            loss = F.cross_entropy(logits[seen], batch["target"][seen])
            self.log("val_loss", loss, batch_size=int(seen.sum()), sync_dist=True)
        with _cpu_bincount_allowed():
            self.val_metrics.update(padded, target)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
