"""Agents' corrections, kept per merchant, folded into its label vectors and used to check its live
precision (docs/operating.md, "Feedback").

    python -m tagger.serving.feedback status [account=ID]     # per merchant: reviews, live precision, pending
    python -m tagger.serving.feedback fold [account=ID]       # fold pending corrections into label vectors
    python -m tagger.serving.feedback calibrate [account=ID]  # raise thresholds where reviews break it
    python -m tagger.serving.feedback replay file=F           # store a file of corrections, then fold them

``POST /feedback`` (the API, admin token) stores corrections the same way. The store is
``REGISTRY/feedback.sqlite`` (WAL, ``synchronous=FULL``), apart from the registry so that agents'
traffic never waits on a label change:

    corrections   one row per review: merchant, who, when, ticket id, the answer given (label,
                  confidence, abstained, model version), the agent's label, the ticket's sentence
                  embeddings when sent, its request's idempotency key; ``batch``/``folded`` say which
                  fold took it and which registry change that was (NULL: pending; -1: it moves
                  nothing: it agrees, or has no embeddings; -2: its fold was refused)
    requests      each idempotency key with its answer (a retried request is stored once)

A fold is crash-safe: it claims its rows under a batch key in one transaction, makes the registry
change with that key as its idempotency key, then marks the rows folded; a fold interrupted
anywhere is finished by the next one, never made twice. One rollback of the merchant's labels
(``python -m tagger.serving.admin account=ID rollback=true``) undoes a fold; its corrections are not
folded again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.data.embeddings_json import EMBEDDING_DIM
from tagger.manifest import ArtifactError
from tagger.model.corrections import (
    Correction,
    FoldRule,
    correction_batch,
    live_precision,
    recalibrated_threshold,
)
from tagger.model.label_update import UpdateError
from tagger.serving.registry import LockTimeout, Registry, TextEmbedder

DB = "feedback.sqlite"
PENDING, MOVES_NOTHING, REFUSED = None, -1, -2
SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, at REAL NOT NULL, by TEXT NOT NULL,
    ticket_id TEXT, model_version TEXT, given_label TEXT, confidence REAL, abstained INTEGER NOT NULL,
    agent_label TEXT NOT NULL, embeddings BLOB, n_sentences INTEGER NOT NULL, request_key TEXT,
    batch TEXT, folded INTEGER, note TEXT);
CREATE INDEX IF NOT EXISTS corrections_by_account ON corrections(account, folded, seq);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY, request_sha TEXT, answer TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Stored:
    """A stored correction: its row number, merchant and the correction."""

    seq: int
    correction: Correction


class FeedbackStore:
    """The corrections store beside the registry at ``root``; safe to share across threads, and any
    number of processes may open it."""

    def __init__(self, root: str | Path, lock_wait: float = 5.0):
        self.path = Path(root) / DB
        self._lock = threading.RLock()
        self.db = sqlite3.connect(
            str(self.path), timeout=lock_wait, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        with self._write() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # ---- writing ------------------------------------------------------------------------------
    def add(
        self, corrections: list[Correction], by: str, key: str | None = None, request_sha: str | None = None
    ) -> dict:
        """Store ``corrections`` (one transaction); returns the answer: how many were stored and each
        merchant's pending count. ``key``: the same key stores once and answers the same."""
        with self._write() as db:
            if key is not None:
                row = db.execute("SELECT request_sha, answer FROM requests WHERE key=?", (key,)).fetchone()
                if row is not None:
                    if request_sha is not None and row[0] is not None and row[0] != request_sha:
                        raise UpdateError("Idempotency-Key", "this key was used for a different request", 422)
                    return {**json.loads(row[1]), "replayed": True}
            now = time.time()
            for c in corrections:
                emb = None if c.embeddings is None else np.ascontiguousarray(c.embeddings, np.float32)
                db.execute(
                    "INSERT INTO corrections (account, at, by, ticket_id, model_version, given_label, "
                    "confidence, abstained, agent_label, embeddings, n_sentences, request_key, folded) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        c.account_id,
                        now,
                        by,
                        c.ticket_id,
                        c.model_version,
                        c.given_label,
                        c.confidence,
                        int(c.abstained),
                        c.agent_label,
                        None if emb is None or not len(emb) else emb.tobytes(),
                        0 if emb is None else len(emb),
                        key,
                        PENDING if c.moves else MOVES_NOTHING,
                    ),
                )
            accounts = sorted({c.account_id for c in corrections})
            answer = {
                "stored": len(corrections),
                "pending": {a: self._pending_count(db, a) for a in accounts},
            }
            if key is not None:
                db.execute("INSERT INTO requests VALUES (?, ?, ?)", (key, request_sha, json.dumps(answer)))
        return answer

    @staticmethod
    def _pending_count(db, account: str) -> int:
        sql = "SELECT count(*) FROM corrections WHERE account=? AND folded IS NULL"
        return int(db.execute(sql, (account,)).fetchone()[0])

    # ---- reading ------------------------------------------------------------------------------
    def pending(self, account: str, batch: str | None = None) -> list[Stored]:
        """The merchant's corrections waiting to fold (those claimed by ``batch`` only, if given)."""
        where = "batch=? AND folded IS NULL" if batch else "batch IS NULL AND folded IS NULL"
        rows = self._rows(
            "SELECT seq, ticket_id, model_version, given_label, confidence, abstained, agent_label, "
            f"embeddings, n_sentences FROM corrections WHERE account=? AND {where} ORDER BY seq",
            (account, batch) if batch else (account,),
        )
        return [_stored(account, row) for row in rows]

    def unfinished(self, account: str) -> str | None:
        """The key of a fold of the merchant's that was claimed but not marked done (a crash)."""
        rows = self._rows(
            "SELECT batch FROM corrections WHERE account=? AND batch IS NOT NULL AND folded IS NULL LIMIT 1",
            (account,),
        )
        return rows[0][0] if rows else None

    def accounts(self, pending_only: bool = False) -> list[str]:
        """Merchants with corrections (with pending ones only)."""
        where = " WHERE folded IS NULL" if pending_only else ""
        return [r[0] for r in self._rows(f"SELECT DISTINCT account FROM corrections{where} ORDER BY account")]

    def reviews(self, account: str, model: str) -> tuple[np.ndarray, np.ndarray]:
        """``(confidence, correct)`` of the merchant's reviewed answers (not abstained) under ``model``."""
        rows = self._rows(
            "SELECT confidence, given_label, agent_label FROM corrections WHERE account=? AND abstained=0 "
            "AND given_label IS NOT NULL AND confidence IS NOT NULL AND (model_version=? OR model_version "
            "LIKE ?)",
            (account, model, f"{model}/%"),
        )
        confidence = np.array([r[0] for r in rows], float)
        correct = np.array([not Correction(account, r[2], r[1]).wrong for r in rows], bool)
        return confidence, correct

    def counts(self, account: str) -> dict:
        """The merchant's corrections by state."""
        rows = self._rows(
            "SELECT folded, count(*) FROM corrections WHERE account=? GROUP BY folded", (account,)
        )
        out = {"folded": 0, "pending": 0, "moves_nothing": 0, "refused": 0}
        states = {PENDING: "pending", MOVES_NOTHING: "moves_nothing", REFUSED: "refused"}
        for folded, n in rows:
            out[states.get(folded, "folded")] += int(n)
        return out

    # ---- folding ------------------------------------------------------------------------------
    def claim(self, account: str, seqs: list[int], batch: str) -> None:
        with self._write() as db:
            db.executemany(
                "UPDATE corrections SET batch=? WHERE seq=? AND account=?",
                [(batch, s, account) for s in seqs],
            )

    def mark(self, batch: str, folded: int, note: str | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE corrections SET folded=?, note=? WHERE batch=? AND folded IS NULL",
                (folded, note, batch),
            )


def _stored(account: str, row: tuple) -> Stored:
    seq, ticket_id, model, given, confidence, abstained, agent, blob, n = row
    embeddings = None if blob is None else np.frombuffer(blob, np.float32).reshape(int(n), EMBEDDING_DIM)
    correction = Correction(account, agent, given, confidence, bool(abstained), embeddings, ticket_id, model)
    return Stored(int(seq), correction)


def fold_account(
    store: FeedbackStore,
    registry: Registry,
    account: str,
    rule: FoldRule,
    by: str,
    embed: TextEmbedder | None,
) -> dict:
    """Fold the merchant's pending corrections into its labels under the served model (one registry
    change); finishes first a fold a crash interrupted. Returns what was done."""
    batch = store.unfinished(account)
    labels = registry.labels_of(registry.serving()[1], account)
    names = labels.labels if labels is not None else ()
    if batch is None:
        pending = store.pending(account)
        if labels is None or not pending:
            return {
                "account_id": account,
                "folded": 0,
                "why": "no labels under the served model" if pending else "nothing pending",
            }
        plan = correction_batch(account, names, [s.correction for s in pending], rule)
        if plan.update is None:
            return {"account_id": account, "folded": 0, "waiting": plan.waiting}
        seqs = [pending[i].seq for i in plan.used]
        batch = (
            f"feedback:{account}:{seqs[0]}-{seqs[-1]}:{hashlib.sha256(repr(seqs).encode()).hexdigest()[:12]}"
        )
        store.claim(account, seqs, batch)
        n_claimed = len(seqs)
    else:  # a fold a crash interrupted: the same rows, the same key (the registry answers it once)
        claimed = store.pending(account, batch)
        plan = correction_batch(account, names, [s.correction for s in claimed], rule)
        n_claimed = len(claimed)
        if plan.update is None:  # its labels changed since the claim: nothing of it can fold now
            store.mark(batch, REFUSED, "nothing to fold under the labels now served")
            return {"account_id": account, "folded": 0, "refused": n_claimed}
    try:
        answer = registry.update(plan.update, by, embed, key=batch)
    except UpdateError as err:
        store.mark(batch, REFUSED, str(err))
        return {"account_id": account, "folded": 0, "refused": n_claimed, "why": str(err)}
    store.mark(batch, int(answer["generation"].lstrip("g")))
    return {
        "account_id": account,
        "folded": n_claimed,
        "labels_moved": sorted(plan.update.examples),
        "labels_added": list(plan.update.add),
        "model_version": answer["model_version"],
        "waiting": plan.waiting,
    }


def calibrate_account(
    store: FeedbackStore,
    registry: Registry,
    account: str,
    target: str,
    delta: float,
    min_support: int,
    by: str,
) -> dict:
    """The merchant's live precision under the served model and, where its reviews show the promise
    broken, its leaf threshold raised in the registry (:func:`recalibrated_threshold`)."""
    version = registry.serving()[1]
    confidence, correct = store.reviews(account, version)
    precision = live_precision(correct, delta)
    out = {
        "account_id": account,
        "reviewed": precision.reviewed,
        "precision": precision.estimate,
        "interval": [precision.low, precision.high],
    }
    raised = recalibrated_threshold(confidence, correct, float(target), delta, min_support)
    if raised is not None:
        evidence = {
            "reviewed": precision.reviewed,
            "hits": precision.hits,
            "interval": [precision.low, precision.high],
        }
        registry.set_threshold(version, account, target, raised, by, evidence)
        out["threshold_raised_to"] = raised
    return out


COMMANDS = ("status", "fold", "calibrate", "replay")
REPLAY_COLUMNS = ("account_id", "agent_label")


def read_corrections(path: str | Path, max_sentences: int) -> tuple[list[tuple[int, Correction]], list[str]]:
    """The corrections of a parquet or JSON-lines file (columns: ``account_id``, ``agent_label`` and
    optionally ``ticket_id``, ``given_label``, ``confidence``, ``abstained``, ``model_version``,
    ``email_sentence_embeddings`` as in the product's data): ``(row, correction)`` of the good rows,
    and one line per bad row naming its row and field (a bad row is reported, never dropped quietly)."""
    import pandas as pd

    from tagger.data.embeddings_json import EmbeddingError, is_empty, parse_embeddings

    path = Path(path)
    frame = (
        pd.read_json(path, lines=True, dtype=False)
        if path.suffix in (".jsonl", ".json")
        else pd.read_parquet(path)
    )
    missing = [c for c in REPLAY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path.name}: no column {missing[0]!r} (a corrections file needs {list(REPLAY_COLUMNS)})"
        )
    good, bad = [], []

    def value(row, column):
        v = row.get(column)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v

    for i, row in enumerate(frame.to_dict(orient="records")):
        account, agent = value(row, "account_id"), value(row, "agent_label")
        if not isinstance(account, str) or not account.strip():
            bad.append(f"row {i}: account_id: empty or not text")
            continue
        if not isinstance(agent, str) or not agent.strip():
            bad.append(f"row {i}: agent_label: empty or not text")
            continue
        embeddings = None
        text = value(row, "email_sentence_embeddings")
        if not is_empty(text):
            try:
                _, embeddings = parse_embeddings(text, max_sentences=max_sentences)
            except EmbeddingError as err:
                bad.append(f"row {i}: email_sentence_embeddings: {err}")
                continue
        confidence = value(row, "confidence")
        if confidence is not None and not (isinstance(confidence, int | float) and 0 <= confidence <= 1):
            bad.append(f"row {i}: confidence: {confidence!r} is not a probability")
            continue
        given, ticket, model = (value(row, c) for c in ("given_label", "ticket_id", "model_version"))
        good.append(
            (
                i,
                Correction(
                    account.strip(),
                    agent,
                    None if given is None else str(given),
                    None if confidence is None else float(confidence),
                    bool(value(row, "abstained") or False),
                    embeddings,
                    None if ticket is None else str(ticket),
                    None if model is None else str(model),
                ),
            )
        )
    return good, bad


def _replay(cfg, store: FeedbackStore, by: str) -> int:
    """Store a file of corrections (each row once, however often the file is replayed)."""
    from tagger.paths import resolve, shown

    if not cfg.file:
        print("replay: say which file, file=corrections.parquet", file=sys.stderr)
        return 2
    path = resolve(cfg.file)
    good, bad = read_corrections(path, int(cfg.max_sentences))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    stored = replayed = 0
    for i, correction in good:
        answer = store.add([correction], by, key=f"replay:{digest}:{i}")
        replayed += bool(answer.get("replayed"))
        stored += not answer.get("replayed")
    print(
        f"{shown(path)}: {len(good) + len(bad)} rows: {stored} stored, {replayed} already stored, "
        f"{len(bad)} bad"
    )
    for line in bad[:20]:
        print(f"  {line}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more bad rows", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a command, then ``key=value`` overrides of conf/feedback.yaml."""
    from tagger.paths import resolve, subcommand_config
    from tagger.serving.admin import who

    try:
        command, cfg = subcommand_config(
            "feedback", sys.argv[1:] if argv is None else argv, __doc__, COMMANDS
        )
    except SystemExit as stop:
        return int(stop.code or 0)
    by = str(cfg.by or f"feedback:{who()}")
    try:
        registry = Registry(resolve(cfg.registry_dir), create=False)
        store = FeedbackStore(registry.root)
    except Exception as err:
        print(f"{command} refused, nothing changed: {err}", file=sys.stderr)
        return 2
    try:
        return _run(command, cfg, registry, store, by)
    except (ArtifactError, UpdateError, LockTimeout, ValueError, OSError) as err:
        print(f"{command} refused: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _run(command: str, cfg, registry: Registry, store: FeedbackStore, by: str) -> int:
    """One command of :func:`main` (its figures printed); the exit status."""
    from omegaconf import OmegaConf

    from tagger.serving.name_encoder import NameEncoder
    from tagger.serving.request_path import target_key

    accounts = [str(cfg.account)] if cfg.account else store.accounts(pending_only=command == "fold")
    status = 0
    if command == "replay":
        status = _replay(cfg, store, by)
        accounts = store.accounts(pending_only=True)
    if command in ("fold", "replay"):
        rule = FoldRule(**OmegaConf.to_container(cfg.fold))
        version = registry.serving()[1]
        embed = NameEncoder(registry.model_dir(version)).embed if rule.add_unknown else None
        for account in accounts:
            print(json.dumps(fold_account(store, registry, account, rule, by, embed)))
        return status
    version = registry.serving()[1]
    thresholds = registry.model(version).predictor.serving.get("thresholds", {})
    target = target_key(thresholds, str(cfg.calibrate.target)) or str(cfg.calibrate.target)
    raised = registry.raised_thresholds(version)[1]
    for account in accounts:
        if command == "calibrate":
            c = cfg.calibrate
            print(json.dumps(calibrate_account(store, registry, account, target, c.delta, c.min_support, by)))
            continue
        p = live_precision(store.reviews(account, version)[1], float(cfg.calibrate.delta))
        print(
            f"{account}: {p.reviewed} reviewed answers, precision {p.estimate:.3f} "
            f"[{p.low:.3f}, {p.high:.3f}]; "
            f"{store.counts(account)}; threshold raised: {raised.get((account, target), '-')}"
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
