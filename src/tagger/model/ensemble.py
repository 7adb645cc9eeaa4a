"""Several fits of the shared model (one per seed) as one model: the mean of their logits, each at
its own temperature.

A ticket's vector is the members' unit vectors side by side (each divided by sqrt(S), so the whole is
a unit vector), and so is a label's; :meth:`EnsembleModel.score` normalises each member's part
again and sums the members' logits. Everything that handles one model's vectors therefore handles an
ensemble's unchanged: the label store, label updates (a new label's name goes through every
member's tower; an example folds into every member's part at once, and the per-part normalisation
makes that exactly each member's own fold-in), the ONNX export (one graph) and the API.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tagger.model.base import MASKED
from tagger.model.shared import SharedModel, candidate_index
from tagger.model.shared_estimator import SharedEstimator


class EnsembleModel(nn.Module):
    """``members`` (SharedModels over one label table) scored as the mean of their logits divided by
    their ``temperatures``: the ensemble's own temperature is 1."""

    def __init__(self, members: list[SharedModel], temperatures: list[float]):
        super().__init__()
        if len(members) != len(temperatures) or not members:
            raise ValueError("an ensemble needs one temperature per member, and at least one member")
        if any(m.label_bias is not None for m in members):
            raise ValueError("ensemble members need score.label_bias: false (logits are vector products)")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg
        self.temperatures = [float(t) for t in temperatures]
        self.register_buffer("weights", torch.tensor([1.0 / (t * len(members)) for t in self.temperatures]))
        self.label_bias = None

    @property
    def n_labels(self) -> int:
        return self.members[0].n_labels

    def _side_by_side(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def query_shift(self, account: torch.Tensor) -> torch.Tensor | None:
        """``[B, S q]``: each member's query shift of each ticket's account, side by side."""
        shifts = [m.query_shift(account) for m in self.members]
        return None if shifts[0] is None else torch.cat(shifts, dim=-1)

    def account_queries(self) -> torch.Tensor | None:
        """``[A + 1, S q]``: the members' account query shifts side by side."""
        queries = [m.account_queries() for m in self.members]
        return None if queries[0] is None else torch.cat(queries, dim=-1)

    def ticket_vectors(self, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """``[B, S d]`` unit vectors: the members' ticket vectors side by side."""
        parts = len(self.members)
        shifts = [None] * parts if shift is None else shift.unflatten(-1, (parts, -1)).unbind(-2)
        vectors = [m.ticket_vectors(x, mask, s) for m, s in zip(self.members, shifts, strict=True)]
        return self._side_by_side(vectors)

    def encode(
        self, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`ticket_vectors` and each sentence's weight ``[B, S]``, the members' mean."""
        parts = len(self.members)
        shifts = [None] * parts if shift is None else shift.unflatten(-1, (parts, -1)).unbind(-2)
        pairs = [m.encode(x, mask, s) for m, s in zip(self.members, shifts, strict=True)]
        return self._side_by_side([v for v, _ in pairs]), torch.stack([w for _, w in pairs]).mean(0)

    def label_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, K, S d]`` unit vectors of label ``rows`` (every label when None)."""
        return self._side_by_side([m.label_vectors(rows) for m in self.members])

    def name_vectors(self, names: torch.Tensor) -> torch.Tensor:
        """``[n, S d]`` unit vectors of label-name embeddings through every member's tower."""
        return self._side_by_side([m.name_vectors(names) for m in self.members])

    def score(self, tickets: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, W]``: the mean over members of each one's :meth:`SharedModel.score` at its
        temperature, each member's part of ``tickets [B, S d]`` and ``labels [M, K, S d]`` normalised."""
        parts, k = len(self.members), self.cfg.prototypes
        t = F.normalize(tickets.unflatten(-1, (parts, -1)), dim=-1)
        lab = F.normalize(labels.unflatten(-1, (parts, -1)), dim=-1)
        cosine = torch.einsum("bsd,mksd->bmks", t, lab)
        scale = torch.stack([member.log_scale for member in self.members]).exp()
        logits = torch.logsumexp(scale * cosine, dim=2) - math.log(k)  # [B, M, S]
        logits = (logits * self.weights).sum(-1)
        return logits.gather(1, index.clamp(min=0)).masked_fill(index < 0, MASKED)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, account: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, W]`` of each ticket against its own account's label ``rows [B, W]`` (-1 pads)."""
        needed, index = candidate_index(rows)
        if not len(needed):  # only unknown accounts
            return torch.full(index.shape, MASKED, dtype=x.dtype, device=x.device)
        tickets = self.ticket_vectors(x, mask, self.query_shift(account))
        return self.score(tickets, self.label_vectors(needed), index)

    def relabelled(
        self, names: torch.Tensor, vectors: torch.Tensor, queries: torch.Tensor | None, n_accounts: int
    ) -> EnsembleModel:
        """A copy scoring other labels (:meth:`SharedModel.relabelled`, member by member)."""
        parts = len(self.members)
        blocks = vectors.unflatten(-1, (parts, -1)).unbind(-2)
        shifts = [None] * parts if queries is None else queries.unflatten(-1, (parts, -1)).unbind(-2)
        members = [
            m.relabelled(names, v.contiguous(), None if q is None else q.contiguous(), n_accounts)
            for m, v, q in zip(self.members, blocks, shifts, strict=True)
        ]
        return EnsembleModel(members, self.temperatures).eval()


class SeedEnsemble(SharedEstimator):
    """Fits of the shared model with different seeds, served as one :class:`EnsembleModel` (one
    predictor, one export). ``fit`` and ``refit`` fit every member (each with its own seed and its
    own choices); members already fitted are merged at once."""

    name = "shared ensemble"

    def __init__(self, members: list[SharedEstimator]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        super().__init__(
            first.cfg,
            first.trainer_cfg,
            seed=first.seed,
            log_dir=first.log_dir,
            embedder=first.embedder,
            callbacks=first.callbacks_cfg,
            logger=first.logger_cfg,
        )
        self.members = list(members)
        if all(getattr(m, "model", None) is not None for m in members):
            self._merge()

    def _merge(self) -> None:
        first = self.members[0]
        for m in self.members[1:]:
            if len(m.table.names) != len(first.table.names) or (m.table.names != first.table.names).any():
                raise ValueError("ensemble members must share one label table (fit on the same tickets)")
        self.table, self.prior, self.name_vectors = first.table, first.prior, first.name_vectors
        self.model = EnsembleModel([m.model for m in self.members], [m.temperature for m in self.members])
        self.model.eval()
        self.temperature = 1.0
        self.fit_info = {
            **first.fit_info,
            "members": [{"seed": m.seed, "temperature": m.temperature, **m.fit_info} for m in self.members],
        }

    def fit(self, train, val=None) -> SeedEnsemble:
        """Fit every member on ``train``, each choosing on ``val`` with its own seed."""
        self.members = [m.fit(train, val) for m in self.members]
        self._merge()
        return self

    def refit(self, window) -> SeedEnsemble:
        """Every member refit on ``window`` with its own choices."""
        return SeedEnsemble([m.refit(window) for m in self.members])


def member_of(estimator: SharedEstimator, index: int) -> SharedEstimator:
    """Member ``index`` of an ensemble estimator (one loaded by ``load_shared`` included) alone, at
    its own temperature: what one fit would serve."""
    model = estimator.model
    if not isinstance(model, EnsembleModel):
        raise ValueError("member_of needs an ensemble (model.members > 1)")
    if not 0 <= index < len(model.members):
        raise ValueError(f"member {index}: the ensemble has members 0..{len(model.members) - 1}")
    out = copy.copy(estimator)
    out.model, out.temperature = model.members[index], model.temperatures[index]
    return out


def seed_ensemble(
    model_config: dict, members: int, seed: int, log_dir: Path | None = None, **shared
) -> SharedEstimator:
    """The shared model of ``model_config`` (conf/model/shared.yaml's ``_target_``): fits with seeds
    ``seed``, ``seed + 1``, ... (``members`` of them), one estimator when ``members`` is 1 and their
    :class:`SeedEnsemble` otherwise; ``shared`` goes to each :class:`SharedEstimator` (trainer,
    embedder, callbacks, logger, score). With several members each logs under ``log_dir/memberI``."""
    fits = [
        SharedEstimator(
            model_config,
            seed=seed + i,
            log_dir=log_dir / f"member{i}" if log_dir is not None and members > 1 else log_dir,
            **shared,
        )
        for i in range(members)
    ]
    return fits[0] if members == 1 else SeedEnsemble(fits)
