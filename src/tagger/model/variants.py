"""Variants of the shared model: the Hydra experiment configs in conf/experiment/ (each design
choice switched off, or one part added, in turn), as lists of overrides by ablation name. Run on
train.py's split by ``python -m tagger.ablations`` (a Hydra multirun over the experiments) and
beside the baselines by ``python backtest.py "backtest.ablations=[NAME, ...]"``."""

from __future__ import annotations

from omegaconf import OmegaConf

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


def variant_overrides(experiment: str) -> list[str]:
    """The overrides an experiment config applies to the model and training (its meta keys left out)."""
    cfg = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{experiment}.yaml"))
    return _overrides({k: v for k, v in cfg.items() if k not in _META})


VARIANTS = {name: variant_overrides(stem) for name, stem in experiments().items()}
