"""The estimator a ``model`` config names: the shared model or a baseline, tuned on validation
when its config has a ``grid``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tagger.metrics import selection_score
from tagger.model.base import Estimator
from tagger.model.selection import Tuned, split_grid
from tagger.paths import compose_config, resolve


def make_estimator(model_cfg: dict, cfg: DictConfig, log_dir: Path | None = None) -> Estimator:
    """The estimator a ``model`` config names; a baseline with a ``grid`` is tuned on the validation
    slice it is fit with (:class:`~tagger.model.selection.Tuned`, by :func:`selection_score`)."""
    if model_cfg["name"] == "shared":  # its _target_ builds the seed ensemble (tagger.model.ensemble)
        from hydra.utils import instantiate

        from tagger.embed import SentenceEmbedder

        return instantiate(
            {"_target_": model_cfg["_target_"], "_convert_": "all", "_recursive_": False},
            model_config=model_cfg,
            members=int(model_cfg["members"]),
            seed=cfg.seed,
            log_dir=log_dir,
            trainer=OmegaConf.to_container(cfg.trainer, resolve=True),
            embedder=SentenceEmbedder(resolve(cfg.data.sentence_cache_dir)),
            callbacks=OmegaConf.to_container(cfg.callbacks, resolve=True),
            logger=OmegaConf.to_container(cfg.logger, resolve=True),
            score=selection_score,
        )
    return make_baseline(model_cfg, cfg.data.sentence_cache_dir)


def make_baseline(
    model_cfg: dict, sentence_cache_dir: str | None = None, tuned: bool = True, **overrides
) -> Estimator:
    """A baseline from its ``conf/model/NAME.yaml`` config (``_target_`` and its settings, through
    ``hydra.utils.instantiate``), with ``overrides``; with a ``grid`` (and ``tuned``), tuned on the
    validation slice it is fit with (:class:`~tagger.model.selection.Tuned`, by
    :func:`selection_score`)."""
    from hydra.utils import instantiate

    if "_target_" not in model_cfg:
        raise ValueError(f"model {model_cfg.get('name')!r} names no _target_ (conf/model/NAME.yaml)")
    params, grid = split_grid(model_cfg)
    params |= overrides
    if model_cfg["name"] == "names":  # the label names' embedder: the real model, its cache from conf/data
        from tagger.embed import SentenceEmbedder

        if "embedder" not in params:
            params["embedder"] = SentenceEmbedder(resolve(sentence_cache_dir)) if sentence_cache_dir else None
    spec = {"_target_": model_cfg["_target_"], "_convert_": "all"}
    if not grid or not tuned:
        return instantiate(spec, **params)
    fixed = {k: v for k, v in params.items() if k not in grid}
    return Tuned(instantiate(spec, _partial_=True, **fixed), grid, selection_score)


def search_record(estimator: Estimator) -> dict:
    """What a baseline chose on validation, out of how many fits (each grid point's score for a
    tuned one), and how an iterative fit converged."""
    search = {"search": estimator.search} if isinstance(estimator, Tuned) else {}
    return {**estimator.fit_record(), **search}


def load_model_config(name: str) -> dict:
    """The model config ``conf/model/NAME.yaml`` as Hydra composes it (a baseline compared beside the
    main model)."""
    return OmegaConf.to_container(compose_config("config", [f"model={name}"]).model, resolve=True)
