"""The dataset a run uses, from the Hydra ``data`` config: built if it is the built-in one and absent."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tagger.data.cache import load_tickets
from tagger.data.tickets import Tickets
from tagger.paths import resolve

BUILT_IN = "data/tickets.parquet"


def ensure_dataset(cfg: DictConfig) -> None:
    """Build the built-in dataset when ``cfg.path`` is it and it does not exist yet."""
    path = resolve(cfg.path)
    if path.exists():
        return
    if not (cfg.get("build_if_missing", True) and path == resolve(BUILT_IN)):
        raise FileNotFoundError(f"ticket file not found: {path} (data.path={cfg.path})")
    from tagger.embed import SentenceEmbedder
    from tagger.synth.build import build_dataset
    from tagger.synth.config import BuildConfig

    print(f"{path} is absent: building the built-in dataset (about 3 minutes the first time)")
    build = BuildConfig.from_config(OmegaConf.to_container(cfg.build, resolve=True))
    build_dataset(build, path, embedder=SentenceEmbedder(resolve(cfg.sentence_cache_dir)))


def load_dataset(cfg: DictConfig, progress: bool = True) -> Tickets:
    """The tickets of ``cfg.path`` (building the built-in dataset first where needed)."""
    ensure_dataset(cfg)
    return load_tickets(resolve(cfg.path), cache_dir=resolve(cfg.cache_dir), progress=progress)
