"""Build the built-in dataset: ``data/tickets.parquet`` in exactly the real ticket schema.

Real customer-support utterances (Bitext, Banking77; see data/sources) become emails of
simulated merchants (:mod:`tagger.synth.merchants`), with recurring boilerplate sentences,
null embeddings, agent mis-tags and drift; every sentence is embedded by the real
all-MiniLM-L6-v2. The same seed gives the same tickets, labels and sentences; the vectors agree
to about 1e-7 between machines or caches (the encoder's output depends slightly on batch padding).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tagger.embed import SentenceEmbedder, encoder_tokens
from tagger.paths import PROJECT_ROOT
from tagger.synth import boilerplate as bp
from tagger.synth.catalogue import Intent, intents
from tagger.synth.config import BuildConfig
from tagger.synth.merchants import Label, Merchant, late_intents, make_merchants

SOURCES_DIR = PROJECT_ROOT / "data" / "sources"
DAY = 86_400.0


def load_corpus(
    sources_dir: str | os.PathLike = SOURCES_DIR, encoder_form: bool = False
) -> dict[str, list[str]]:
    """Utterances of every intent of the public corpora, each text under one intent only, in file order.

    ``encoder_form``: texts the encoder reads as the same tokens (case or punctuation twins, which
    get one vector) count as one text, kept once: otherwise a twin written in a test period would
    repeat, to every model, a sentence of a training period."""
    sources_dir = Path(sources_dir)
    frames = [
        pd.read_csv(sources_dir / "bitext" / "bitext.csv").rename(columns={"intent": "label"}),
        pd.read_csv(sources_dir / "banking77" / "train.csv"),
        pd.read_csv(sources_dir / "banking77" / "test.csv"),
    ]
    corpus: dict[str, list[str]] = {}
    for frame in frames:
        for text, label in zip(frame["text"], frame["label"], strict=True):
            corpus.setdefault(str(label), []).append(" ".join(str(text).split()))
    # a text filed under two intents would be written in two intents' periods: keep its first intent
    every = [t for texts in corpus.values() for t in texts]
    key = dict(zip(every, encoder_tokens(every) if encoder_form else every, strict=True))
    seen: set = set()
    out = {}
    for intent, texts in corpus.items():
        out[intent] = []
        for text in texts:
            if key[text] not in seen:
                seen.add(key[text])
                out[intent].append(text)
    return out


def sentence_hash(text: str) -> str:
    """The hashed sentence id: the same sentence has the same id in every ticket."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return str(int.from_bytes(digest, "big", signed=True))


class _Writer:
    """Writes intent sentences so that no sentence crosses a period boundary, and merchants share
    as few as the corpus allows.

    Each intent's utterances are shuffled once and cut into one slice per period of
    ``period_days`` (counted back from the last day, slice sizes following the ticket volume); a
    ticket only ever draws from its own period's slice, so no sentence of one period appears in any
    other, and a training window and a test window split at a period boundary share none.
    :meth:`utterance` hands out a placeholder; :meth:`resolve` then shares each slice out among
    the merchants that asked for it (every merchant its own sentences, as many as the slice allows
    in proportion to its demand), and a merchant repeats its own sentences before any merchant
    shares one: the corpora hold about a third as many sentences as the tickets need.
    """

    def __init__(self, corpus: dict[str, list[str]], rng: np.random.Generator, cfg: BuildConfig):
        self.rng = rng
        self.days, self.period_days = cfg.days, cfg.period_days
        n_periods = int(np.ceil(cfg.days / cfg.period_days))
        # period p covers days [days - (p + 1) * period_days, days - p * period_days)
        ends = cfg.days - np.arange(n_periods) * cfg.period_days
        lengths = np.minimum(cfg.period_days, ends)
        volume = lengths * (1 + 0.3 * (ends - lengths / 2) / cfg.days)
        share = volume / volume.sum()
        self.slices: dict[str, list[list[str]]] = {}
        for intent, texts in corpus.items():
            order = [texts[i] for i in rng.permutation(len(texts))]
            if len(order) < n_periods:
                raise ValueError(f"intent {intent!r}: {len(order)} utterances for {n_periods} periods")
            sizes = np.maximum(1, np.floor(share * len(order)).astype(int))
            sizes[int(np.argmax(sizes))] += len(order) - sizes.sum()
            cuts = np.r_[0, np.cumsum(sizes)]
            self.slices[intent] = [order[cuts[p] : cuts[p + 1]] for p in range(n_periods)]
        self.requests: list[tuple[str, int, str, int]] = []  # (intent, period, account, ticket) of each
        self.ticket = 0  # the ticket being written

    def period(self, day: float) -> int:
        """The period of ``day`` (0: the last ``period_days`` days)."""
        return max(int(np.ceil((self.days - day) / self.period_days)) - 1, 0)

    def utterance(self, account: str, intent: str, day: float) -> str:
        """A placeholder for one sentence of ``intent`` written by ``account`` on ``day``."""
        self.requests.append((intent, self.period(day), account, self.ticket))
        return f"\x00{len(self.requests) - 1}"

    def resolve(self) -> dict[str, str]:
        """``{placeholder: sentence}`` for every placeholder handed out."""
        asked: dict[tuple[str, int], dict[str, list[int]]] = {}
        for i, (intent, period, account, _) in enumerate(self.requests):
            asked.setdefault((intent, period), {}).setdefault(account, []).append(i)
        out: dict[str, str] = {}
        for (intent, period), by_account in asked.items():
            pool = self.slices[intent][period]
            accounts = list(by_account)
            demand = np.array([len(by_account[a]) for a in accounts])
            quota = _quota(demand, len(pool))
            cursor = 0
            for account, n_own in zip(accounts, quota, strict=True):
                tickets: dict[int, list[int]] = {}
                for slot in by_account[account]:
                    tickets.setdefault(self.requests[slot][3], []).append(slot)
                # enough for the longest ticket: an email does not repeat a sentence
                n_own = min(max(n_own, max(len(t) for t in tickets.values())), len(pool))
                own = [pool[(cursor + j) % len(pool)] for j in range(n_own)]
                cursor += n_own
                # one ticket's slots take consecutive own sentences: distinct while they last
                for k, slots in enumerate(tickets.values()):
                    first = k if k < len(own) else int(self.rng.integers(len(own)))
                    for j, slot in enumerate(slots):
                        out[f"\x00{slot}"] = own[(first + j) % len(own)]
        return out


def _quota(demand: np.ndarray, pool: int) -> np.ndarray:
    """Distinct sentences per merchant: its whole demand when the pool allows, else at least one
    each and the rest in proportion to demand (merchants beyond the pool share)."""
    if demand.sum() <= pool:
        return demand
    quota = np.ones_like(demand)
    spare = pool - len(demand)
    if spare > 0:
        extra = np.floor((demand - 1) / max((demand - 1).sum(), 1) * spare).astype(int)
        quota += np.minimum(extra, demand - 1)
    return quota


def _n_extra(rng: np.random.Generator, cap: int) -> int:
    """Extra sentences beyond the first: median 1 sentence, p75 2, p99 about 16, rare threads."""
    u = rng.random()
    if u < 0.55:
        return 0
    if u < 0.80:
        return 1
    if u < 0.90:
        return 2
    if u < 0.97:
        return int(rng.integers(3, 7))
    if u < 0.995:
        return int(rng.integers(7, 21))
    return int(min(rng.lognormal(np.log(30), 0.7), cap - 1))


def _email(
    merchant: Merchant,
    intent: str | None,
    day: float,
    writer: _Writer,
    rng: np.random.Generator,
    cfg: BuildConfig,
    all_intents: list[str],
) -> list[str]:
    """One email's sentences on ``day``; ``intent`` None gives a boilerplate-only message;
    ``all_intents``: the intents that exist on that day."""
    body = [writer.utterance(merchant.account_id, intent, day)] if intent else []
    n_extra = _n_extra(rng, cfg.max_sentences) if intent else int(rng.integers(1, 4))
    head, tail = [], []
    thread = n_extra > 6  # a long email quotes earlier messages of the thread
    existing = set(all_intents)
    own = [i for label in merchant.labels for i in label.intents if i in existing] or all_intents
    for _ in range(n_extra):
        r = rng.random()
        if r < (0.3 if thread else 0.8) or not intent:
            kind = rng.choice(
                ["greeting", "thanks", "sign_off", "device", "footer", "form"],
                p=[0.25, 0.25, 0.2, 0.1, 0.1, 0.1],
            )
            if kind == "form" and merchant.form_sentence and rng.random() < cfg.form_in_ticket:
                tail.append(merchant.form_sentence)
            elif kind == "greeting":
                head.append(str(rng.choice(bp.GREETINGS)))
            else:
                pool = {
                    "thanks": bp.THANKS,
                    "sign_off": bp.SIGN_OFFS,
                    "device": bp.DEVICES,
                    "footer": bp.FOOTERS,
                    "form": bp.THANKS,
                }[kind]
                tail.append(str(rng.choice(pool)))
        elif r < (0.7 if thread else 0.92):
            chosen = str(rng.choice(own)) if thread else intent
            body.append(writer.utterance(merchant.account_id, chosen, day))
        else:
            body.append(writer.utterance(merchant.account_id, str(rng.choice(all_intents)), day))
    return list(dict.fromkeys(head[:1] + body + tail))


def _days(merchant: Merchant, n: int, rng: np.random.Generator, cfg: BuildConfig) -> np.ndarray:
    """Ticket times in days since the start: weekdays busier, growth, business hours."""
    first = int(np.floor(merchant.start_day))
    days = np.arange(first, cfg.days)
    weekday = (days + pd.Timestamp(cfg.start).dayofweek) % 7
    weights = np.where(weekday >= 5, 0.55, 1.0) * (1 + 0.3 * days / cfg.days)
    day = rng.choice(days, n, p=weights / weights.sum())
    hours = np.where(rng.random(n) < 0.8, np.clip(rng.normal(14, 3.5, n), 0, 23.99), rng.uniform(0, 24, n))
    return np.maximum(day + hours / 24, merchant.start_day)


def _ticket_rows(
    merchants: list[Merchant],
    corpus: dict[str, list[str]],
    late: dict[str, float],
    rng: np.random.Generator,
    cfg: BuildConfig,
    groups: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, _Writer]:
    """One row per ticket; ``groups``: each intent's parent group (what makes two labels confusable)."""
    writer = _Writer(corpus, rng, cfg)
    simulation = _Simulation(writer, late, rng, cfg, groups or {}, sorted(corpus))
    for merchant in tqdm(merchants, desc="simulate merchants", unit="merchant"):
        simulation.add_merchant(merchant)
    frame = pd.DataFrame(simulation.rows)
    p = frame["null_p"].to_numpy()
    p = np.clip(p * cfg.null_share / p.mean(), 0, 0.75)
    frame["null"] = rng.random(len(frame)) < p
    longest, quoted = simulation.longest_thread(frame)
    frame.at[longest, "sentences"] = frame.at[longest, "sentences"] + quoted
    written = writer.resolve()
    frame["sentences"] = [list(dict.fromkeys(written.get(s, s) for s in ss)) for ss in frame["sentences"]]
    frame.at[longest, "sentences"] = frame.at[longest, "sentences"][: cfg.max_sentences]
    return frame, writer


@dataclass
class _Simulation:
    """The tickets of one build, merchant after merchant, every draw from the one ``rng``: the order
    of the draws is part of the dataset (another order gives other tickets from the same seed).
    ``rows``: one dict per ticket so far; ``every_intent``: the corpus's intents, sorted."""

    writer: _Writer
    late: dict[str, float]
    rng: np.random.Generator
    cfg: BuildConfig
    groups: dict[str, str]
    every_intent: list[str]
    rows: list[dict] = field(default_factory=list)

    def existing(self, intents: Iterable[str], day: float) -> list[str]:
        """Those of ``intents`` that exist on ``day`` (a late intent only from its first day)."""
        return [i for i in intents if self.late.get(i, 0.0) <= day]

    def add_merchant(self, merchant: Merchant) -> None:
        """Draw the merchant's drift, agents, ticket days and then each ticket, in that order."""
        labels = merchant.labels
        weights = np.array([label.weight for label in labels])
        catch = merchant.main_catch_all
        _draw_drift_and_agents(merchant, self.rng, self.cfg)
        drift = np.array([label.drift for label in labels])
        for day in np.sort(_days(merchant, merchant.volume, self.rng, self.cfg)):
            # a label of an intent that does not exist yet has no tickets at all
            w = np.where([lab.new_intent and lab.start_day > day for lab in labels], 0.0, weights)
            if self.cfg.label_drift:  # each label's share moves along its own trend over the span
                w = w * np.exp(drift * (day / self.cfg.days - 0.5))
            drawn: Label = labels[self.rng.choice(len(labels), p=w / w.sum())]
            self.writer.ticket = len(self.rows)
            self.rows.append(self._ticket(merchant, drawn, catch, day))

    def _ticket(self, merchant: Merchant, drawn: Label, catch: Label | None, day: float) -> dict:
        """The row of one ticket of ``drawn``'s reason on ``day``, as its agent tagged it."""
        rng, cfg = self.rng, self.cfg
        all_intents = self.existing(self.every_intent, day)
        tagged = catch if (drawn.start_day > day and catch is not None) else drawn
        intent = self._intent(merchant, drawn, day, all_intents)
        tagged, mistag, agent = self._agent_tag(merchant, tagged, day)
        raw = tagged.name_at(day)
        if tagged.variants and rng.random() < tagged.variant_share:
            raw = str(rng.choice(tagged.variants))
        if merchant.quoted_export:
            raw = f'"{raw}"'
        return {
            "account_id": merchant.account_id,
            "day": float(day),
            "contact_reason": raw,
            "intent": intent or "",
            "catch_all": tagged.catch_all,
            "mistag": mistag,
            "agent": agent,
            "null_p": merchant.null_rate * (cfg.catch_all_null_boost if tagged.catch_all else 1.0),
            "sentences": _email(merchant, intent, day, self.writer, rng, cfg, all_intents),
        }

    def _intent(self, merchant: Merchant, drawn: Label, day: float, all_intents: list[str]) -> str | None:
        """What the ticket is about: one of ``drawn``'s intents; under a catch-all without intents an
        uncovered intent, one of the merchant's own, or None (a boilerplate-only message)."""
        rng = self.rng
        if not (drawn.catch_all and not drawn.intents):
            return str(rng.choice(drawn.intents))
        r = rng.random()
        if r < 0.55:
            uncovered = self.existing(merchant.uncovered, day)
            return str(rng.choice(uncovered or all_intents))
        if r < 0.75:
            own = self.existing((i for lab in merchant.labels for i in lab.intents), day)
            return str(rng.choice(own or all_intents))
        return None

    def _agent_tag(self, merchant: Merchant, tagged: Label, day: float) -> tuple[Label, bool, int]:
        """``(the label the agent picked, whether it is a mis-tag, the agent: -1 without agents)``."""
        labels, rng = merchant.labels, self.rng
        # an agent can only pick a label that exists that day
        others = [i for i, lab in enumerate(labels) if lab is not tagged and lab.start_day <= day]
        agent = int(rng.integers(len(merchant.agent_mistag))) if merchant.agent_mistag else -1
        rate = merchant.agent_mistag[agent] if merchant.agent_mistag else self.cfg.mistag_rate
        mistag = bool(others) and rng.random() < rate
        if mistag:
            tagged = labels[_mistagged_as(tagged, others, labels, self.groups, rng, self.cfg)]
        return tagged, mistag, agent

    def longest_thread(self, frame: pd.DataFrame) -> tuple[int, list[str]]:
        """One very long thread, as the longest real email (225 sentences): the row of a ticket with
        embeddings and an intent, and the placeholders of the sentences it quotes."""
        rng = self.rng
        candidates = np.flatnonzero(~frame["null"].to_numpy() & (frame["intent"] != "").to_numpy())
        longest = int(rng.choice(candidates))
        day = frame.at[longest, "day"]
        existing = self.existing(self.every_intent, day)
        self.writer.ticket = longest
        quoted = [  # quotes of many correspondents, not the merchant's own few sentences
            self.writer.utterance(f"{frame.at[longest, 'account_id']}#{k}", str(rng.choice(existing)), day)
            for k in range(3 * self.cfg.max_sentences)
        ]
        return longest, quoted


def _draw_drift_and_agents(merchant: Merchant, rng: np.random.Generator, cfg: BuildConfig) -> None:
    """Each label's frequency trend (``label_drift``: the sd of its log-share change over the span)
    and the merchant's agents' mis-tag rates (``agents_per_merchant``: up to that many agents, rates
    lognormal around ``mistag_rate`` with ``agent_mistag_sigma``). Nothing is drawn when both are
    off, so the data of a config without them is unchanged."""
    if cfg.label_drift:
        drifts = rng.normal(0.0, cfg.label_drift, len(merchant.labels))
        for label, drift in zip(merchant.labels, drifts, strict=True):
            label.drift = float(drift)
    if cfg.agents_per_merchant:
        n = int(rng.integers(1, cfg.agents_per_merchant + 1))
        sigma = cfg.agent_mistag_sigma
        rates = cfg.mistag_rate * rng.lognormal(-(sigma**2) / 2, sigma, n)  # mean: mistag_rate
        merchant.agent_mistag = [float(r) for r in np.minimum(rates, 0.5)]


def _mistagged_as(
    tagged: Label,
    others: list[int],
    labels: list[Label],
    groups: dict[str, str],
    rng: np.random.Generator,
    cfg: BuildConfig,
) -> int:
    """The label an agent picks by mistake: with ``confusable_share`` one whose intents share a
    parent group with the right label's (a near miss), otherwise any other label of the day."""
    if cfg.confusable_share and rng.random() < cfg.confusable_share:
        mine = {groups.get(i) for i in tagged.intents} - {None}
        near = [j for j in others if mine & {groups.get(i) for i in labels[j].intents}]
        if near:
            return int(rng.choice(near))
    return int(rng.choice(others))


def _vector_json(vectors: np.ndarray) -> list[str]:
    # float32 values written with float64 repr, as json.dumps(vector.tolist()) writes them
    return [orjson.dumps(v.astype(np.float64).tolist()).decode().replace(",", ", ") for v in vectors]


def build_dataset(
    cfg: BuildConfig,
    out_path: str | os.PathLike,
    sources_dir: str | os.PathLike = SOURCES_DIR,
    embedder: SentenceEmbedder | None = None,
) -> Path:
    """Write the dataset for ``cfg`` to ``out_path`` (atomically) and a ``.build.json`` beside it."""
    out_path = Path(out_path)
    rng = np.random.default_rng(cfg.seed)
    corpus = load_corpus(sources_dir, encoder_form=cfg.dedupe_encoder_form)
    catalogue: list[Intent] = [i for i in intents() if i.name in corpus]
    late = late_intents(cfg, rng, catalogue)
    merchants = make_merchants(cfg, rng, catalogue, late)
    groups = {i.name: i.group for i in catalogue}
    frame, _ = _ticket_rows(merchants, corpus, late, rng, cfg, groups)
    embeddings = _embedding_column(frame, embedder or SentenceEmbedder(), rng)
    table = _ticket_table(frame, embeddings, rng, cfg)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=".parquet.tmp")
    os.close(fd)
    pq.write_table(table, tmp, compression="zstd", row_group_size=8192)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
    _write_build_notes(out_path, cfg, merchants, frame, late)
    return out_path


def _embedding_column(frame: pd.DataFrame, embedder: SentenceEmbedder, rng: np.random.Generator) -> list:
    """Each ticket's ``email_sentence_embeddings`` JSON: ``{sentence id: vector}``; a null ticket's
    None, or now and then ``"{}"``."""
    texts = sorted(
        {
            s
            for sentences, null in zip(frame["sentences"], frame["null"], strict=True)
            if not null
            for s in sentences
        }
    )
    vectors = embedder.embed(texts)
    vector_json = dict(zip(texts, _vector_json(vectors), strict=True))
    hashes = {t: sentence_hash(t) for t in texts}

    embeddings = []
    for sentences, null in tqdm(
        zip(frame["sentences"], frame["null"], strict=True),
        total=len(frame),
        desc="write tickets",
        unit="ticket",
    ):
        if null:
            embeddings.append(None if rng.random() < 0.9 else "{}")
        else:
            embeddings.append("{" + ", ".join(f'"{hashes[s]}": {vector_json[s]}' for s in sentences) + "}")
    return embeddings


def _ticket_table(
    frame: pd.DataFrame, embeddings: list, rng: np.random.Generator, cfg: BuildConfig
) -> pa.Table:
    """The tickets in the real schema, ordered by time (ids and body hashes drawn here)."""
    start = pd.Timestamp(cfg.start, tz="UTC").timestamp()
    ticket_ids = rng.choice(16**12, len(frame), replace=False)
    table = pa.table(
        {
            "account_id": pa.array(frame["account_id"], pa.string()),
            "ticket_id": pa.array([f"{t:012x}" for t in ticket_ids], pa.string()),
            "raw_body": pa.array(rng.integers(1, 2**62, len(frame)), pa.int64()),
            "channel": pa.array(["email"] * len(frame), pa.string()),
            "unix_timestamp": pa.array(np.round(start + frame["day"].to_numpy() * DAY, 3), pa.float64()),
            "contact_reason": pa.array(frame["contact_reason"], pa.string()),
            "processed_body": pa.array(
                np.where(frame["null"], 0, rng.integers(1, 2**62, len(frame))), pa.int64()
            ),
            "email_sentence_embeddings": pa.array(embeddings, pa.string()),
        }
    )
    return table.take(pa.array(np.argsort(table.column("unix_timestamp").to_numpy(), kind="stable")))


def _write_build_notes(
    out_path: Path, cfg: BuildConfig, merchants: list[Merchant], frame: pd.DataFrame, late: dict[str, float]
) -> None:
    """What the simulation did, for anyone who wants to know the ground truth behind the file."""
    notes = {
        "config": asdict(cfg),
        "tickets": len(frame),
        "null_share": float(frame["null"].mean()),
        "mistag_share": float(frame["mistag"].mean()),
        "late_intents": late,
        "boilerplate_sentence_ids": sorted(
            {
                sentence_hash(t)
                for t in [*bp.GREETINGS, *bp.THANKS, *bp.SIGN_OFFS, *bp.DEVICES, *bp.FOOTERS]
                + [m.form_sentence for m in merchants if m.form_sentence]
            }
        ),
        "merchants": [
            {
                "account_id": m.account_id,
                "brand": m.brand,
                "kind": m.kind,
                "tickets": m.volume,
                "start_day": round(m.start_day, 1),
                "null_rate": round(m.null_rate, 3),
                **({"agent_mistag_rates": [round(r, 4) for r in m.agent_mistag]} if m.agent_mistag else {}),
                "labels": [
                    {
                        "name": label.name,
                        "intents": label.intents,
                        "catch_all": label.catch_all,
                        **({"opaque": True} if label.opaque else {}),
                        **({"new_intent": True} if label.new_intent else {}),
                        **({"start_day": round(label.start_day, 1)} if label.start_day else {}),
                        **(
                            {"renamed_to": label.renamed_to, "rename_day": round(label.rename_day, 1)}
                            if label.renamed_to
                            else {}
                        ),
                        **({"raw_variants": label.variants} if label.variants else {}),
                        **({"log_share_drift": round(label.drift, 3)} if label.drift else {}),
                    }
                    for label in m.labels
                ],
            }
            for m in merchants
        ],
    }
    Path(str(out_path) + ".build.json").write_text(json.dumps(notes, indent=1))
