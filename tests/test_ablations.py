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
    assert variant_overrides("no_early_stopping") == [
        "callbacks.early_stopping.patience=1000",
        "callbacks.model_checkpoint.monitor=null",
    ]


def test_a_backtest_variant_fits_with_its_own_callbacks_not_the_defaults():
    """A variant that changes early stopping (not the model) must not run the default under its name."""
    from tagger.backtest.run import _fit_config, model_configs, stack_members
    from tagger.paths import compose_config

    cfg = compose_config("backtest")
    cfg.backtest.ablations = ["early stopping on validation NLL", "no early stopping (30 epochs)"]
    configs = model_configs(cfg)
    nll, _ = _fit_config(cfg, configs["shared[early stopping on validation NLL]"], seed=1)
    assert nll.callbacks.early_stopping.monitor == "val_loss" and nll.callbacks.model_checkpoint.mode == "min"
    assert nll.seed == 1
    longest, model = _fit_config(cfg, configs["shared[no early stopping (30 epochs)]"], seed=None)
    assert (
        longest.callbacks.early_stopping.patience == 1000
        and longest.callbacks.model_checkpoint.monitor is None
    )
    assert "run_overrides" not in model
    default, _ = _fit_config(cfg, configs["shared"], seed=None)
    assert default.callbacks.early_stopping.monitor == "val_account_macro_f1"
    # a stack may name a variant the run fits (and only one it fits)
    cfg.backtest.stacks = [["shared", "shared[early stopping on validation NLL]"], ["shared", "shared[nope]"]]
    assert list(stack_members(cfg)) == ["shared + shared[early stopping on validation NLL]"]


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
