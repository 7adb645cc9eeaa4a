"""The shared contact-reason model, whole in one file.

    sentences [B, S, 384] (masked) --pool--> email [B, 384] --project--> ticket vector [B, d]
    label name embedding [L, 384] --project (tied) + residual [L, K, d]--> label vectors [L, K, d]
    logits = soft max over K of scale * cos(ticket, label prototype), own account's labels only

Pooling is multi-head attention with learned queries (optionally shifted per account), mixing
the heads back into the sentence space, so an email and a label name live in one space and the
same projection serves both: a label gets a sensible vector from its name alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MASKED = -1e9  # not -inf: a ticket without sentences must give zeros, not NaN


@dataclass
class SharedConfig:
    """Architecture settings (conf/model/shared.yaml: ``encoder``, ``projection``, ``labels``, ``score``)."""

    dim: int = 384
    pooling: str = "attention"  # attention | mean | max
    heads: int = 4
    key_dim: int = 64
    account_query: bool = True
    hidden: int = 512
    out_dim: int = 256
    dropout: float = 0.1
    label_init: str = "name"  # name | random
    tie_label_tower: bool = True
    init_scale: float = 20.0
    learn_scale: bool = True
    label_bias: bool = False
    prototypes: int = 1  # vectors per label: a catch-all label ("Other") covers many kinds of email


class AttentionPool(nn.Module):
    """Multi-head attention pooling with learned queries; returns a convex mix of the sentences."""

    def __init__(self, dim: int, heads: int, key_dim: int, n_accounts: int, account_query: bool):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.keys = nn.Linear(dim, heads * key_dim)
        self.query = nn.Parameter(torch.randn(heads, key_dim) / math.sqrt(key_dim))
        self.account_query = nn.Embedding(n_accounts + 1, heads * key_dim) if account_query else None
        if self.account_query is not None:
            nn.init.zeros_(self.account_query.weight)  # starts as the shared query
        self.head_mix = nn.Parameter(torch.zeros(heads))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, account: torch.Tensor, queries: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries`` replaces the learned per-account query shifts (a label update adds accounts)."""
        b, s, _ = x.shape
        k = self.keys(x).view(b, s, self.heads, self.key_dim)
        q = self.query.expand(b, -1, -1)
        if self.account_query is not None:
            shift = self.account_query(account) if queries is None else queries[account]
            q = q + shift.view(b, self.heads, self.key_dim)
        scores = torch.einsum("bshd,bhd->bhs", k, q) / math.sqrt(self.key_dim)
        weights = torch.softmax(scores.masked_fill(~mask[:, None, :], MASKED), dim=-1)
        weights = weights * mask[:, None, :]  # a ticket without sentences pools to zeros
        pooled = torch.einsum("bhs,bsd->bhd", weights, x)
        return torch.einsum("h,bhd->bd", torch.softmax(self.head_mix, 0), pooled), weights


class SharedModel(nn.Module):
    """Scores tickets against the labels of their own account."""

    def __init__(
        self, cfg: SharedConfig, label_names: torch.Tensor, label_account: torch.Tensor, n_accounts: int
    ):
        super().__init__()
        self.cfg = cfg
        n_labels = len(label_names)
        self.pool = (
            AttentionPool(cfg.dim, cfg.heads, cfg.key_dim, n_accounts, cfg.account_query)
            if cfg.pooling == "attention"
            else None
        )
        self.project = _mlp(cfg.dim, cfg.hidden, cfg.out_dim, cfg.dropout)
        self.label_tower = (
            None if cfg.tie_label_tower else _mlp(cfg.dim, cfg.hidden, cfg.out_dim, cfg.dropout)
        )
        self.register_buffer("label_names", label_names.float())
        self.label_residual = nn.Parameter(torch.zeros(n_labels, cfg.prototypes, cfg.out_dim))
        if cfg.label_init == "random":
            nn.init.normal_(self.label_residual, std=0.02)
        elif cfg.prototypes > 1:  # the name gives every prototype one start; noise lets them part
            nn.init.normal_(self.label_residual[:, 1:], std=0.05)
        self.label_bias = nn.Parameter(torch.zeros(n_labels)) if cfg.label_bias else None
        scale = torch.tensor(math.log(cfg.init_scale))
        self.log_scale = nn.Parameter(scale) if cfg.learn_scale else nn.Buffer(scale)
        # account_mask[a, l]: label l belongs to account a; the last row (unknown account) is empty
        account_mask = torch.zeros(n_accounts + 1, n_labels, dtype=torch.bool)
        account_mask[label_account, torch.arange(n_labels)] = True
        self.register_buffer("account_mask", account_mask)

    def pool_sentences(
        self, x: torch.Tensor, mask: torch.Tensor, account: torch.Tensor, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One 384-d vector per email."""
        if self.pool is not None:
            return self.pool(x, mask, account, queries)[0]
        m = mask[..., None].to(x.dtype)
        if self.cfg.pooling == "mean":
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.cfg.pooling == "max":
            return x.masked_fill(~mask[..., None], MASKED).amax(1) * mask.any(1, keepdim=True)
        raise ValueError(f"unknown pooling {self.cfg.pooling!r}: attention, mean or max")

    def label_vectors(self) -> torch.Tensor:
        """``[L, prototypes, d]`` unit vectors of every label."""
        if self.cfg.label_init == "random":
            vectors = self.label_residual
        else:
            tower = self.project if self.label_tower is None else self.label_tower
            vectors = tower(self.label_names)[:, None, :] + self.label_residual
        return F.normalize(vectors, dim=-1)

    def name_vectors(self, names: torch.Tensor) -> torch.Tensor:
        """``[n, d]`` unit vectors of label-name embeddings through the label tower (a new label's vector)."""
        tower = self.project if self.label_tower is None else self.label_tower
        return F.normalize(tower(names), dim=-1)

    def ticket_vectors(
        self, x: torch.Tensor, mask: torch.Tensor, account: torch.Tensor, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, d]`` unit vectors of the tickets."""
        return F.normalize(self.project(self.pool_sentences(x, mask, account, queries)), dim=-1)

    def score(self, tickets: torch.Tensor, labels: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L]`` of unit ticket vectors against ``labels [L, K, d]``; ``own [B, L]`` says
        which labels are the ticket's account's: the others get a large negative value."""
        n_labels, k, d = labels.shape
        cosine = (tickets @ labels.reshape(n_labels * k, d).T).view(-1, n_labels, k)
        # a soft maximum over a label's prototypes (exactly the cosine when there is one)
        logits = torch.logsumexp(self.log_scale.exp() * cosine, dim=-1) - math.log(self.cfg.prototypes)
        if self.label_bias is not None:
            logits = logits + self.label_bias
        return logits.masked_fill(~own, MASKED)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        account: torch.Tensor,
        label_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L]``; labels of other accounts get a large negative value."""
        labels = self.label_vectors() if label_vectors is None else label_vectors
        return self.score(self.ticket_vectors(x, mask, account), labels, self.account_mask[account])


def _mlp(dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))
