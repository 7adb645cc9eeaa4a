"""Where the project lives: relative paths in the configs are relative to its root."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve(path: str | os.PathLike) -> Path:
    """``path`` as given if absolute, else relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def shown(path: str | os.PathLike) -> str:
    """``path`` as results show it: relative to the project root when inside it (results name no
    path of the machine they ran on), else as given."""
    path = Path(path).resolve()
    try:
        return path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def compose_config(name: str, overrides: list[str] | None = None):
    """conf/NAME.yaml composed by Hydra with ``overrides``, the way the commands compose it (inside a
    running Hydra app its already initialised search path, which is conf/ too)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tagger.schema import register

    register()
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=list(overrides or []))
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides or []))


def command_config(name: str, argv: list[str], doc: str):
    """conf/NAME.yaml with a command line's ``key=value`` overrides, for the ``python -m`` commands:
    ``--help`` prints ``doc`` and the settings; a stray word or a misspelt key stops the command
    with one line (exit status 2)."""
    import sys

    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip() + f"\n\nSettings (conf/{name}.yaml; override with key=value):\n")
        print(OmegaConf.to_yaml(compose_config(name)))
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        print(f"expected key=value overrides of conf/{name}.yaml, got {bad}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return compose_config(name, argv)
    except HydraException as err:
        print(f"conf/{name}.yaml: {str(err).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None


def subcommand_config(name: str, argv: list[str], doc: str, commands: tuple[str, ...]):
    """``(command, config)`` of a ``python -m ... COMMAND [key=value ...]`` command line: the command
    one of ``commands``, then conf/NAME.yaml with the overrides (:func:`command_config`). Raises
    SystemExit with the exit status for ``--help`` (0), no or an unknown command (2, the usage
    printed) or a mistake in the overrides (2)."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(doc)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    return argv[0], command_config(name, argv[1:], doc)


@cache
def data_path(key: str) -> Path:
    """A path conf/data sets by default (``key``: ``cache_dir``, ``sentence_cache_dir``), resolved:
    what code falls back to when no config is handed to it."""
    return resolve(compose_config("config").data[key])
