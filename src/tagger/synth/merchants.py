"""Simulated merchants: each with its own volume, its own label names over the public intents,
catch-all labels, and the drift a real helpdesk shows (late joiners, new and renamed labels)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tagger.synth.boilerplate import BRAND_SUFFIXES, BRAND_WORDS, FORM_TEMPLATES
from tagger.synth.catalogue import (
    CATCH_ALLS,
    CODE_PREFIXES,
    DETAIL_WORDS,
    PREFIXES,
    SINGLE_LABELS,
    TEAM_NAMES,
    TIER_QUEUES,
    WEAK_SYNONYMS,
    Intent,
)
from tagger.synth.config import BuildConfig

KIND_SOURCES = {"shop": ("bitext",), "fintech": ("banking77",), "marketplace": ("bitext", "banking77")}


@dataclass
class Label:
    """One label of one merchant: its name, the intents it covers and its share of tickets."""

    name: str
    intents: list[str]
    weight: float
    catch_all: bool = False
    start_day: float = 0.0  # before it, its tickets went to the merchant's main catch-all
    renamed_to: str | None = None
    rename_day: float = np.inf
    variants: list[str] = field(default_factory=list)  # messy raw spellings
    variant_share: float = 0.0
    new_intent: bool = False  # its intent does not exist before start_day: no ticket before it
    opaque: bool = False  # a name that says little about the reason (a code, a tier, a team)
    drift: float = 0.0  # its log share moves by this much from the first day to the last

    def name_at(self, day: float) -> str:
        return self.renamed_to if self.renamed_to and day >= self.rename_day else self.name


@dataclass
class Merchant:
    """A simulated account."""

    account_id: str
    brand: str
    kind: str
    volume: int
    start_day: float
    null_rate: float
    labels: list[Label]
    uncovered: list[str]  # intents of its domain with no label of their own (they land in catch-alls)
    form_sentence: str | None
    quoted_export: bool
    agent_mistag: list[float] = field(default_factory=list)  # each agent's mis-tag rate (none: mistag_rate)

    @property
    def main_catch_all(self) -> Label | None:
        catch = [label for label in self.labels if label.catch_all]
        return max(catch, key=lambda label: label.weight) if catch else None


def _volumes(cfg: BuildConfig, rng: np.random.Generator) -> np.ndarray:
    raw = rng.lognormal(mean=0.0, sigma=cfg.volume_sigma, size=cfg.n_accounts)
    volumes = np.maximum(np.round(raw / raw.sum() * cfg.n_tickets), cfg.min_tickets_per_account)
    return volumes.astype(int)


def _label_counts(cfg: BuildConfig, rng: np.random.Generator, volumes: np.ndarray) -> np.ndarray:
    counts = np.clip(
        np.round(rng.lognormal(np.log(cfg.median_labels), 0.7, cfg.n_accounts)), 6, cfg.max_labels
    ).astype(int)
    # bigger merchants tend to run bigger taxonomies
    order = np.argsort(np.log(volumes) + rng.normal(0, 0.8, cfg.n_accounts))
    counts = np.sort(counts)[np.argsort(order)]
    counts[order[-1]] = cfg.max_labels
    small = rng.choice(order[:-1], cfg.n_single_label + cfg.n_few_label, replace=False)
    counts[small[: cfg.n_single_label]] = 1
    counts[small[cfg.n_single_label :]] = rng.integers(2, 6, cfg.n_few_label)
    return counts


def _render(intent: Intent, style: str, parent_choice: dict[str, int], prefix: str, leaf: str) -> str:
    parent = intent.parents[min(parent_choice[intent.group], len(intent.parents) - 1)]
    if style == "flat":
        return leaf
    if style == "deep":
        return f"{prefix}::{parent}::{leaf}"
    return f"{parent}::{leaf}"


def _unique(name: str, taken: set[str], rng: np.random.Generator) -> str:
    base, candidate = name, name
    while candidate.casefold() in taken:
        candidate = f"{base}::{rng.choice(DETAIL_WORDS)}"
        base = candidate if candidate.casefold() in taken else base
    taken.add(candidate.casefold())
    return candidate


def _taxonomy(
    n_labels: int, pool: list[Intent], rng: np.random.Generator, cfg: BuildConfig
) -> tuple[list[Label], list[str]]:
    """A merchant's labels over its intent pool: some intents merged, the rest left uncovered."""
    style = rng.choice(["flat", "two", "deep"], p=[0.25, 0.6, 0.15])
    prefix = str(rng.choice(PREFIXES))
    parent_choice = {i.group: int(rng.integers(0, 3)) for i in pool}
    taken: set[str] = set()

    if n_labels == 1:
        name = str(rng.choice(SINGLE_LABELS))
        return [Label(name, [i.name for i in pool], 1.0, catch_all=True)], []

    n_catch = 1 if n_labels <= 5 else int(rng.integers(1, 4))
    catch_names = ["Other", *rng.permutation([c for c in CATCH_ALLS if c != "Other"])]
    if rng.random() < 0.3:
        catch_names = list(rng.permutation(CATCH_ALLS))
    n_intent_labels = n_labels - n_catch

    if n_labels <= 5:
        labels = _group_labels(pool, n_intent_labels, parent_choice, taken, rng)
    else:
        labels = []
        for members in _merged_intents(pool, n_intent_labels, rng, cfg):
            name = _merged_name(members, style, prefix, parent_choice, rng)
            labels.append(Label(_unique(name, taken, rng), [m.name for m in members], 0.0))
        _add_overlapping(labels, n_intent_labels, taken, rng)

    by_name = {i.name: i for i in pool}
    for label in labels:
        if rng.random() < cfg.opaque_label_share:
            taken.discard(label.name.casefold())
            label.name = _unique(_opaque_name(by_name[label.intents[0]], rng), taken, rng)
            label.opaque = True

    labels += _weigh(labels, catch_names[:n_catch], n_catch, taken, rng, cfg)
    covered_names = {n for label in labels for n in label.intents}
    uncovered = [i.name for i in pool if i.name not in covered_names]
    return labels, uncovered


def _group_labels(
    pool: list[Intent],
    n_intent_labels: int,
    parent_choice: dict[str, int],
    taken: set[str],
    rng: np.random.Generator,
) -> list[Label]:
    """A tiny taxonomy: one label per parent group, named after the group."""
    groups: dict[str, list[Intent]] = {}
    for intent in pool:
        groups.setdefault(intent.group, []).append(intent)
    chosen_groups = rng.choice(list(groups), size=min(n_intent_labels, len(groups)), replace=False)
    labels = []
    for g in chosen_groups:
        members = groups[g]
        name = _unique(members[0].parents[parent_choice[g] % len(members[0].parents)], taken, rng)
        labels.append(Label(name, [m.name for m in members], 0.0))
    return labels


def _merged_intents(
    pool: list[Intent], n_intent_labels: int, rng: np.random.Generator, cfg: BuildConfig
) -> list[list[Intent]]:
    """The intents each label covers: a random part of the pool (up to ``max_merge_ratio`` intents
    per label on average) merged into ``n_intent_labels`` groups, preferring the same parent group."""
    n_cover = min(len(pool), round(n_intent_labels * rng.uniform(1.0, cfg.max_merge_ratio)))
    covered = [pool[i] for i in rng.choice(len(pool), n_cover, replace=False)]
    groups_of = [[i] for i in covered]
    while len(groups_of) > n_intent_labels:
        a = int(rng.integers(len(groups_of)))
        same = [b for b in range(len(groups_of)) if b != a and groups_of[b][0].group == groups_of[a][0].group]
        b = int(rng.choice(same)) if same else int(rng.choice([b for b in range(len(groups_of)) if b != a]))
        groups_of[a] = groups_of[a] + groups_of[b]
        groups_of.pop(b)
    return groups_of


def _merged_name(
    members: list[Intent], style: str, prefix: str, parent_choice: dict[str, int], rng: np.random.Generator
) -> str:
    """A name for a label over ``members`` in the taxonomy's ``style`` (before making it unique):
    their parent when they share a group, else the first intent's; now and then a detail deeper."""
    first = members[0]
    if len(members) > 1 and all(m.group == first.group for m in members):
        parent = first.parents[min(parent_choice[first.group], len(first.parents) - 1)]
        name = parent if style == "flat" else f"{parent}::{rng.choice(['General', 'Other', 'Questions'])}"
    else:
        name = _render(first, style, parent_choice, prefix, str(rng.choice(first.leaves)))
    if style == "deep" and rng.random() < 0.3:
        name = f"{name}::{rng.choice(DETAIL_WORDS)}"
    return name


def _add_overlapping(
    labels: list[Label], n_intent_labels: int, taken: set[str], rng: np.random.Generator
) -> None:
    """Up to ``n_intent_labels`` labels: a taxonomy finer than the intents gets overlapping labels,
    each a detail under an existing one (which may itself be such a label) with the same intents."""
    while len(labels) < n_intent_labels:
        base = labels[int(rng.integers(len(labels)))]
        name = _unique(f"{base.name}::{rng.choice(DETAIL_WORDS)}", taken, rng)
        labels.append(Label(name, list(base.intents), 0.0))


def _weigh(
    labels: list[Label],
    catch_names: list[str],
    n_catch: int,
    taken: set[str],
    rng: np.random.Generator,
    cfg: BuildConfig,
) -> list[Label]:
    """Long-tailed shares for ``labels`` (Zipf over a random order), and the catch-all labels that
    take the rest (one main one, the others smaller): those are returned."""
    ranks = rng.permutation(len(labels)) + 1
    weights = 1.0 / ranks ** rng.uniform(cfg.zipf_low, cfg.zipf_high)
    weights = weights / weights.sum()
    catch_share = rng.uniform(0.08, 0.25)
    for label, w in zip(labels, weights, strict=True):
        label.weight = float(w) * (1 - catch_share)
    catch_weights = rng.dirichlet(np.r_[4.0, np.ones(n_catch - 1)]) * catch_share
    return [
        Label(_unique(str(name), taken, rng), [], float(w), catch_all=True)
        for name, w in zip(catch_names, catch_weights, strict=False)
    ]


def _opaque_name(intent: Intent, rng: np.random.Generator) -> str:
    """A name a team gave its queue: a code, a tier, a team, "Misc" or a synonym that is no paraphrase."""
    kind = rng.choice(["code", "tier", "team", "misc", "weak"], p=[0.3, 0.2, 0.15, 0.1, 0.25])
    weak = WEAK_SYNONYMS.get(intent.parents[0])
    if kind == "weak" and weak:
        return f"{rng.choice(weak)}::{rng.choice(['Cases', 'Queue', 'General', 'Inbox'])}"
    if kind == "tier":
        return f"Tier {rng.integers(2, 4)}::{rng.choice(TIER_QUEUES)}"
    if kind == "team":
        return f"Team {rng.choice(TEAM_NAMES)}"
    if kind == "misc":
        return f"Misc::{rng.integers(1, 10)}"
    return f"{rng.choice(CODE_PREFIXES)}-{rng.integers(100, 1000)}"


def _messy_variants(label: Label, rng: np.random.Generator) -> list[str]:
    name = label.name
    kinds = ["quoted", "case", "spaces" if "::" in name else "trailing"]
    kind = rng.choice(kinds)
    if kind == "quoted":
        return [f'"{name}"']
    if kind == "case":
        return [name.lower() if rng.random() < 0.7 else name.upper()]
    if kind == "spaces":
        return [name.replace("::", rng.choice([":: ", " :: ", " ::"]), 1)]
    return [f"{name} "]


def late_intents(cfg: BuildConfig, rng: np.random.Generator, catalogue: list[Intent]) -> dict[str, float]:
    """``{intent: first day}`` of the intents that appear late, new to every merchant."""
    chosen = rng.choice(len(catalogue), cfg.n_late_intents, replace=False)
    first = cfg.late_intent_start * cfg.days
    last = 0.92 * cfg.days  # late enough to be new in every test window, early enough to be used in it
    return {catalogue[i].name: round(float(rng.uniform(first, last)), 1) for i in sorted(chosen)}


def make_merchants(
    cfg: BuildConfig, rng: np.random.Generator, catalogue: list[Intent], late: dict[str, float]
) -> list[Merchant]:
    """The simulated merchants of one build, deterministic for ``cfg.seed``; nobody has an intent
    of ``late`` before its first day, when some merchants add a label for it."""
    volumes = _volumes(cfg, rng)
    label_counts = _label_counts(cfg, rng, volumes)
    account_ids = [f"{x:08x}" for x in rng.choice(2**31, cfg.n_accounts, replace=False)]
    null_rates = np.full(cfg.n_accounts, cfg.base_null_rate)
    heavy = rng.choice(cfg.n_accounts, cfg.n_heavy_null_accounts, replace=False)
    null_rates[heavy] = rng.uniform(0.25, 0.4, len(heavy))
    joins_late = rng.random(cfg.n_accounts) < cfg.late_join_share
    merchants = []
    renamed_left = cfg.n_renamed_labels
    for m in range(cfg.n_accounts):
        n_labels = int(label_counts[m])
        if n_labels > 80:
            kind = "marketplace"
        elif n_labels > 30:
            kind = str(rng.choice(["fintech", "marketplace"]))
        else:
            kind = str(rng.choice(["shop", "fintech", "marketplace"], p=[0.5, 0.3, 0.2]))
        pool = [i for i in catalogue if i.source in KIND_SOURCES[kind] and i.name not in late]
        labels, uncovered = _taxonomy(n_labels, pool, rng, cfg)
        start_day = float(rng.uniform(0.35, 0.8) * cfg.days) if joins_late[m] and volumes[m] > 60 else 0.0
        intent_labels = [label for label in labels if not label.catch_all]
        if len(labels) >= 6 and rng.random() < cfg.new_label_share:
            for label in rng.choice(intent_labels, int(rng.integers(1, 4)), replace=False):
                label.start_day = float(rng.uniform(max(start_day, 0.25 * cfg.days), 0.8 * cfg.days))
        if renamed_left and len(labels) >= 6 and volumes[m] > 300:
            label = max(intent_labels, key=lambda lab: lab.weight)
            label.renamed_to = _renamed(label, catalogue, {x.name.casefold() for x in labels}, rng)
            label.rename_day = float(rng.uniform(0.4, 0.75) * cfg.days)
            renamed_left -= 1
        if len(labels) >= 6:
            labels += _late_labels(catalogue, late, kind, labels, start_day, rng, cfg)
        for label in labels:
            if rng.random() < cfg.messy_label_share:
                label.variants = _messy_variants(label, rng)
                label.variant_share = float(rng.uniform(0.1, 0.5))
        brand = f"{rng.choice(BRAND_WORDS)} {rng.choice(BRAND_SUFFIXES)}"
        form = str(rng.choice(FORM_TEMPLATES)).format(brand=brand) if rng.random() < cfg.form_share else None
        merchants.append(
            Merchant(
                account_id=account_ids[m],
                brand=brand,
                kind=kind,
                volume=int(volumes[m]),
                start_day=start_day,
                null_rate=float(null_rates[m]),
                labels=labels,
                uncovered=uncovered,
                form_sentence=form,
                quoted_export=bool(rng.random() < cfg.quoted_export_share),
            )
        )
    return merchants


def _late_labels(
    catalogue: list[Intent],
    late: dict[str, float],
    kind: str,
    labels: list[Label],
    start_day: float,
    rng: np.random.Generator,
    cfg: BuildConfig,
) -> list[Label]:
    """The labels a merchant adds for late intents of its domain, each a little after the intent appears."""
    taken = {label.name.casefold() for label in labels}
    weights = sorted(label.weight for label in labels if not label.catch_all)
    out = []
    for intent in catalogue:
        if intent.name not in late or intent.source not in KIND_SOURCES[kind]:
            continue
        if rng.random() >= cfg.late_intent_adoption:
            continue
        name = _unique(f"{rng.choice(intent.parents)}::{rng.choice(intent.leaves)}", taken, rng)
        day = max(late[intent.name] + float(rng.uniform(0, 7)), start_day)
        weight = float(weights[9 * len(weights) // 10]) if weights else 0.05  # a reason that takes off
        out.append(Label(name, [intent.name], weight, start_day=min(day, cfg.days - 1.0), new_intent=True))
    return out


def _renamed(label: Label, catalogue: list[Intent], taken: set[str], rng: np.random.Generator) -> str:
    """A new name for a label: another of the catalogue's names for its first intent."""
    intent = next(i for i in catalogue if i.name == label.intents[0])
    for _ in range(20):
        name = f"{rng.choice(intent.parents)}::{rng.choice(intent.leaves)}"
        if name.casefold() not in taken:
            return name
    return f"{label.name}::Renamed"
