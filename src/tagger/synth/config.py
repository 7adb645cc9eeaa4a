"""Settings of the built-in dataset builder. Their values live in ``conf/data/default.yaml``
(``build:``) only; the schema (:class:`tagger.schema.BuildConfig`) names and types them."""

from __future__ import annotations

from omegaconf import OmegaConf

from tagger.paths import compose_config
from tagger.schema import BuildConfig, checked

__all__ = ["BuildConfig", "build_config"]


def build_config(build: dict | None = None, **overrides) -> BuildConfig:
    """From a ``build:`` mapping (default: conf/data/default.yaml's, as Hydra composes it) with
    ``overrides``; an unknown or missing setting, or one of the wrong type, is a ValueError naming it."""
    if build is None:
        build = OmegaConf.to_container(compose_config("config").data.build, resolve=True)
    return OmegaConf.to_object(checked(BuildConfig, {**build, **overrides}, "data.build"))
