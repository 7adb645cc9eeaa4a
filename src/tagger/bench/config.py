"""The benchmarks' settings: conf/bench/NAME.yaml composed by Hydra with ``key=value`` overrides."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from tagger.paths import command_config


def bench_config(name: str, argv: list[str] | None, doc: str) -> DictConfig:
    """conf/bench/NAME.yaml with the command line's ``key=value`` overrides; ``--help`` prints ``doc``
    and the settings; a misspelt key or a stray word stops it with one line."""
    return command_config(f"bench/{name}", sys.argv[1:] if argv is None else argv, doc)
