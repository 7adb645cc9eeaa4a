"""The backtest's data files: metrics.json, folds.csv, per_merchant.csv, outcomes.parquet and
learning_curve.csv (report.md and the plots: :mod:`tagger.backtest.report`, :mod:`tagger.backtest.plots`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_outputs(
    output_dir: Path,
    result: dict,
    fold_rows: list[dict],
    per_merchant: pd.DataFrame,
    outcomes: pd.DataFrame,
    curve: pd.DataFrame,
) -> None:
    """metrics.json (``result``), folds.csv, per_merchant.csv, outcomes.parquet (:func:`every_outcome`)
    and, when there is one, learning_curve.csv."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    pd.DataFrame(fold_rows).astype({"seed": "Int64"}).to_csv(output_dir / "folds.csv", index=False)
    per_merchant.to_csv(output_dir / "per_merchant.csv", index=False)
    outcomes.to_parquet(output_dir / "outcomes.parquet", index=False)
    if len(curve):
        curve.to_csv(output_dir / "learning_curve.csv", index=False)


def every_outcome(
    runs: dict[str, dict],
    before: dict[str, pd.DataFrame],
    named: dict[str, pd.DataFrame],
    first_seed: int,
    seeded: list[str],
) -> pd.DataFrame:
    """outcomes.parquet: every test ticket's outcome of every run (each seed's), of each model's
    selection fit (``model`` "NAME (no refit)") and of the declared-taxonomy runs."""
    named_part = [frame.assign(model=f"{name} (declared taxonomy)") for name, frame in named.items()]
    every_run = [
        f.assign(model=n, seed=pd.Series(s, index=f.index, dtype="Int64"))  # a baseline's seed is null
        for n, r in runs.items()
        for s, f in r.items()
    ]
    unrefit = [
        f.assign(
            model=f"{n} (no refit)",
            seed=pd.Series(first_seed if n in seeded else None, index=f.index, dtype="Int64"),
        )
        for n, f in before.items()
    ]
    return pd.concat([*every_run, *unrefit, *named_part])


def _json_default(value):
    """numpy scalars as Python numbers; anything else JSON does not know as its text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
