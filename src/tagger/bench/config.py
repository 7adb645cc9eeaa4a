"""The benchmarks' settings: conf/bench/NAME.yaml composed by Hydra with ``key=value`` overrides."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from tagger.paths import compose_config


def bench_config(name: str, argv: list[str] | None, doc: str) -> DictConfig:
    """conf/bench/NAME.yaml with the command line's ``key=value`` overrides; ``--help`` prints ``doc``
    and the settings; a misspelt key or a stray word stops it with one line."""
    from hydra.errors import HydraException

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip() + "\n\nSettings (conf/bench/" + name + ".yaml; override with key=value):\n")
        print(OmegaConf.to_yaml(compose_config(f"bench/{name}")))
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"expected key=value overrides of conf/bench/{name}.yaml, got {bad}")
    try:
        return compose_config(f"bench/{name}", argv)
    except HydraException as err:
        raise SystemExit(f"conf/bench/{name}.yaml: {str(err).splitlines()[0]}") from None
