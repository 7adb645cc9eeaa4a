"""The two sides a drift report compares, both answered by the deployed model through predict.py's
scorer (the one predictor of the backtest, the export and the API).

- The reference: the deployed model's answers on the last ``reference_days`` of its own training
  window (the model's data file, read from its ``data.json``; ``reference=`` a predictions file or
  log instead).
- The current: a prediction log directory, a predictions parquet (predict.py's output), or any
  ticket file (scored here); by default the model's data file after its training window.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tagger.paths import compose_config, resolve
from tagger.serving.prediction_log import PREDICTION_SCHEMA, read_prediction_log
from tagger.serving.registry import Registry

DAY = 86_400.0


@dataclass
class Side:
    """One side of the comparison: its answers, where they came from, and (a ticket file with
    labels) the true labels aligned with the answers."""

    answers: pd.DataFrame
    source: str
    start: float | None = None  # unix seconds of the window (None: as the file has it)
    end: float | None = None
    truth: pd.Series | None = None


@dataclass
class Deployed:
    """The model a registry serves: its version, export, labels and training data."""

    version: str
    export_dir: Path
    accounts: set[str]
    labels: dict[str, set[str]]
    data_file: Path | None
    window_end: float | None  # unix seconds where its training window ends


def deployed(registry_dir: str | Path) -> Deployed:
    """The registry's promoted model (with every merchant's label changes)."""
    registry = Registry(resolve(registry_dir), create=False)
    try:
        version = registry.serving()[1]
        export_dir = registry.model_dir(version)
        view, _ = registry.label_view(version)
    finally:
        registry.close()
    accounts = set(view.state.accounts)
    labels = {a: set(view.labels_of(a).labels) for a in accounts}
    serving = json.loads((export_dir / "serving.json").read_text())
    data_json = Path(serving.get("model_dir", "")) / "data.json"
    data_file, window_end = None, None
    if data_json.exists():
        data = json.loads(data_json.read_text())
        data_file = Path(data["file"])
        split = data["split"]
        end = split.get("holdout_start") or split.get("cutoff")
        window_end = datetime.fromisoformat(end).timestamp() if end else None
    return Deployed(version, export_dir, accounts, labels, data_file, window_end)


def score(
    tickets: Path, registry_dir: str | Path, start: float | None = None, end: float | None = None
) -> Side:
    """The deployed model's answers to the tickets of ``tickets`` in ``[start, end)`` (predict.py)."""
    from tagger.batch.run import outputs, predict_file

    table = pq.read_table(tickets)
    times = table.column("unix_timestamp").to_numpy(zero_copy_only=False).astype(float)
    keep = (times >= (start if start is not None else -np.inf)) & (
        times < (end if end is not None else np.inf)
    )
    table = table.filter(pa.array(keep))
    with tempfile.TemporaryDirectory(prefix="tagger-drift-") as tmp:
        subset, out = Path(tmp) / "tickets.parquet", Path(tmp) / "answers.parquet"
        pq.write_table(table, subset)
        overrides = [
            f"data.path={subset}",
            f"out={out}",
            f"registry_dir={resolve(registry_dir)}",
            "progress=false",
        ]
        predict_file(compose_config("predict", overrides))
        answers = pd.read_parquet(outputs(out)["predictions"])
    truth = None
    if "contact_reason" in table.column_names:
        ids, reasons = table.column("ticket_id").to_pylist(), table.column("contact_reason").to_pylist()
        labels = dict(zip(ids, reasons, strict=True))
        truth = answers["ticket_id"].map(labels)
    return Side(answers, str(tickets), start, end, truth)


def read_side(path: str | Path, registry_dir: str | Path) -> Side:
    """Answers from a prediction log directory or predictions file as they are; a ticket file scored."""
    path = resolve(path)
    if path.is_dir():
        return Side(read_prediction_log(path).to_pandas(), str(path))
    names = pq.read_schema(path).names
    if set(PREDICTION_SCHEMA.names) - {"predicted_at", "request_id"} <= set(names):
        return Side(pd.read_parquet(path), str(path))
    return score(path, registry_dir)


def sides(cfg, model: Deployed) -> tuple[Side, Side]:
    """(reference, current) as conf/monitor.yaml (``cfg``) asks."""
    if cfg.reference is not None:
        reference = read_side(cfg.reference, cfg.registry_dir)
    else:
        if model.data_file is None or not model.data_file.exists() or model.window_end is None:
            raise FileNotFoundError(
                f"the training data of {model.version} is not on this machine ({model.data_file}): "
                "give reference=PREDICTIONS (a prediction log or predictions file of a normal period)"
            )
        start = model.window_end - float(cfg.reference_days) * DAY
        reference = score(model.data_file, cfg.registry_dir, start, model.window_end)
    if cfg.path is not None:
        current = read_side(cfg.path, cfg.registry_dir)
    else:
        if model.data_file is None or model.window_end is None:
            raise FileNotFoundError("no path= given and the model's own data file is not known")
        current = score(model.data_file, cfg.registry_dir, model.window_end, None)
    return reference, current
