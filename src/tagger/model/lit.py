"""Lightning wrapper of :class:`SharedModel`: the loss, the optimisers, validation metrics."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from tagger.model.shared import MASKED, SharedModel


class MacroF1(Metric):
    """Macro-F1 over the classes that occur (as a prediction or a target), as torchmetrics'
    ``MulticlassF1Score(average="macro")`` computes it, without its ``[classes, classes]``
    confusion matrix: with one class per label row that would be (all labels)^2. The predictions
    and targets are kept (``cat`` states, gathered across DDP processes) and scored at the end
    over the classes present only."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(preds.long())
        self.target.append(target.long())

    def compute(self) -> torch.Tensor:
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        classes, index = torch.unique(torch.cat([preds, target]), return_inverse=True)
        p, t = index[: len(preds)], index[len(preds) :]
        n = len(classes)
        tp = torch.bincount(t[p == t], minlength=n).float()
        fp = torch.bincount(p, minlength=n).float() - tp
        fn = torch.bincount(t, minlength=n).float() - tp
        return (2 * tp / (2 * tp + fp + fn)).mean() if n else torch.tensor(0.0)


class LitShared(L.LightningModule):
    """Cross-entropy over the ticket's own account's labels, with optional logit adjustment.

    Logit adjustment (Menon et al., 2021) adds ``tau * log prior`` to the logits while training
    only, so the learned scores are not dominated by each account's big catch-all labels.
    A batch holds ``rows [B, W]`` (each ticket's own account's label rows, -1 pads) and ``target``,
    the position of the ticket's label in its row list (-1: a label unseen in training, always wrong).

    Two optimisers, stepped together (manual optimisation): AdamW over the shared weights and
    SparseAdam over the per-label and per-account rows, so a step costs what its batch touches.
    SparseAdam has no weight decay; ``sparse_weight_decay`` applies AdamW's decoupled decay lazily,
    to the rows the step touched only (a label row decays toward its name's vector, the residual
    being what is decayed), so the cost stays that of the batch.
    """

    def __init__(
        self,
        model: SharedModel,
        log_prior: torch.Tensor,
        imbalance: str,
        tau: float,
        lr: float,
        weight_decay: float,
        sparse_lr: float | None,
        sparse_weight_decay: float,
    ):
        super().__init__()
        if imbalance not in ("logit_adjust", "class_balanced", "none"):
            raise ValueError(f"unknown imbalance method {imbalance!r}: logit_adjust, class_balanced, none")
        self.automatic_optimization = False
        self.model = model
        self.register_buffer("log_prior", log_prior.float())
        self.imbalance, self.tau = imbalance, tau
        self.lr, self.weight_decay = lr, weight_decay
        self.sparse_lr = lr if sparse_lr is None else sparse_lr
        self.sparse_weight_decay = sparse_weight_decay
        # classes are label rows plus one for "a label the model has never seen" (never predicted)
        self.val_metrics = MetricCollection(
            {
                "acc": MeanMetric(),
                "top3": MeanMetric(),
                "macro_f1": MacroF1(),
            },
            prefix="val_",
        )

    def _logits(self, batch: dict) -> torch.Tensor:
        return self.model(batch["x"], batch["mask"], batch["account"], batch["rows"])

    def loss(self, batch: dict) -> torch.Tensor:
        """The training loss of one batch (before the optimiser steps)."""
        logits = self._logits(batch)
        rows, target = batch["rows"], batch["target"]
        log_prior = self.log_prior[rows.clamp(min=0)]
        if self.imbalance == "logit_adjust":
            logits = (logits + self.tau * log_prior).masked_fill(rows < 0, MASKED)
        losses = F.cross_entropy(logits, target, reduction="none")
        if self.imbalance == "class_balanced":  # inverse frequency within the account, tempered by tau
            weight = torch.exp(-self.tau * log_prior.gather(1, target[:, None]).squeeze(1))
            loss = (weight * losses).sum() / weight.sum()
        else:
            loss = losses.mean()
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        optimisers = self.optimizers()
        optimisers = optimisers if isinstance(optimisers, list) else [optimisers]
        for optimiser in optimisers:
            optimiser.zero_grad()
        self.manual_backward(loss)
        for optimiser in optimisers:
            optimiser.step()
        if self.sparse_weight_decay:
            self._decay_touched_rows()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    @torch.no_grad()
    def _decay_touched_rows(self) -> None:
        """Decoupled weight decay (``p -= lr * wd * p``) on the sparse rows this step's gradient touched."""
        factor = 1.0 - self.sparse_lr * self.sparse_weight_decay
        for weight in self.model.sparse_parameters():
            if weight.grad is not None:
                rows = weight.grad.coalesce().indices()[0]
                weight.index_copy_(0, rows, weight.index_select(0, rows) * factor)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._logits(batch)
        rows, target = batch["rows"], batch["target"]
        seen = target >= 0
        if seen.any():
            loss = F.cross_entropy(logits[seen], target[seen])
            self.log("val_loss", loss, batch_size=int(seen.sum()), sync_dist=True)
        unseen_class = len(self.log_prior)
        target_row = torch.where(seen, rows.gather(1, target.clamp(min=0)[:, None]).squeeze(1), unseen_class)
        top = logits.topk(min(3, logits.shape[1]), dim=1).indices
        top_rows = rows.gather(1, top).masked_fill(logits.gather(1, top) <= MASKED / 2, -1)
        self.val_metrics["acc"].update((top_rows[:, 0] == target_row).float())
        self.val_metrics["top3"].update((top_rows == target_row[:, None]).any(1).float())
        self.val_metrics["macro_f1"].update(top_rows[:, 0].clamp(min=0), target_row)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self):
        sparse = {id(p) for p in self.model.sparse_parameters()}
        dense = [p for p in self.parameters() if id(p) not in sparse and p.requires_grad]
        optimisers = [torch.optim.AdamW(dense, lr=self.lr, weight_decay=self.weight_decay)]
        if sparse:
            optimisers.append(torch.optim.SparseAdam(self.model.sparse_parameters(), lr=self.sparse_lr))
        return optimisers
