"""Settings of the built-in dataset builder. Their values live in ``conf/data/default.yaml``
(``build:``), the single source; this dataclass only names and types them."""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import OmegaConf

from tagger.paths import compose_config


@dataclass
class BuildConfig:
    """Every knob of the simulation (see the comments in conf/data/default.yaml)."""

    seed: int
    n_accounts: int
    n_tickets: int
    start: str
    days: int
    volume_sigma: float
    min_tickets_per_account: int
    median_labels: float
    zipf_low: float
    zipf_high: float
    max_labels: int
    max_merge_ratio: float
    n_single_label: int
    n_few_label: int
    null_share: float
    base_null_rate: float
    n_heavy_null_accounts: int
    catch_all_null_boost: float
    mistag_rate: float
    late_join_share: float
    new_label_share: float
    n_renamed_labels: int
    messy_label_share: float
    quoted_export_share: float
    form_share: float
    form_in_ticket: float
    max_sentences: int
    period_days: int
    opaque_label_share: float
    n_late_intents: int
    late_intent_start: float
    late_intent_adoption: float
    dedupe_encoder_form: bool
    label_drift: float
    agents_per_merchant: int
    agent_mistag_sigma: float
    confusable_share: float

    @classmethod
    def from_config(cls, build: dict | None = None, **overrides) -> BuildConfig:
        """From a ``build:`` mapping (default: the one in conf/data/default.yaml), with overrides."""
        if build is None:  # conf/data/default.yaml's build section, as Hydra composes it
            build = OmegaConf.to_container(compose_config("config").data.build, resolve=True)
        values = dict(build)
        values.update(overrides)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown build setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)
