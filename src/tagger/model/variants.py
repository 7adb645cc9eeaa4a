"""Variants of the shared model: the Hydra experiment configs in conf/experiment/ (each design
choice switched off, or one part added, in turn), by ablation name. Run on train.py's split by
``python -m tagger.ablations`` (a Hydra multirun of ``train.py +experiment=NAME``) and beside the
baselines by ``python backtest.py "backtest.ablations=[NAME, ...]"``, whose fits see the run config
as ``+experiment=NAME`` composes it (:func:`with_experiment`)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tagger.paths import PROJECT_ROOT

EXPERIMENTS = PROJECT_ROOT / "conf" / "experiment"
_META = ("ablation", "output_dir")  # what an experiment says about itself, not about the model


def _overrides(node, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        value = "null" if node is None else str(node).lower() if isinstance(node, bool) else node
        return [f"{prefix}={value}"]
    return [
        o
        for key, value in node.items()
        for o in _overrides(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    ]


def experiments() -> dict[str, str]:
    """``{ablation name: experiment config name}`` of conf/experiment/*.yaml."""
    out = {}
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        out[str(OmegaConf.load(path).ablation)] = path.stem
    return out


def _body(experiment: str) -> dict:
    """What an experiment config sets (its meta keys left out)."""
    cfg = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{experiment}.yaml"))
    return {k: v for k, v in cfg.items() if k not in _META}


def variant_overrides(experiment: str) -> list[str]:
    """What an experiment config changes, as ``key=value`` overrides (for the reports)."""
    return _overrides(_body(experiment))


def with_experiment(cfg: DictConfig, experiment: str) -> DictConfig:
    """The run config ``cfg`` as ``+experiment=NAME`` composes it: the experiment's keys (a
    ``@package _global_`` config appended to the defaults) over the run's."""
    return OmegaConf.merge(cfg, _body(experiment))


VARIANTS = experiments()  # {ablation name: experiment config name}
