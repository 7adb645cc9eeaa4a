"""The dataset a run uses, from the Hydra ``data`` config: the built-in one (re)built where needed."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tagger.data.cache import load_tickets
from tagger.data.tickets import Tickets
from tagger.paths import resolve

BUILT_IN = "data/tickets.parquet"


def _stale_build(path: Path, build: dict) -> list[str]:
    """The build settings that differ between ``build`` and the record beside the built-in file."""
    record = Path(f"{path}.build.json")
    if not record.exists():  # no record: nothing says the file is stale, so it is kept as it is
        return []
    made = json.loads(record.read_text()).get("config", {})
    return sorted(k for k in set(build) | set(made) if build.get(k) != made.get(k))


def ensure_dataset(cfg: DictConfig) -> None:
    """Build the built-in dataset when ``cfg.path`` is it and it is absent or was built with other
    ``build`` settings (its ``.build.json`` record says which); any other file must exist."""
    path = resolve(cfg.path)
    built_in = cfg.build_if_missing and path == resolve(BUILT_IN)
    if path.exists() and not built_in:
        return
    if not built_in:
        raise FileNotFoundError(f"ticket file not found: {path} (data.path={cfg.path})")
    build = OmegaConf.to_container(cfg.build, resolve=True)
    if path.exists():
        stale = _stale_build(path, build)
        if not stale:
            return
        print(f"{path} was built with other settings ({', '.join(stale)}): rebuilding it")
    else:
        print(f"{path} is absent: building the built-in dataset (about 3 minutes the first time)")
    from tagger.embed import SentenceEmbedder
    from tagger.synth.build import build_dataset
    from tagger.synth.config import build_config

    embedder = SentenceEmbedder(resolve(cfg.sentence_cache_dir))
    build_dataset(build_config(build), path, embedder=embedder)


def load_dataset(cfg: DictConfig, progress: bool = True) -> Tickets:
    """The tickets of ``cfg.path`` (building the built-in dataset first where needed)."""
    ensure_dataset(cfg)
    return load_tickets(resolve(cfg.path), cache_dir=resolve(cfg.cache_dir), progress=progress)
