"""The label inventory of a fitted model: every (account, label) pair seen in training.

Every model (shared or baseline) scores a ticket against the rows of its own account only. The
table is merchant-contiguous (CSR: an account's rows are ``starts[a] .. starts[a] + counts[a]``),
so :meth:`LabelTable.gather` gives each ticket its own account's rows in O(its labels), whatever
the number of other merchants: nothing here is ``[accounts, labels]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tagger.data.labels import label_text


@dataclass
class LabelTable:
    """``frame``: one row per (account_id, label), grouped by account, with ``text`` (the name as
    words) and ``n_train``. ``account_slices`` maps an account to its contiguous row range."""

    frame: pd.DataFrame

    def __post_init__(self) -> None:
        self.frame = self.frame.reset_index(drop=True)
        accounts = self.frame["account_id"].to_numpy()
        starts = np.r_[0, np.flatnonzero(accounts[1:] != accounts[:-1]) + 1]
        ends = np.r_[starts[1:], len(accounts)]
        self.account_slices = {str(accounts[s]): (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}
        self.accounts = list(self.account_slices)
        self.account_index = {a: i for i, a in enumerate(self.accounts)}
        self.names = self.frame["label"].to_numpy(object)  # the label of each row
        self.starts = np.r_[starts, len(accounts)].astype(np.int64)
        self.counts = np.r_[ends - starts, 0].astype(np.int64)
        self._row = {
            (a, lab): i for i, (a, lab) in enumerate(zip(accounts, self.frame["label"], strict=True))
        }

    @classmethod
    def from_meta(cls, meta: pd.DataFrame) -> LabelTable:
        """Every (account, label) pair of ``meta`` with its ticket count, sorted by account then label."""
        counts = meta.groupby(["account_id", "label"], observed=True).size().rename("n_train").reset_index()
        return cls.from_pairs(counts["account_id"], counts["label"], counts["n_train"])

    @classmethod
    def from_pairs(
        cls, accounts: Iterable[str], labels: Iterable[str], n_train: Iterable[int] | None = None
    ) -> LabelTable:
        """A table of (account, label) pairs (``n_train`` 0 where not given), sorted by account then
        label as :meth:`from_meta` sorts; a pair given twice is one row with the counts summed."""
        frame = pd.DataFrame({"account_id": list(accounts), "label": list(labels)})
        frame["n_train"] = 0 if n_train is None else np.asarray(list(n_train), np.int64)
        frame["account_id"] = frame["account_id"].astype(str)
        frame["label"] = frame["label"].astype(str)
        frame = frame.groupby(["account_id", "label"], sort=True)["n_train"].sum().reset_index()
        frame["text"] = frame["label"].map(label_text)
        return cls(frame[["account_id", "label", "n_train", "text"]])

    def __len__(self) -> int:
        return len(self.frame)

    def sizes(self) -> dict[str, int]:
        """``{account: how many labels it has}``."""
        return {a: e - s for a, (s, e) in self.account_slices.items()}

    @property
    def n_accounts(self) -> int:
        return len(self.accounts)

    def rows_of(self, account_id: str) -> range:
        """Row indices of an account's labels (empty for an unknown account)."""
        start, end = self.account_slices.get(str(account_id), (0, 0))
        return range(start, end)

    def row(self, account_id: str, label: str) -> int:
        """Row of (account, label), or -1 when that label was never seen for the account."""
        return self._row.get((str(account_id), str(label)), -1)

    def rows(self, accounts: pd.Series, labels: pd.Series) -> np.ndarray:
        """Rows of many (account, label) pairs; -1 where unseen."""
        return np.fromiter(
            (self._row.get((str(a), str(b)), -1) for a, b in zip(accounts, labels, strict=True)),
            np.int64,
            len(accounts),
        )

    def account_ids(self, accounts: pd.Series) -> np.ndarray:
        """Account index of each ticket; -1 for an account with no labels in the table."""
        return np.fromiter((self.account_index.get(str(a), -1) for a in accounts), np.int64, len(accounts))

    def account_of_row(self) -> np.ndarray:
        """Account index of every row."""
        return np.repeat(np.arange(self.n_accounts, dtype=np.int64), self.counts[:-1])

    def gather(self, account_index: np.ndarray) -> np.ndarray:
        """``[n, W]`` rows of each ticket's own account (``-1`` pads), ``W`` the largest label set
        among these accounts; ``account_index`` -1 or ``n_accounts`` (unknown) gives no rows."""
        return gather_rows(
            self.starts, self.counts, np.where(account_index < 0, self.n_accounts, account_index)
        )

    def log_prior(self) -> np.ndarray:
        """log of each label's share of its account's training tickets."""
        n = self.frame["n_train"].to_numpy(float)
        totals = self.frame.groupby("account_id", sort=False)["n_train"].transform("sum").to_numpy(float)
        return np.log(np.maximum(n, 1e-9) / np.maximum(totals, 1e-9))


def gather_rows(starts: np.ndarray, counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``[n, W]`` row numbers ``starts[i] + j`` for ``j < counts[i]`` of each entry of ``index``, -1
    beyond: the padded candidate rows of a batch (``W`` at least 1)."""
    index = np.asarray(index, np.int64)
    n = counts[index]
    width = max(int(n.max()) if len(index) else 0, 1)
    pos = np.arange(width)
    return np.where(pos[None, :] < n[:, None], starts[index][:, None] + pos[None, :], -1)
