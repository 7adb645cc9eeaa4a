"""The schema of conf/: typed dataclasses with no default values (every value lives in the YAML
files only), registered with Hydra's ConfigStore so that composing a config checks each key and
its type (a misspelt override stops the command; it never trains the default silently).

conf/data/default.yaml, conf/model/shared.yaml, conf/trainer/default.yaml and conf/thresholds/
default.yaml each extend their schema (``defaults: [NAME_schema, _self_]``); code that is handed a
plain mapping instead (a test, a saved model) checks it with :func:`checked`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class BuildConfig:
    """Every knob of the built-in dataset's simulation (see the comments in conf/data/default.yaml)."""

    seed: int = MISSING
    n_accounts: int = MISSING
    n_tickets: int = MISSING
    start: str = MISSING
    days: int = MISSING
    volume_sigma: float = MISSING
    min_tickets_per_account: int = MISSING
    median_labels: float = MISSING
    zipf_low: float = MISSING
    zipf_high: float = MISSING
    max_labels: int = MISSING
    max_merge_ratio: float = MISSING
    n_single_label: int = MISSING
    n_few_label: int = MISSING
    null_share: float = MISSING
    base_null_rate: float = MISSING
    n_heavy_null_accounts: int = MISSING
    catch_all_null_boost: float = MISSING
    mistag_rate: float = MISSING
    late_join_share: float = MISSING
    new_label_share: float = MISSING
    n_renamed_labels: int = MISSING
    messy_label_share: float = MISSING
    quoted_export_share: float = MISSING
    form_share: float = MISSING
    form_in_ticket: float = MISSING
    max_sentences: int = MISSING
    period_days: int = MISSING
    opaque_label_share: float = MISSING
    n_late_intents: int = MISSING
    late_intent_start: float = MISSING
    late_intent_adoption: float = MISSING
    dedupe_encoder_form: bool = MISSING
    label_drift: float = MISSING
    agents_per_merchant: int = MISSING
    agent_mistag_sigma: float = MISSING
    confusable_share: float = MISSING


@dataclass
class DataConf:
    """conf/data: the ticket file, its caches and its time splits."""

    path: str = MISSING
    cache_dir: str = MISSING
    sentence_cache_dir: str = MISSING
    build_if_missing: bool = MISSING
    val_days: float = MISSING
    holdout_days: float = MISSING
    align_days: bool = MISSING
    build: BuildConfig = field(default_factory=BuildConfig)


@dataclass
class EncoderConf:
    pooling: str = MISSING  # attention | mean | max
    heads: int = MISSING
    key_dim: int = MISSING
    account_query: bool = MISSING
    max_sentences: int = MISSING
    sentence_dropout: float = MISSING


@dataclass
class ProjectionConf:
    hidden: int = MISSING
    out_dim: int = MISSING
    dropout: float = MISSING


@dataclass
class LabelsConf:
    label_init: str = MISSING  # name | random
    tie_label_tower: bool = MISSING


@dataclass
class ScoreConf:
    init_scale: float = MISSING
    learn_scale: bool = MISSING
    label_bias: bool = MISSING
    prototypes: int = MISSING


@dataclass
class ImbalanceConf:
    method: str = MISSING  # logit_adjust | class_balanced | none
    tau: float = MISSING


@dataclass
class OptimConf:
    lr: float = MISSING
    weight_decay: float = MISSING
    sparse_lr: float | None = MISSING
    sparse_weight_decay: float = MISSING
    batch_size: int = MISSING


@dataclass
class ColdStartConf:
    name_weight: float = MISSING


@dataclass
class ConfidenceConf:
    fit_temperature: bool = MISSING
    null_fallback: str = MISSING  # prior | abstain


@dataclass
class SharedModelConf:
    """conf/model/shared.yaml: the shared model (architecture, imbalance, optimiser, confidence)."""

    name: str = MISSING
    _target_: str = MISSING  # what builds it: tagger.model.ensemble.seed_ensemble
    members: int = MISSING
    encoder: EncoderConf = field(default_factory=EncoderConf)
    projection: ProjectionConf = field(default_factory=ProjectionConf)
    labels: LabelsConf = field(default_factory=LabelsConf)
    score: ScoreConf = field(default_factory=ScoreConf)
    imbalance: ImbalanceConf = field(default_factory=ImbalanceConf)
    optim: OptimConf = field(default_factory=OptimConf)
    cold_start: ColdStartConf = field(default_factory=ColdStartConf)
    confidence: ConfidenceConf = field(default_factory=ConfidenceConf)


@dataclass
class TrainerConf:
    """conf/trainer: the Lightning Trainer arguments the project sets (add a field to set another)."""

    accelerator: str = MISSING
    devices: Any = MISSING  # a count, a list of devices or "auto"
    strategy: str = MISSING
    max_epochs: int = MISSING
    deterministic: bool = MISSING
    log_every_n_steps: int = MISSING
    enable_progress_bar: bool = MISSING
    num_sanity_val_steps: int = MISSING


@dataclass
class ThresholdConf:
    """conf/thresholds: how per-merchant confidence thresholds are chosen (docs/thresholds.md)."""

    delta: float = MISSING
    grid: int = MISSING
    kappa: float = MISSING
    min_support: int = MISSING
    min_account: int = MISSING
    margin: float = MISSING
    step: float = MISSING


@dataclass(frozen=True)
class Limits:
    """Request caps (413 above them), the time a body may take to arrive (408), the request timeout
    (503), and admission control: at most ``max_in_flight`` requests in a worker at once, a request
    past it refused at once with 503 and ``Retry-After: retry_after_s`` (conf/serve.yaml
    ``limits``)."""

    max_sentences: int = MISSING
    max_batch: int = MISSING
    max_body_bytes: int = MISSING
    max_label_name: int = MISSING
    max_label_changes: int = MISSING
    request_timeout_s: float = MISSING
    body_timeout_s: float = MISSING
    max_in_flight: int = MISSING
    retry_after_s: int = MISSING
    top_k: int = MISSING
    precision_target: str = MISSING
    why_sentences: int = MISSING


SCHEMAS = {
    "data": ("data_schema", DataConf),
    "model": ("shared_schema", SharedModelConf),
    "trainer": ("trainer_schema", TrainerConf),
    "thresholds": ("thresholds_schema", ThresholdConf),
}


def register() -> None:
    """Store each schema in Hydra's ConfigStore (idempotent), where conf/'s files extend them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, (name, node) in SCHEMAS.items():
        store.store(group=group, name=name, node=node)


def checked(schema: type, values, where: str, partial: bool = False) -> DictConfig:
    """``values`` (a mapping) checked against ``schema``: an unknown key or a value of the wrong type
    is a ValueError naming it and ``where``; a missing one too, unless ``partial`` (a saved model
    keeps only what prediction reads)."""
    try:
        base = OmegaConf.structured(schema)
        OmegaConf.set_readonly(base, False)  # a frozen dataclass's schema still takes the values
        cfg = OmegaConf.merge(base, values)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:
        key = f"{where}.{err.full_key}" if getattr(err, "full_key", None) else where
        raise ValueError(f"{key}: {str(err).splitlines()[0]}") from None
    if missing and not partial:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    return cfg
