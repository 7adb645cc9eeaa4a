"""train.py end to end on a tiny ticket file: split by time, fit, compare, save, write metrics."""

from __future__ import annotations

import json

import numpy as np
from conftest import tiny_run, toy_parquet, toy_problem
from hydra import compose, initialize_config_dir

from tagger.data.splits import time_split
from tagger.model.artifacts import load_shared
from tagger.paths import PROJECT_ROOT
from tagger.training import format_table, run


def test_time_split_puts_the_latest_days_in_validation():
    toy = toy_problem(n_per_label=10)  # one minute apart
    train, val, info = time_split(toy, val_days=20 / 1440)  # the last 20 minutes
    assert len(val) == 21 and len(train) == len(toy) - 21
    assert train.meta["unix_timestamp"].max() < val.meta["unix_timestamp"].min()
    assert info["train_tickets"] == len(train)


def test_train_end_to_end(tmp_path):
    data = toy_parquet(tmp_path / "tickets.parquet")
    overrides = [
        *tiny_run(tmp_path, data),
        "data.val_days=0.05",
        f"output_dir={tmp_path / 'out'}",
        f"models_dir={tmp_path / 'models'}",
        "trainer.max_epochs=3",
        "compare_with=[majority,logreg]",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = run(cfg)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(written["models"]) == {"shared", "majority", "logreg"}
    shared = written["models"]["shared"]["overall"]
    assert shared["n"] == written["split"]["val_tickets"]  # every validation ticket is scored
    assert shared["n_no_embeddings"] > 0 and "ece" in shared and "parent_accuracy" in shared
    assert shared["accuracy"] > 0.8
    assert written["models"]["shared"]["fit"]["tickets_per_second"] > 0
    assert 0.05 < written["models"]["shared"]["temperature"] < 20
    model = load_shared(out["model_dir"])
    assert (tmp_path / "models").iterdir().__next__().name.startswith("shared-")
    assert len(model.table) == 6
    names = model.table.frame["label"].tolist()
    assert "Shipping::Tracking" in names
    assert np.isfinite(model.name_vectors).all()
    assert "shared" in format_table(written["models"])
