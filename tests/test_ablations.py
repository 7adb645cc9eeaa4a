"""The ablations are Hydra experiment configs (conf/experiment) run as one multirun of train.py."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import tiny_run, toy_parquet

from tagger.model.variants import VARIANTS, experiments, variant_overrides
from tagger.paths import PROJECT_ROOT


def test_every_experiment_config_is_a_variant_the_backtest_can_name():
    assert set(VARIANTS) == set(experiments()) and "default" in VARIANTS
    assert variant_overrides("mean_pooling") == ["model.encoder.pooling=mean"]
    assert variant_overrides("no_early_stopping") == ["callbacks.early_stopping.patience=1000"]


def test_the_ablations_run_as_a_multirun_and_write_the_table(tmp_path):
    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=20)
    out = tmp_path / "ablations"
    command = [
        sys.executable,
        "-m",
        "tagger.ablations",
        "only=[default,mean_pooling]",
        *tiny_run(tmp_path, data),
        "data.val_days=0.05",
        "trainer.max_epochs=2",
        f"ablations_dir={out}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "ablations.md").read_text()
    assert "| default |" in table and "| mean pooling |" in table
    job = json.loads((out / "mean_pooling" / "metrics.json").read_text())
    assert job["config"]["model"]["encoder"]["pooling"] == "mean" and job["config"]["refit"] is False
    assert (
        json.loads((out / "default" / "metrics.json").read_text())["config"]["model"]["encoder"]["pooling"]
        == "attention"
    )
