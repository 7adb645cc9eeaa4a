"""The report's own check on the built-in data: the drift its builder injected, per merchant, set
against what the report flagged.

The builder records what it did in ``<data file>.build.json`` (tagger.synth): intents nobody had
before a late day, adopted by some merchants as new labels (``new_intent``, ``start_day``), labels
renamed on a day (``rename_day``), merchants that joined late (``start_day``). A merchant that
joined before the reference window began is not drift between the two windows (its reference is
whole); one that joined during it or after is. A file without that
record (any real file) has no check: the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

DAY = 86_400.0


def injected(
    data_file: Path, first: float, reference_start: float, current_end: float
) -> dict[str, list[str]] | None:
    """Per merchant, the injected drifts that can move its answers between the reference and the
    current window (``first``: the file's first ticket, unix seconds; the windows as unix seconds);
    None when the file has no builder record."""
    record = Path(f"{data_file}.build.json")
    if not record.exists():
        return None
    merchants = json.loads(record.read_text())["merchants"]
    since, until = (reference_start - first) / DAY, (current_end - first) / DAY
    causes: dict[str, list[str]] = {}
    for merchant in merchants:
        found = []
        for label in merchant["labels"]:
            day = label.get("start_day")
            if label.get("new_intent") and day is not None and since <= day < until:
                found.append(f"late intent '{label['name']}' (day {day:.0f})")
            if "rename_day" in label and label["rename_day"] < until:
                found.append(
                    f"renamed '{label['name']}' -> '{label['renamed_to']}' (day {label['rename_day']:.0f})"
                )
        if merchant["start_day"] >= since:  # after the reference began: its reference is partial or none
            found.append(f"joined late (day {merchant['start_day']:.0f})")
        causes[merchant["account_id"]] = found
    return causes


def check(table: pd.DataFrame, causes: dict[str, list[str]]) -> dict:
    """Injected drift against flags: per kind of cause, the merchants with it that were tested,
    flagged and missed; the merchants flagged without any cause."""
    flagged = dict(zip(table.account_id, table.n_flags > 0, strict=True))
    tested = dict(zip(table.account_id, table.tested, strict=True))
    kinds = {"late intent": [], "renamed": [], "joined late": []}
    for account, found in causes.items():
        for kind in kinds:
            if any(c.startswith(kind) for c in found) and account in flagged:
                kinds[kind].append(account)
    out = {
        "by_cause": {},
        "flagged_without_cause": sorted(a for a, f in flagged.items() if f and not causes.get(a)),
    }
    for kind, accounts in kinds.items():
        seen = [a for a in accounts if tested[a]]
        out["by_cause"][kind] = {
            "merchants": len(accounts),
            "tested": len(seen),
            "flagged": sum(flagged[a] for a in seen),
            "missed": sorted(a for a in seen if not flagged[a]),
            "too_few_tickets": sorted(a for a in accounts if not tested[a]),
        }
    return out
