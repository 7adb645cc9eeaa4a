"""The shared model behind the fit / predict interface: Lightning training, temperature, fallback."""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from tagger.data.tickets import Tickets
from tagger.model.base import AccountPrior, Estimator, Predictions, calibrated_probs, predictions_from_probs
from tagger.model.batches import TicketBatches
from tagger.model.datamodule import TicketDataModule
from tagger.model.label_table import LabelTable
from tagger.model.lit import LitShared
from tagger.model.shared import MASKED, SharedConfig, SharedModel
from tagger.schema import SharedModelConf, TrainerConf, checked

ARCHITECTURE = ("encoder", "projection", "labels", "score")  # the sections that build the network
ARCHITECTURE_KEYS = frozenset(f.name for f in fields(SharedConfig))


def architecture(cfg: dict, dim: int) -> SharedConfig:
    """The network a ``model`` config (conf/model/shared.yaml, as a dict) builds over ``dim``-wide
    sentence embeddings."""
    flat = {"dim": dim}
    for section in ARCHITECTURE:
        flat.update(cfg[section])
    return SharedConfig(**{k: v for k, v in flat.items() if k in ARCHITECTURE_KEYS})


def lit_module(model: SharedModel, log_prior: torch.Tensor, cfg: dict) -> LitShared:
    """The Lightning module training ``model`` as a ``model`` config's optimiser and imbalance say."""
    opt, imb = cfg["optim"], cfg["imbalance"]
    return LitShared(
        model,
        log_prior,
        imbalance=imb["method"],
        tau=imb["tau"],
        lr=opt["lr"],
        weight_decay=opt["weight_decay"],
        sparse_lr=opt["sparse_lr"],
        sparse_weight_decay=opt["sparse_weight_decay"],
    )


class SharedEstimator(Estimator):
    """One model for every account. ``cfg`` is the ``model`` config (conf/model/shared.yaml),
    ``trainer`` the ``trainer`` config (conf/trainer/default.yaml: Lightning Trainer arguments),
    ``callbacks`` and ``logger`` the configs of conf/callbacks and conf/logger (``_target_`` +
    arguments, built with ``hydra.utils.instantiate``; None: no early stopping or checkpoint, no
    logger). ``score(predictions, val, train)`` is what the validation slice maximises (early stopping
    and the best checkpoint choose by it, logged as ``val_account_macro_f1``); a fit with a
    validation slice needs it, so the protocol that owns the choice passes it in."""

    name = "shared"

    def __init__(
        self,
        cfg: dict,
        trainer: dict,
        seed: int = 0,
        log_dir: str | Path | None = None,
        embedder=None,
        callbacks: dict | None = None,
        logger: dict | None = None,
        score: Callable[[Predictions, Tickets, Tickets], float] | None = None,
    ):
        # the schema of conf/ checks every key and type of a mapping handed in directly (a test, a
        # refit); a saved model keeps only what prediction reads, so a partial one is accepted here
        # and fit checks that nothing is missing
        self.cfg = OmegaConf.to_container(checked(SharedModelConf, cfg, "model", partial=True))
        self.trainer_cfg = OmegaConf.to_container(checked(TrainerConf, trainer, "trainer", partial=True))
        self.seed = seed
        self.callbacks_cfg, self.logger_cfg, self.score = callbacks, logger, score
        self.log_dir = log_dir
        self.embedder = embedder
        self.temperature = 1.0
        self.fit_info: dict = {}

    @property
    def max_sentences(self) -> int:
        """The first sentences of an email the model reads (``encoder.max_sentences``)."""
        return int(self.cfg["encoder"]["max_sentences"])

    # ---- construction -------------------------------------------------------------------------
    def _build(self, table: LabelTable, name_vectors: np.ndarray) -> SharedModel:
        vectors = np.asarray(name_vectors, np.float32)
        network = architecture(self.cfg, vectors.shape[1])
        return SharedModel(network, torch.from_numpy(vectors), table.n_accounts)

    def _name_vectors(self, table: LabelTable) -> np.ndarray:
        if self.embedder is None:
            from tagger.embed import SentenceEmbedder

            self.embedder = SentenceEmbedder()
        return self.embedder.embed(table.frame["text"].tolist(), progress=False)

    def _batches(self, tickets: Tickets, train: bool = False) -> TicketBatches:
        enc = self.cfg["encoder"]
        account = self.table.account_ids(tickets.meta["account_id"])
        account = np.where(account < 0, self.table.n_accounts, account)
        target = (
            self.table.rows(tickets.meta["account_id"], tickets.meta["label"])
            if "label" in tickets.meta
            else None
        )
        return TicketBatches(
            tickets,
            account,
            self.table,
            self.max_sentences,
            target,
            sentence_dropout=enc["sentence_dropout"] if train else 0.0,
        )

    # ---- fit ----------------------------------------------------------------------------------
    def _check_complete(self) -> None:
        """A fit reads every key of the model and trainer configs: none may be missing."""
        checked(SharedModelConf, self.cfg, "model")
        checked(TrainerConf, self.trainer_cfg, "trainer")

    def fit(self, train: Tickets, val: Tickets | None = None) -> SharedEstimator:
        self._check_complete()
        L.seed_everything(self.seed, workers=True, verbose=False)
        self.table = LabelTable.from_meta(train.meta)
        self.prior = AccountPrior(self.table, train.meta)
        self.name_vectors = self._name_vectors(self.table)
        self.model = self._build(self.table, self.name_vectors)
        opt = self.cfg["optim"]
        lit = lit_module(self.model, torch.from_numpy(self.table.log_prior()), self.cfg)
        has = train.meta["has_embeddings"].to_numpy()
        train_data = self._batches(train.subset(has), train=True)
        val_data = None
        if val is not None and val.meta["has_embeddings"].any():
            val_data = self._batches(val.subset(val.meta["has_embeddings"].to_numpy()))
        data = TicketDataModule(train_data, val_data, opt["batch_size"], seed=self.seed)
        log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="tagger-logs-"))
        callbacks, checkpoint = self._callbacks(train, val, log_dir) if val_data is not None else ([], None)
        tcfg = dict(self.trainer_cfg)
        if val_data is None:  # a refit keeps its last epoch: no checkpoint to choose from
            tcfg.setdefault("enable_checkpointing", False)
        trainer = L.Trainer(
            logger=self._logger(log_dir), callbacks=callbacks, enable_model_summary=False, **tcfg
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            if val_data is None:  # a refit: nothing is left to validate on, by design
                warnings.filterwarnings("ignore", message="You defined a `validation_step`")
            trainer.fit(lit, datamodule=data)
        seconds = time.perf_counter() - t0
        best_epoch = None
        if checkpoint is not None and checkpoint.best_model_path:
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            lit.load_state_dict(best["state_dict"])
            best_epoch = int(best["epoch"])  # the checkpoint's own record, whatever its file is named
        self.model = lit.model.eval()
        self.fit_info = {
            "epochs": trainer.current_epoch,
            "best_epoch": best_epoch,
            "best_score": float(checkpoint.best_model_score)
            if checkpoint and checkpoint.best_model_score is not None
            else None,
            "train_seconds": seconds,
            "train_tickets": len(train_data),
            "tickets_per_second": len(train_data) * max(trainer.current_epoch, 1) / max(seconds, 1e-9),
            "is_global_zero": trainer.is_global_zero,
            "world_size": trainer.world_size,  # processes that shared the training tickets (DDP)
            "batches_per_epoch": int(trainer.num_training_batches),  # of one process: its shard
        }
        if self.cfg["confidence"]["fit_temperature"] and val_data is not None:
            self.temperature = self._fit_temperature(data.val_dataloader())
        return self

    def _callbacks(
        self, train: Tickets, val: Tickets, log_dir: Path
    ) -> tuple[list[Callback], ModelCheckpoint | None]:
        """The selection score, then the configured callbacks (conf/callbacks); the checkpoint, if
        one is configured, writes under ``log_dir`` and gives the best epoch."""
        if self.score is None:
            raise ValueError("a fit with a validation slice needs a selection score (score=...)")
        built: list[Callback] = [SelectionScore(self, train, val)]
        checkpoint = None
        for name, spec in (self.callbacks_cfg or {}).items():
            extra = (
                {"dirpath": log_dir / "checkpoints"} if "ModelCheckpoint" in spec.get("_target_", "") else {}
            )
            callback = _instantiate(f"callbacks.{name}", spec, **extra)
            built.append(callback)
            if isinstance(callback, ModelCheckpoint):
                checkpoint = callback
        return built, checkpoint

    def _logger(self, log_dir: Path):
        """The configured logger (conf/logger), writing under ``log_dir`` where it writes files."""
        if not self.logger_cfg:
            return False
        target = self.logger_cfg.get("_target_", "")
        if not target.endswith("MLFlowLogger"):
            return _instantiate("logger", self.logger_cfg, save_dir=str(log_dir))
        if str(self.logger_cfg.get("tracking_uri", "")).startswith("file:"):
            # MLflow 3 keeps its file store only on request (it asks for a database otherwise,
            # which the skinny client cannot write); a local store needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return _instantiate("logger", self.logger_cfg)

    def refit(self, window: Tickets) -> SharedEstimator:
        """A model trained from scratch on the whole ``window`` for as many epochs as this one's best
        checkpoint had, with this one's temperature (fit out of sample, on validation): nothing is
        left over to choose either on, so both are carried over from the selection fit."""
        if not self.fit_info:
            raise RuntimeError("refit needs a fitted SharedEstimator (its epoch count and temperature)")
        best = self.fit_info.get("best_epoch")
        epochs = (best + 1) if best is not None else max(int(self.fit_info["epochs"]), 1)
        log_dir = Path(self.log_dir) / "refit" if self.log_dir else None
        trainer = {**self.trainer_cfg, "max_epochs": epochs}
        refit = SharedEstimator(
            self.cfg,
            trainer,
            seed=self.seed,
            log_dir=log_dir,
            embedder=self.embedder,
            callbacks=self.callbacks_cfg,
            logger=self.logger_cfg,
            score=self.score,
        )
        refit.fit(window)
        refit.temperature = self.temperature
        refit.fit_info["selection"] = {
            k: self.fit_info.get(k) for k in ("epochs", "best_epoch", "best_score", "train_tickets")
        }
        return refit

    @torch.no_grad()
    def _collect_logits(self, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (padded to the widest account) and target positions of every batch of ``loader``."""
        self.model.eval()
        logits, targets = [], []
        for batch in loader:
            logits.append(self.model(batch["x"], batch["mask"], batch["account"], batch["rows"]))
            targets.append(batch["target"])
        width = max(len(t[0]) for t in logits) if logits else 1
        padded = [F.pad(t, (0, width - t.shape[1]), value=MASKED) for t in logits]
        return torch.cat(padded), torch.cat(targets)

    def _fit_temperature(self, loader: DataLoader) -> float:
        """The temperature that minimises validation NLL (Guo et al., 2017); seen labels only."""
        logits, target = self._collect_logits(loader)
        keep = target >= 0
        if keep.sum() < 10:
            return 1.0
        logits, target = logits[keep], target[keep]
        log_t = torch.zeros((), requires_grad=True)
        optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), target)
            loss.backward()
            return loss

        optimiser.step(closure)
        t = float(log_t.detach().exp())
        return t if math.isfinite(t) and 0.05 < t < 20 else 1.0

    # ---- predict ------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, tickets: Tickets, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits ``[n, W]`` (the scores before temperature and softmax) of each ticket's own
        account's label ``rows [n, W]`` (rows of ``self.table``, -1 pads)."""
        data = self._batches(tickets)
        self.model.eval()
        rows = self.table.gather(data.account)
        out = np.full(rows.shape, MASKED, np.float32)
        order = data.by_length()  # batches of like lengths: little padding
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            batch = data.collate(idx)  # the tower runs on this batch's merchants' labels only
            scores = self.model(batch["x"], batch["mask"], batch["account"], batch["rows"]).numpy()
            out[idx, : scores.shape[1]] = scores
        return out, rows

    def predict(self, tickets: Tickets, k: int = 5) -> Predictions:
        logits, rows = self.logits(tickets)
        return self.predictions(calibrated_probs(logits, rows, self.temperature), rows, tickets, k)

    def predictions(self, probs: np.ndarray, rows: np.ndarray, tickets: Tickets, k: int = 5) -> Predictions:
        """Predictions of ``tickets`` from calibrated ``probs`` over their ``rows`` of this model's label
        table (the account prior where a ticket has no embeddings)."""
        return predictions_from_probs(
            probs,
            rows,
            tickets.meta["has_embeddings"].to_numpy(),
            self.prior.probs,
            self.table.names,
            k,
            self.cfg["confidence"]["null_fallback"] == "abstain",
        )


class SelectionScore(Callback):
    """Logs ``val_account_macro_f1`` after each validation epoch: the estimator's ``score`` of the
    model as it stands, predicted through :meth:`SharedEstimator.predict` (every validation
    ticket, the prior fallback and unseen labels included), so early stopping and the best
    checkpoint choose by the very figure the reports lead with."""

    key = "val_account_macro_f1"

    def __init__(self, estimator: SharedEstimator, train: Tickets, val: Tickets):
        self.estimator, self.train, self.val = estimator, train, val

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = self.estimator.score(self.estimator.predict(self.val), self.val, self.train)
        pl_module.log(self.key, score, prog_bar=True)


def _instantiate(where: str, spec: dict, **extra):
    """``hydra.utils.instantiate`` of one ``_target_`` config; a bad one is a ValueError naming ``where``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(spec, **extra)
    except InstantiationException as err:
        raise ValueError(f"{where}: {err}") from None
