"""The benchmarks' settings: conf/bench/NAME.yaml composed by Hydra with ``key=value`` overrides."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from tagger.paths import command_config


def bench_config(name: str, argv: list[str] | None, doc: str) -> DictConfig:
    """conf/bench/NAME.yaml with the command line's ``key=value`` overrides; ``--help`` prints ``doc``
    and the settings; a misspelt key or a stray word stops it with one line."""
    return command_config(f"bench/{name}", sys.argv[1:] if argv is None else argv, doc)


def write_figures(out_dir: str, name: str, figures: dict, markdown: str) -> None:
    """``out_dir/NAME.json`` (the figures) and ``out_dir/NAME.md`` (the report), and the report printed."""
    import json

    from tagger.paths import resolve

    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
