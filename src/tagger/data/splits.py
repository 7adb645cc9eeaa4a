"""Time splits shared by training and the backtest: every boundary falls on a UTC midnight.

A split inside a day would put the tickets of one day on both sides; cutting at midnight, counted
back from the end of the last ticket's day, keeps every day whole (and keeps the built-in data's
text periods, which are whole weeks counted back from its last day, on one side each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tagger.data.tickets import Tickets

DAY = 86_400.0


def end_of_day(t: float, align: bool = True) -> float:
    """The UTC midnight at or after ``t`` (seconds since 1970); ``t`` itself when not ``align``."""
    return float(np.ceil(t / DAY) * DAY) if align else float(t)


def iso(t: float) -> str:
    """``t`` as an ISO time in UTC."""
    return pd.to_datetime(t, unit="s", utc=True).isoformat()


def cutoff(ts: np.ndarray, days: float, align: bool = False, end: float | None = None) -> float:
    """Where the last ``days`` before ``end`` begin (default ``end``: the latest of ``ts``, or with
    ``align`` the midnight after it): the one rule every split of the project counts back by."""
    return (end if end is not None else end_of_day(float(np.max(ts)), align)) - days * DAY


def time_split(
    tickets: Tickets, val_days: float, align: bool = False, end: float | None = None
) -> tuple[Tickets, Tickets, dict]:
    """Training = everything before the last ``val_days``; validation = those days, counted back from
    ``end`` (default: the latest ticket, or with ``align`` the midnight after it)."""
    ts = tickets.meta["unix_timestamp"].to_numpy()
    start = cutoff(ts, val_days, align, end)
    train, val = ts < start, ts >= start
    info = {
        "val_days": val_days,
        "cutoff": iso(start),
        "train_tickets": int(train.sum()),
        "val_tickets": int(val.sum()),
    }
    return tickets.subset(train), tickets.subset(val), info


def holdout_split(tickets: Tickets, holdout_days: float, align: bool = False) -> tuple[Tickets, dict]:
    """The tickets before the final holdout (the last ``holdout_days`` whole days), which
    train.py, the ablations and every design choice may use; the holdout is left to the backtest."""
    ts = tickets.meta["unix_timestamp"].to_numpy()
    if not holdout_days:
        return tickets, {"holdout_days": 0, "holdout_start": None, "holdout_tickets": 0}
    start = cutoff(ts, holdout_days, align)
    keep = ts < start
    if not keep.any():
        raise ValueError(f"data.holdout_days={holdout_days} leaves no ticket before the holdout")
    info = {"holdout_days": holdout_days, "holdout_start": iso(start), "holdout_tickets": int((~keep).sum())}
    return tickets.subset(keep), info


def cutoff_seconds(split: dict) -> float:
    """The training cutoff of a :func:`time_split` record, in seconds since 1970."""
    return pd.Timestamp(split["cutoff"]).timestamp()


@dataclass(frozen=True)
class Split:
    """One fit's tickets, for train.py, every backtest fold, Banking77 and the learning curve alike:
    the training ``window`` split into the selection fit's ``train`` and ``val`` (its last
    ``val_days``: every choice is made there), and a ``test`` window that is only ever predicted
    (None for train.py, which scores validation). Times in seconds since 1970."""

    train: Tickets  # the window less its validation slice: what the selection fit learns from
    val: Tickets
    window: Tickets  # train and val together: what a refit learns from
    test: Tickets | None
    val_start: float  # where the selection fit's training data ends
    window_end: float  # where the refit's training data ends (a fold's test start, less any gap)
    refit: bool  # whether the scored model is refit on the whole window (config ``refit``)
    index: int = 0  # the backtest fold
    record: dict = field(default_factory=dict)  # the time_split record (cutoff, tickets on each side)

    @classmethod
    def of_window(
        cls,
        window: Tickets,
        val_days: float,
        align: bool,
        refit: bool,
        test: Tickets | None = None,
        val_end: float | None = None,
        window_end: float | None = None,
        index: int = 0,
    ) -> Split:
        """``window``'s last ``val_days`` (before ``val_end``, default the end of its last day) as
        validation; ``window_end`` defaults to the end of validation."""
        train, val, record = time_split(window, val_days, align, val_end)
        val_start = cutoff_seconds(record)
        end = window_end if window_end is not None else val_start + val_days * DAY
        return cls(train, val, window, test, val_start, end, refit, index, record)

    @property
    def seen(self) -> Tickets:
        """The tickets the scored model learnt from."""
        return self.window if self.refit else self.train

    @property
    def trained_until(self) -> float:
        """Where the scored model's training data ends."""
        return self.window_end if self.refit else self.val_start
