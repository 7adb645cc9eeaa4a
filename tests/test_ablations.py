"""The ablations are Hydra experiment configs (conf/experiment) run as one multirun of train.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import tiny_run, toy_parquet
from omegaconf import OmegaConf

from tagger.model.variants import experiments, variant_overrides
from tagger.paths import PROJECT_ROOT, compose_config


def _flat(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@pytest.mark.parametrize("experiment", sorted(experiments().values()))
def test_each_variant_differs_from_the_default_exactly_where_its_experiment_says(experiment):
    """Hydra's ``+experiment=NAME`` and the backtest's variant config agree, and each differs from
    the default in the keys the experiment sets to another value, and nowhere else (a variant is
    never the default under a name, nor more than it says)."""
    from tagger.model.variants import with_experiment

    def fit_keys(cfg) -> dict:
        return _flat({k: OmegaConf.to_container(cfg[k]) for k in ("model", "trainer", "callbacks")})

    default = compose_config("config")
    says = {o.split("=", 1)[0] for o in variant_overrides(experiment)}
    for cfg in (
        compose_config("config", [f"+experiment={experiment}"]),
        with_experiment(default, experiment),
    ):
        got, plain = fit_keys(cfg), fit_keys(default)
        changed = {k for k in set(got) | set(plain) if got.get(k) != plain.get(k)}
        assert changed == {k for k in says if OmegaConf.select(cfg, k) != OmegaConf.select(default, k)}
        assert changed or experiment == "default", f"+experiment={experiment} composes the default"


def test_a_backtest_variant_fits_with_its_own_callbacks_not_the_defaults():
    """A variant that changes early stopping (not the model) must not run the default under its name."""
    from tagger.backtest.run import model_configs, stack_members

    cfg = compose_config("backtest")
    cfg.backtest.ablations = ["early stopping on validation NLL", "no early stopping (30 epochs)"]
    configs = model_configs(cfg)
    nll = configs["shared[early stopping on validation NLL]"]
    assert nll.callbacks.early_stopping.monitor == "val_loss" and nll.callbacks.model_checkpoint.mode == "min"
    longest = configs["shared[no early stopping (30 epochs)]"]
    assert (
        longest.callbacks.early_stopping.patience == 1000
        and longest.callbacks.model_checkpoint.monitor is None
    )
    assert configs["shared"].callbacks.early_stopping.monitor == "val_account_macro_f1"
    assert configs["shared"].model.members == 1 and configs["mlp"].model.name == "mlp"
    assert cfg.model.name == "shared" and "members" in cfg.model  # the run config itself untouched
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
