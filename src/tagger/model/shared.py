"""The shared contact-reason model, whole in one file.

    sentences [B, S, 384] (masked) --pool--> email [B, 384] --project--> ticket vector [B, d]
    label name embedding [L, 384] --project (tied) + residual [L, K, d]--> label vectors [L, K, d]
    logits [B, W] = soft max over K of scale * cos(ticket, label prototype), over the ticket's own
                    account's labels only (``rows [B, W]``, padded with -1 to the batch's largest set)

Pooling is multi-head attention with learned queries (optionally shifted per account), mixing
the heads back into the sentence space, so an email and a label name live in one space and the
same projection serves both: a label gets a sensible vector from its name alone.

What a ticket or a training step costs depends on its own account's labels only: the label tower
runs on the labels the batch needs, scores are ``[B, W]``, and every per-label and per-account
parameter is a sparse embedding (only the rows of the batch's tickets' merchants get a gradient and
an optimiser step), so nothing grows with the number of other merchants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tagger.model.base import MASKED


@dataclass
class SharedConfig:
    """Architecture settings: conf/model/shared.yaml's ``encoder``, ``projection``, ``labels`` and
    ``score`` sections, flattened (their values live there only), and the sentence vectors' size."""

    dim: int  # the sentence vectors' size (384 for all-MiniLM-L6-v2): the data's, not a setting
    pooling: str  # attention | mean | max
    heads: int
    key_dim: int
    account_query: bool
    hidden: int
    out_dim: int
    dropout: float
    label_init: str  # name | random
    tie_label_tower: bool
    init_scale: float
    learn_scale: bool
    label_bias: bool
    prototypes: int  # vectors per label: a catch-all label ("Other") covers many kinds of email


class AttentionPool(nn.Module):
    """Multi-head attention pooling with learned queries; returns a convex mix of the sentences."""

    def __init__(self, dim: int, heads: int, key_dim: int):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.keys = nn.Linear(dim, heads * key_dim)
        self.query = nn.Parameter(torch.randn(heads, key_dim) / math.sqrt(key_dim))
        self.head_mix = nn.Parameter(torch.zeros(heads))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``shift [B, heads * key_dim]``: each ticket's account's query shift (None: the shared query)."""
        b, s, _ = x.shape
        # keys of the real sentences only: padding to a batch's longest email is most of a batch
        # (about 8% of the positions hold a sentence on the built-in data)
        k = x.new_zeros(b, s, self.heads * self.key_dim).index_put((mask,), self.keys(x[mask]))
        k = k.view(b, s, self.heads, self.key_dim)
        q = self.query.expand(b, -1, -1)
        if shift is not None:
            q = q + shift.view(b, self.heads, self.key_dim)
        scores = torch.einsum("bshd,bhd->bhs", k, q) / math.sqrt(self.key_dim)
        weights = torch.softmax(scores.masked_fill(~mask[:, None, :], MASKED), dim=-1)
        weights = weights * mask[:, None, :]  # a ticket without sentences pools to zeros
        pooled = torch.einsum("bhs,bsd->bhd", weights, x)
        return torch.einsum("h,bhd->bd", torch.softmax(self.head_mix, 0), pooled), weights


class SharedModel(nn.Module):
    """Scores tickets against the labels of their own account.

    ``label_names [L, 384]`` holds the name embeddings of every label row (merchant-contiguous, see
    :class:`tagger.model.label_table.LabelTable`); ``n_accounts`` accounts get a query shift each,
    plus one (the last) for an unknown account.
    """

    def __init__(self, cfg: SharedConfig, label_names: torch.Tensor, n_accounts: int):
        super().__init__()
        self.cfg = cfg
        n_labels = len(label_names)
        self.pool = AttentionPool(cfg.dim, cfg.heads, cfg.key_dim) if cfg.pooling == "attention" else None
        self.account_query = None
        if self.pool is not None and cfg.account_query:
            self.account_query = nn.Embedding(n_accounts + 1, cfg.heads * cfg.key_dim, sparse=True)
            nn.init.zeros_(self.account_query.weight)  # starts as the shared query
        self.project = _mlp(cfg.dim, cfg.hidden, cfg.out_dim, cfg.dropout)
        self.label_tower = (
            None if cfg.tie_label_tower else _mlp(cfg.dim, cfg.hidden, cfg.out_dim, cfg.dropout)
        )
        self.register_buffer("label_names", label_names.float())
        # one row of prototypes x out_dim per label, as a sparse embedding: a step updates its batch's rows
        self.label_residual = nn.Embedding(n_labels, cfg.prototypes * cfg.out_dim, sparse=True)
        nn.init.zeros_(self.label_residual.weight)
        if cfg.label_init == "random":
            nn.init.normal_(self.label_residual.weight, std=0.02)
        elif cfg.prototypes > 1:  # the name gives every prototype one start; noise lets them part
            nn.init.normal_(self.label_residual.weight[:, cfg.out_dim :], std=0.05)
        self.label_bias = nn.Embedding(n_labels, 1, sparse=True) if cfg.label_bias else None
        if self.label_bias is not None:
            nn.init.zeros_(self.label_bias.weight)
        scale = torch.tensor(math.log(cfg.init_scale))
        self.log_scale = nn.Parameter(scale) if cfg.learn_scale else nn.Buffer(scale)

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def query_shift(self, account: torch.Tensor) -> torch.Tensor | None:
        """``[B, q]`` attention-query shift of each ticket's account (None without per-account queries)."""
        return None if self.account_query is None else self.account_query(account)

    def pool_sentences(self, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """One 384-d vector per email."""
        if self.pool is not None:
            return self.pool(x, mask, shift)[0]
        m = mask[..., None].to(x.dtype)
        if self.cfg.pooling == "mean":
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.cfg.pooling == "max":
            return x.masked_fill(~mask[..., None], MASKED).amax(1) * mask.any(1, keepdim=True)
        raise ValueError(f"unknown pooling {self.cfg.pooling!r}: attention, mean or max")

    def label_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, prototypes, d]`` unit vectors of label ``rows`` (every label when None)."""
        if rows is None:
            rows = torch.arange(self.n_labels)
        residual = self.label_residual(rows).view(len(rows), self.cfg.prototypes, self.cfg.out_dim)
        if self.cfg.label_init == "random":
            return F.normalize(residual, dim=-1)
        return F.normalize(self.tower(self.label_names[rows])[:, None, :] + residual, dim=-1)

    def name_vectors(self, names: torch.Tensor) -> torch.Tensor:
        """``[n, d]`` unit vectors of label-name embeddings through the label tower (a new label's vector)."""
        return F.normalize(self.tower(names), dim=-1)

    def ticket_vectors(self, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """``[B, d]`` unit vectors of the tickets; ``shift`` from :meth:`query_shift`."""
        return F.normalize(self.project(self.pool_sentences(x, mask, shift)), dim=-1)

    def encode(
        self, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`ticket_vectors` and each sentence's weight in the pooled vector ``[B, S]`` (the
        heads' attention mixed as the pooling mixes them; sums to 1 over a ticket's sentences): which
        sentences decided. Without attention pooling, equal weights."""
        if self.pool is None:
            m = mask.to(x.dtype)
            return self.ticket_vectors(x, mask, shift), m / m.sum(1, keepdim=True).clamp(min=1.0)
        pooled, weights = self.pool(x, mask, shift)
        mixed = torch.einsum("h,bhs->bs", torch.softmax(self.pool.head_mix, 0), weights)
        return F.normalize(self.project(pooled), dim=-1), mixed

    def score(self, tickets: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, W]`` of unit ``tickets [B, d]`` against ``labels [M, K, d]``: ticket ``b``'s
        candidates are ``labels[index[b]]``; ``index`` -1 pads get a large negative value.

        ``labels`` holds the batch's merchants' labels only (M is at most B x W), so scoring every
        ticket against all of them is one small matrix product, then each keeps its own."""
        m, k, d = labels.shape
        cosine = (tickets @ labels.reshape(m * k, d).T).view(-1, m, k)
        # a soft maximum over a label's prototypes (exactly the cosine when there is one)
        logits = torch.logsumexp(self.log_scale.exp() * cosine, dim=-1) - math.log(self.cfg.prototypes)
        return logits.gather(1, index.clamp(min=0)).masked_fill(index < 0, MASKED)

    def candidates(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The labels of padded ``rows [B, W]`` (-1 pads) and nothing else: their vectors ``[M, K, d]``
        (M distinct rows), each ticket's ``index [B, W]`` into them (-1 pads) and their bias ``[M]``
        (None without one). Pads look nothing up: no parameter row outside ``rows`` gets a gradient."""
        needed, index = candidate_index(rows)
        bias = None if self.label_bias is None else self.label_bias(needed).squeeze(-1)
        return self.label_vectors(needed), index, bias

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, account: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, W]`` of each ticket against its own account's label ``rows [B, W]`` (-1 pads):
        only the batch's labels go through the label tower."""
        tickets = self.ticket_vectors(x, mask, self.query_shift(account))
        return self.score_candidates(tickets, *self.candidates(rows))

    def score_candidates(
        self, tickets: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """:meth:`score` plus the labels' bias; all pads when there is no candidate at all."""
        if not len(labels):  # only unknown accounts
            return torch.full(index.shape, MASKED, dtype=tickets.dtype, device=tickets.device)
        logits = self.score(tickets, labels, index)
        if bias is None:
            return logits
        return (logits + bias[index.clamp(min=0)]).masked_fill(index < 0, MASKED)

    def account_queries(self) -> torch.Tensor | None:
        """``[A + 1, q]`` every account's query shift, the last an unknown account's (None without)."""
        return None if self.account_query is None else self.account_query.weight.detach()

    def relabelled(
        self, names: torch.Tensor, vectors: torch.Tensor, queries: torch.Tensor | None, n_accounts: int
    ) -> SharedModel:
        """A copy scoring other labels: ``names [L, 384]``, ``vectors [L, K, d]`` (its
        :meth:`label_vectors` give these, normalised) and ``queries [A + 1, q]``; the encoder is shared."""
        model = SharedModel(self.cfg, names, n_accounts)
        state = {k: v for k, v in self.state_dict().items() if k not in ("label_names", "label_bias.weight")}
        with torch.no_grad():
            if self.cfg.label_init != "random":  # the residual that makes label_vectors() give these
                vectors = vectors - self.tower(names)[:, None, :]
        state["label_residual.weight"] = vectors.reshape(len(vectors), -1)
        if queries is not None:
            state["account_query.weight"] = queries
        model.load_state_dict(state, strict=False)
        return model.eval()

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The per-label and per-account parameters (sparse gradients: a lazy optimiser steps their
        batch's rows only)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]

    def tower(self, names: torch.Tensor) -> torch.Tensor:
        """Label-name embeddings ``[n, 384]`` through the label tower, before normalising."""
        return (self.project if self.label_tower is None else self.label_tower)(names)


def candidate_index(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct label rows ``[M]`` of padded ``rows [B, W]`` (-1 pads) and each ticket's
    ``index [B, W]`` into them (-1 pads)."""
    valid = rows >= 0
    needed = torch.unique(rows[valid])
    return needed, torch.where(valid, torch.searchsorted(needed, rows.clamp(min=0)), -1)


def _mlp(dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))
