"""Time splits shared by training and the backtest: every boundary falls on a UTC midnight.

A split inside a day would put the tickets of one day on both sides; cutting at midnight, counted
back from the end of the last ticket's day, keeps every day whole (and keeps the built-in data's
text periods, which are whole weeks counted back from its last day, on one side each).
"""

from __future__ import annotations

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
