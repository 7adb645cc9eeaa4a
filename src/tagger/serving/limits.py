"""What the API accepts and how much it takes on at once: conf/serve.yaml's ``limits``, typed by
the schema (:class:`tagger.schema.Limits`, which holds no value of its own)."""

from __future__ import annotations

from omegaconf import OmegaConf

from tagger.paths import compose_config
from tagger.schema import Limits, checked

__all__ = ["Limits", "configured_limits", "limits_from"]


def limits_from(values) -> Limits:
    """:class:`Limits` from a mapping with every key (conf/serve.yaml's ``limits``), checked: an
    unknown key, a missing one or a value of the wrong type is a ValueError naming it."""
    return OmegaConf.to_object(checked(Limits, values, "limits"))


def configured_limits(**overrides) -> Limits:
    """conf/serve.yaml's limits with ``overrides`` (a test's or a benchmark's own caps)."""
    return limits_from({**OmegaConf.to_container(compose_config("serve").limits), **overrides})
