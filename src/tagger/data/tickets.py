"""Parsed tickets: per-ticket metadata plus a ragged float32 store of sentence embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tagger.data.validation import ValidationReport


@dataclass
class Tickets:
    """Tickets of one parquet file, in file order (quarantined rows left out, see ``report``).

    ``embeddings[offsets[i]:offsets[i + 1]]`` are ticket ``i``'s sentence vectors and
    ``sentence_vocab[sentence_ids[offsets[i]:offsets[i + 1]]]`` their hashed sentence ids.
    A ticket with no embeddings has an empty slice and ``meta.has_embeddings`` False.
    """

    meta: pd.DataFrame
    embeddings: np.ndarray  # float32 [total_sentences, 384], often memory-mapped
    offsets: np.ndarray  # int64 [n_tickets + 1]
    sentence_ids: np.ndarray  # int32 [total_sentences], index into sentence_vocab
    sentence_vocab: np.ndarray  # str [unique sentences]
    report: ValidationReport
    digest: str = ""

    @classmethod
    def from_vectors(cls, account_ids: list[str], vectors: list[np.ndarray]) -> Tickets:
        """Unlabelled tickets built in memory (an API request): one ``[n_i, 384]`` array each."""
        lengths = np.array([len(v) for v in vectors], np.int64)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        meta = pd.DataFrame({"account_id": list(account_ids), "has_embeddings": lengths > 0})
        embeddings = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, 384), np.float32)
        return cls(
            meta,
            embeddings,
            offsets,
            np.zeros(int(offsets[-1]), np.int32),
            np.array([], str),
            ValidationReport(len(meta), len(meta), int((lengths == 0).sum())),
        )

    def __len__(self) -> int:
        return len(self.meta)

    def sentences(self, i: int) -> np.ndarray:
        """Ticket ``i``'s sentence vectors, ``[n_sentences, 384]``."""
        return self.embeddings[self.offsets[i] : self.offsets[i + 1]]

    @property
    def n_sentences(self) -> np.ndarray:
        """Sentences per ticket."""
        return np.diff(self.offsets)

    def subset(self, index: np.ndarray) -> Tickets:
        """The tickets at ``index`` (positions or a boolean mask). When their sentences form one block
        of the store, in order (a time split of a time-ordered file, tickets without embeddings
        left out or not), the embeddings are a view of it, so a memory-mapped store stays mapped
        and several processes share its pages; otherwise they are gathered into RAM."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        lengths = ends - starts
        offsets = np.zeros(len(index) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        filled = lengths > 0
        first, last = starts[filled], ends[filled]
        if np.array_equal(first[1:], last[:-1]):  # one block in order: a view
            lo = int(first[0]) if len(first) else 0
            hi = int(last[-1]) if len(first) else 0
            embeddings, sentence_ids = self.embeddings[lo:hi], self.sentence_ids[lo:hi]
        else:
            rows = np.concatenate([np.arange(s, e) for s, e in zip(first, last, strict=True)])
            embeddings, sentence_ids = np.asarray(self.embeddings[rows]), np.asarray(self.sentence_ids[rows])
        return Tickets(
            meta=self.meta.iloc[index].reset_index(drop=True),
            embeddings=embeddings,
            offsets=offsets,
            sentence_ids=sentence_ids,
            sentence_vocab=self.sentence_vocab,
            report=self.report,
            digest=self.digest,
        )
