"""The model registry and the label store: what is served, and every label change merchants made.

    REGISTRY/registry.sqlite     SQLite in WAL mode, ``synchronous=FULL`` (a commit is on disk):
        models                   every registered export: version, directory, who registered it
        promotions               the served model over time (the last row is live): promote, rollback
        changes                  every label change, in order: the merchant, who, when, what (an
                                 update's added, renamed and retired labels, name embeddings and
                                 example tickets; or the rollback of an earlier change), its
                                 idempotency key and the answer given
        label_rows               a merchant's labels under one model after a change (``.npz`` bytes
                                 and their SHA-256); the last ``KEEP_ROWS`` per model and merchant
        thresholds               a merchant's leaf threshold under one model raised from its agents'
                                 reviews (:mod:`tagger.serving.feedback`), with the evidence; the
                                 last row per model, merchant and target holds (NULL: the export's)
    REGISTRY/models/<version>/   export directories, moved in whole and never written again

The change log is the truth; label rows are what it gives under one model, kept so that a server
reads only what changed. A merchant's labels under model M are M's exported labels with every
change of that merchant replayed in order (:func:`fold`), so a label change outlives the model it
was made on: promoting a model replays each changed merchant's history onto it and reports what
could not be carried as asked (a renamed label the new model already knows, say).

Every write is one SQLite transaction (``BEGIN IMMEDIATE``: one writer at a time, across
processes): a label change, its idempotency key, its answer and its rows commit together or not at
all, and a promotion row is written only after every changed merchant has rows under the new
model. A crash at any instant leaves the last committed state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.data.labels import normalise_label
from tagger.manifest import ArtifactError, fsync_dir, fsync_tree, verify
from tagger.model.label_update import AccountLabels, LabelState, LabelUpdate, UpdateError, apply_update
from tagger.serving.label_store import decode_labels, encode_labels
from tagger.serving.onnx_predictor import EXPORT_FILES, LabelView, OnnxPredictor

DB = "registry.sqlite"
MODELS = "models"
KEEP_ROWS = 5  # label rows kept per model and merchant: the live one and the last good ones before it
TextEmbedder = Callable[[list[str]], np.ndarray]

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version TEXT PRIMARY KEY, path TEXT NOT NULL, registered REAL NOT NULL, by TEXT NOT NULL,
    info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS promotions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, version TEXT NOT NULL REFERENCES models(version),
    at REAL NOT NULL, by TEXT NOT NULL, kind TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, at REAL NOT NULL, by TEXT NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL, arrays BLOB NOT NULL, sha TEXT NOT NULL,
    reverts INTEGER, idempotency_key TEXT UNIQUE, request_sha TEXT, answer TEXT);
CREATE INDEX IF NOT EXISTS changes_by_account ON changes(account, seq);
CREATE TABLE IF NOT EXISTS label_rows (
    model TEXT NOT NULL, account TEXT NOT NULL, seq INTEGER NOT NULL, sha TEXT NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (model, account, seq));
CREATE INDEX IF NOT EXISTS label_rows_by_seq ON label_rows(model, seq);
CREATE TABLE IF NOT EXISTS thresholds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, account TEXT NOT NULL,
    target TEXT NOT NULL, threshold REAL, at REAL NOT NULL, by TEXT NOT NULL, evidence TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS thresholds_by_model ON thresholds(model, seq);
"""


class NothingPromoted(ArtifactError):
    """The registry serves no model yet."""


class LockTimeout(TimeoutError):
    """Another writer held the registry for longer than this one could wait; nothing was written."""


def generation_name(seq: int) -> str:
    """How answers name the label state after change ``seq``."""
    return f"g{seq:06d}"


@dataclass(frozen=True)
class Change:
    """One update of the change log still in effect: the :class:`LabelUpdate` and the name
    embeddings it was made with."""

    seq: int
    account: str
    update: LabelUpdate
    names: dict[str, np.ndarray]


@dataclass
class Model:
    """A registered export as the store uses it: its predictor (exported labels) and settings."""

    version: str
    export_dir: Path
    predictor: OnnxPredictor
    base: LabelState
    name_weight: float

    def encoders(self, names: dict[str, np.ndarray], embed: TextEmbedder | None):
        """``(encode_names, encode_tickets)`` for :func:`apply_update` under this model: a name's
        embedding from ``names`` (what the change was made with) or else ``embed``."""

        def encode_names(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            missing = [t for t in texts if t not in names]
            if missing:
                if embed is None:
                    raise UpdateError("add", f"no embedding of the label name {missing[0]!r}")
                names.update(zip(missing, np.asarray(embed(missing), np.float32), strict=True))
            emb = np.stack([names[t] for t in texts]).astype(np.float32)
            return emb, self.predictor.name_vectors(emb)

        def encode_tickets(labels: AccountLabels, tickets: list[np.ndarray]) -> np.ndarray:
            from tagger.data.tickets import Tickets

            batch = Tickets.from_vectors(["-"] * len(tickets), tickets)
            pending = LabelView("pending", LabelState({"-": labels}, labels.query))
            return self.predictor.ticket_vectors(batch, view=pending)

        return encode_names, encode_tickets


def fold(
    model: Model,
    account: str,
    changes: list[Change],
    embed: TextEmbedder | None = None,
    start: AccountLabels | None = None,
) -> tuple[AccountLabels | None, list[str]]:
    """A merchant's labels under ``model``: its exported labels (or ``start``) with ``changes`` (its
    effective updates, in order) replayed; and a note for each part of a change that could not be
    carried as asked. None when the merchant has no labels under this model."""
    state = _mini_state(model, account, start if start is not None else model.base.accounts.get(account))
    notes: list[str] = []
    for change in changes:
        state, said = replay(model, state, change, embed)
        notes += [f"change {change.seq}: {n}" for n in said]
    return state.accounts.get(account), notes


def replay(
    model: Model, state: LabelState, change: Change, embed: TextEmbedder | None = None
) -> tuple[LabelState, list[str]]:
    """``change`` applied to ``state`` as asked, or else part by part: what this model already has
    is skipped, a rename onto a label it already knows retires the old name; each such part is said."""
    update = change.update
    names, tickets = model.encoders(dict(change.names), embed)
    try:
        return apply_update(state, update, names, tickets, model.name_weight), []
    except UpdateError:
        pass
    account = update.account_id
    notes = []
    if update.create_account and account in state.accounts:
        notes.append(f"account {account!r} is already known to this model")
    elif not update.create_account and account not in state.accounts:
        return state, [f"account {account!r} is unknown to this model: change not carried"]
    exists = account in state.accounts
    parts = [LabelUpdate(account, create_account=not exists)] if not exists else []
    parts += [LabelUpdate(account, retire=[r]) for r in update.retire]
    parts += [LabelUpdate(account, rename={o: n}) for o, n in update.rename.items()]
    parts += [LabelUpdate(account, add=[a]) for a in update.add]
    parts += [
        LabelUpdate(
            account, examples={k: v}, example_weight=update.example_weight, max_turn_deg=update.max_turn_deg
        )
        for k, v in update.examples.items()
    ]
    for part in parts:
        try:
            state = apply_update(state, part, names, tickets, model.name_weight)
        except UpdateError as err:
            state, note = _partial(model, state, part, err, names, tickets)
            notes.append(note)
    return state, notes


def _partial(model, state, part: LabelUpdate, err: UpdateError, names, tickets) -> tuple[LabelState, str]:
    """What is done with one part of a change this model cannot take as asked."""
    if part.rename:
        ((old, new),) = part.rename.items()
        mine = state.accounts.get(part.account_id)
        known = {label.casefold() for label in (mine.labels if mine is not None else ())}
        knows_old, knows_new = (normalise_label(x).casefold() in known for x in (old, new))
        if knows_old and knows_new:
            try:
                retire = LabelUpdate(part.account_id, retire=[old])
                retired = apply_update(state, retire, names, tickets, model.name_weight)
                return (
                    retired,
                    f"rename {old!r} -> {new!r}: this model already knows {new!r}; {old!r} retired",
                )
            except UpdateError as again:
                return state, f"rename {old!r} -> {new!r} not carried: {again.message}"
        if knows_new:  # and the old name is gone already
            return state, f"rename {old!r} -> {new!r}: this model already has {new!r} and no {old!r}"
        if not knows_old:
            added = apply_update(
                state, LabelUpdate(part.account_id, add=[new]), names, tickets, model.name_weight
            )
            return (
                added,
                f"rename {old!r} -> {new!r}: this model does not know {old!r}; {new!r} added by name",
            )
    asked = [("add", list(part.add)), ("retire", list(part.retire)), ("rename", part.rename)]
    asked.append(("examples of", list(part.examples)))
    what = next((f"{verb} {value}" for verb, value in asked if value), "create account")
    return state, f"{what} not carried: {err.message}"


def _mini_state(model: Model, account: str, labels: AccountLabels | None) -> LabelState:
    """A label state holding one merchant (and one other for the model's shapes): what
    :func:`apply_update` reads of a whole state."""
    accounts = {account: labels} if labels is not None else {}
    if not accounts:
        some = model.base.some()
        if some is not None:
            accounts["\x00shape"] = some  # never a real account id (ids are stripped, printable)
    return LabelState(accounts, model.base.unknown_query)


class Registry:
    """The registry at ``root`` (created if missing). Safe to share across threads; any number of
    processes may open the same root. ``threads``: ONNX Runtime threads of the models it loads."""

    def __init__(
        self, root: str | os.PathLike, create: bool = True, lock_wait: float = 5.0, threads: int = 1
    ):
        self.root = Path(root)
        if not create and not (self.root / DB).exists():
            raise ArtifactError(f"{self.root}: no registry here (no {DB}): run `python export.py` first")
        if create:
            (self.root / MODELS).mkdir(parents=True, exist_ok=True)
        self.lock_wait, self.threads = lock_wait, threads
        self._lock = threading.RLock()
        self._models: dict[str, Model] = {}
        self.db = sqlite3.connect(
            str(self.root / DB), timeout=lock_wait, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        if create:  # a reader (a server, predict.py) writes nothing, and needs no write access
            with self._write() as db:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            fsync_dir(self.root)

    def close(self) -> None:
        self.db.close()

    # ---- transactions ------------------------------------------------------------------------
    @contextmanager
    def _write(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, waiting at most ``wait`` seconds for another writer."""
        wait = self.lock_wait if wait is None else max(0.0, wait)
        with self._lock:
            self.db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                if "locked" in str(err) or "busy" in str(err):
                    raise LockTimeout(
                        f"{self.root}: another writer held the registry for {wait:g} s"
                    ) from None
                raise
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in it sees the same committed state."""
        with self._lock:
            self.db.execute("BEGIN")
            try:
                yield self.db
            finally:
                self.db.execute("COMMIT")

    # ---- models ------------------------------------------------------------------------------
    def register(self, export_dir: str | os.PathLike, by: str, move: bool = False) -> tuple[str, bool]:
        """Add a complete export directory as ``models/<version>`` (moved when ``move``, else copied);
        ``(version, new)``: an export of a version already registered with the same files is not
        added twice; different files under a registered version are refused."""
        source = Path(export_dir)
        manifest = verify(source, EXPORT_FILES)
        serving = json.loads((source / "serving.json").read_text())
        version = str(serving["model_version"])
        dest = self.model_dir(version)
        if dest.exists():
            if verify(dest, EXPORT_FILES)["files"] != manifest["files"]:
                raise ArtifactError(f"model {version} is registered with other files; nothing written")
            if move:
                shutil.rmtree(source)
            new = False
        else:
            if move:
                os.replace(source, dest)
            else:
                scratch = dest.with_name(f".incoming-{dest.name}-{os.getpid()}")
                shutil.rmtree(scratch, ignore_errors=True)
                shutil.copytree(source, scratch)
                fsync_tree(scratch)
                os.replace(scratch, dest)
            fsync_dir(dest.parent)
            _read_only(dest)
            new = True
        info = {k: serving.get(k) for k in ("trained", "temperature", "max_sentences", "opset")}
        with self._write() as db:
            known = db.execute("SELECT 1 FROM models WHERE version=?", (version,)).fetchone()
            if not known:
                db.execute(
                    "INSERT INTO models VALUES (?, ?, ?, ?, ?)",
                    (version, dest.relative_to(self.root).as_posix(), time.time(), by, json.dumps(info)),
                )
        return version, new or not known

    def model_dir(self, version: str) -> Path:
        """Where model ``version``'s export directory is (or would be)."""
        safe = "".join(c if c.isalnum() or c in "+-_." else "_" for c in version)
        if safe in ("", ".", ".."):
            raise ValueError(f"not a model version: {version!r}")
        return self.root / MODELS / safe

    def models(self) -> list[dict]:
        """Every registered model, oldest first, with when it was last promoted."""
        rows = self._query(
            "SELECT m.version, m.path, m.registered, m.by, max(p.at) FROM models m "
            "LEFT JOIN promotions p ON p.version = m.version GROUP BY m.version ORDER BY m.registered"
        )
        return [
            {"version": v, "path": p, "registered": r, "by": b, "last_promoted": lp}
            for v, p, r, b, lp in rows
        ]

    def model(self, version: str) -> Model:
        """Model ``version`` loaded (its export checked against its manifest), kept for later calls."""
        with self._lock:
            if version not in self._models:
                rows = self._query("SELECT path FROM models WHERE version=?", (version,))
                row = rows[0] if rows else None
                if row is None:
                    raise UpdateError("model_version", f"no registered model {version!r}", 404)
                export_dir = self.root / row[0]
                predictor = OnnxPredictor(export_dir, threads=self.threads)
                weight = float(predictor.serving["cold_start"]["name_weight"])
                self._models[version] = Model(version, export_dir, predictor, predictor.view.state, weight)
            return self._models[version]

    def decode(self, version: str, blob: bytes, sha: str) -> AccountLabels:
        """A stored row of model ``version``, checked: its SHA-256, and vectors of this model's shape
        (:class:`ArtifactError` otherwise, as for a damaged row)."""
        labels = decode_labels(blob, sha)
        some = self.model(version).base.some()
        if some is not None and labels.vectors.shape[1:] != some.vectors.shape[1:]:
            raise ArtifactError(
                f"label vectors {labels.vectors.shape} do not fit this model {some.vectors.shape[1:]}"
            )
        return labels

    def forget(self, version: str) -> None:
        """Drop model ``version`` from memory (a server that stopped serving it)."""
        with self._lock:
            self._models.pop(version, None)

    # ---- what is served ----------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of one read (under the connection's lock: never inside another thread's transaction)."""
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def served(self) -> tuple[int, str] | None:
        """``(promotion number, version)`` of the served model; None before the first promotion."""
        rows = self._query("SELECT seq, version FROM promotions ORDER BY seq DESC LIMIT 1")
        row = rows[0] if rows else None
        return (int(row[0]), str(row[1])) if row else None

    def serving(self) -> tuple[int, str]:
        """:meth:`served`, or :class:`NothingPromoted` saying what to run when nothing is."""
        served = self.served()
        if served is None:
            raise NothingPromoted(
                f"{self.root}: no model is promoted: `python -m tagger.serving.models promote`"
            )
        return served

    def head(self) -> tuple[tuple[int, str] | None, int]:
        """``(served(), the last change number)`` in one look: what a server polls."""
        with self._read() as db:
            return self.served(), _last_change(db)

    def promotions(self, limit: int = 20) -> list[dict]:
        """The last ``limit`` promotions, newest first."""
        rows = self._query(
            "SELECT seq, version, at, by, kind, report FROM promotions ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [
            {"seq": s, "version": v, "at": a, "by": b, "kind": k, "report": json.loads(r)}
            for s, v, a, b, k, r in rows
        ]

    def promote(
        self,
        version: str,
        by: str,
        embed: TextEmbedder | None = None,
        kind: str = "promote",
        deadline: float | None = None,
    ) -> dict:
        """Serve model ``version`` from now on, with every merchant's label changes replayed onto it;
        returns the report (what was carried, what could not be as asked)."""
        started = time.perf_counter()
        loaded = version in self._models
        model = self.model(version)
        if loaded:  # checked again: the files may have changed since it was loaded (which checked them)
            verify(model.export_dir, EXPORT_FILES)
        served = self.served()
        if served and served[1] == version:
            return {"version": version, "previous": version, "kind": kind, "unchanged": True}
        # the long part outside the lock: every merchant with changes, folded onto the new model
        with self._lock:
            upto = _last_change(self.db)
        accounts = self._accounts_changed(0, upto)
        notes = self._materialise(model, accounts, embed)
        with self._write(self._wait(deadline)) as db:
            now = _last_change(db)
            meanwhile = self._accounts_changed(upto, now)  # the changes made during the long part
            notes.update(self._materialise(model, meanwhile, embed, db))
            report = {
                "version": version,
                "previous": served[1] if served else None,
                "kind": kind,
                "through_change": now,
                "merchants_carried": len(set(accounts) | set(meanwhile)),
                "not_carried_as_asked": {a: n for a, n in sorted(notes.items()) if n},
            }
            db.execute(
                "INSERT INTO promotions (version, at, by, kind, report) VALUES (?, ?, ?, ?, ?)",
                (version, time.time(), by, kind, json.dumps(report)),
            )
            _before(deadline)
        report["seconds"] = round(time.perf_counter() - started, 4)
        return report

    def rollback(self, by: str, embed: TextEmbedder | None = None, deadline: float | None = None) -> dict:
        """Serve again the model served before the current one (label changes replayed onto it)."""
        rows = self._query("SELECT version FROM promotions ORDER BY seq DESC LIMIT 50")
        if not rows:
            raise UpdateError("model_version", "no model has been promoted", 409)
        current = rows[0][0]
        earlier = [v for (v,) in rows[1:] if v != current]
        if not earlier:
            raise UpdateError(
                "model_version", f"{current} is the only model ever served: nothing to roll back to", 409
            )
        return self.promote(earlier[0], by, embed, kind="rollback", deadline=deadline)

    # ---- label changes -----------------------------------------------------------------------
    def update(
        self,
        update: LabelUpdate,
        by: str,
        embed: TextEmbedder | None,
        key: str | None = None,
        request_sha: str | None = None,
        deadline: float | None = None,
    ) -> dict:
        """Apply one merchant's label change to the served model and record it (all or nothing);
        returns the answer. ``key``: an idempotency key (the same key answers the same, once);
        ``deadline`` (``time.monotonic()``): refuse rather than commit after it. Raises
        :class:`UpdateError` (nothing written) or :class:`LockTimeout`."""
        started = time.perf_counter()
        update = dataclasses.replace(update, account_id=str(update.account_id or "").strip())
        with self._write(self._wait(deadline)) as db:
            if key is not None and (done := self._answered(db, key, request_sha)) is not None:
                return done
            model = self._served_model()
            account = update.account_id
            current = self._current(db, model, account, embed) if account else None
            names: dict[str, np.ndarray] = {}
            encode_names, encode_tickets = model.encoders(names, embed)
            state = apply_update(
                _mini_state(model, account, current), update, encode_names, encode_tickets, model.name_weight
            )
            labels = state.accounts[account]
            seq = self._insert_change(
                db, account, by, "update", _payload(update), _arrays(update, names), key, request_sha
            )
            answer = self._record(db, model, account, seq, labels, by, started)
            _before(deadline)
        return answer

    def revert(self, account: str, by: str, key: str | None = None, deadline: float | None = None) -> dict:
        """Undo the merchant's last label change that is still in effect (its labels as before it,
        under the served model); recorded as a change of its own."""
        started = time.perf_counter()
        account = account.strip()
        with self._write(self._wait(deadline)) as db:
            if key is not None and (done := self._answered(db, key, None)) is not None:
                return done
            model = self._served_model()
            effective = self._effective(db, account)
            if not effective:
                raise UpdateError("account_id", f"account {account!r} has no label change to roll back", 404)
            last = effective[-1]
            labels, _ = fold(model, account, effective[:-1])
            if labels is None:
                message = f"account {account!r} was created by that change: no earlier labels to roll back to"
                raise UpdateError("account_id", message, 409)
            seq = self._insert_change(
                db, account, by, "revert", {"reverts": last.seq}, _npz({}), key, None, reverts=last.seq
            )
            answer = self._record(db, model, account, seq, labels, by, started, reverted=last.seq)
            _before(deadline)
        return answer

    def changes(self, account: str | None = None, limit: int = 50) -> list[dict]:
        """The last ``limit`` label changes (of ``account``), newest first: who, when, what."""
        query = "SELECT seq, account, at, by, kind, payload, reverts FROM changes"
        args: tuple = ()
        if account is not None:
            query, args = query + " WHERE account=?", (account,)
        rows = self._query(query + " ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [
            {"seq": s, "account": a, "at": t, "by": b, "kind": k, "change": json.loads(p), "reverts": r}
            for s, a, t, b, k, p, r in rows
        ]

    # ---- what a server reads -----------------------------------------------------------------
    def label_view(self, version: str) -> tuple[LabelView, dict[str, str]]:
        """Model ``version``'s labels now (its exported labels and the latest row of each changed
        merchant) and the merchants quarantined: a damaged row is skipped for that merchant's last
        good one (or its exported labels), and said."""
        model = self.model(version)
        with self._read() as db:
            seq = _last_change(db)
            rows = db.execute(
                "SELECT account, seq, sha, blob FROM label_rows WHERE model=? ORDER BY account, seq DESC",
                (version,),
            ).fetchall()
        changed, quarantined = {}, {}
        for account, _, sha, blob in rows:
            if account in changed:
                continue
            try:
                changed[account] = self.decode(version, blob, sha)
            except ArtifactError as err:
                quarantined.setdefault(account, str(err))
        return LabelView(generation_name(seq), model.base.replace(changed)), quarantined

    def labels_of(self, version: str, account: str) -> AccountLabels | None:
        """One merchant's labels under model ``version`` now (its latest good row, else its exported
        labels): one row read."""
        with self._read() as db:
            _, labels = self._last_good(db, version, account)
        return labels if labels is not None else self.model(version).base.accounts.get(account)

    def replayed(self, version: str, account: str) -> AccountLabels | None:
        """One merchant's labels under model ``version`` replayed from its whole change log onto the
        model's exported labels, whatever the stored rows say (what a check compares them with)."""
        with self._read() as db:
            changes = self._effective(db, account)
        return fold(self.model(version), account, changes)[0]

    def rows_since(self, version: str, since: int) -> tuple[int, dict[str, AccountLabels], dict[str, str]]:
        """What changed for model ``version`` after change ``since``: ``(the last change number, the
        changed merchants' labels, the merchants whose new row is damaged and why)``."""
        with self._read() as db:
            seq = _last_change(db)
            rows = db.execute(
                "SELECT account, seq, sha, blob FROM label_rows "
                "WHERE model=? AND seq>? AND seq<=? ORDER BY seq",
                (version, since, seq),
            ).fetchall()
        changed, damaged = {}, {}
        for account, _, sha, blob in rows:
            try:
                changed[account] = self.decode(version, blob, sha)
                damaged.pop(account, None)
            except ArtifactError as err:
                changed.pop(account, None)
                damaged[account] = str(err)
        return seq, changed, damaged

    # ---- thresholds raised from reviews --------------------------------------------------------
    def set_threshold(
        self, version: str, account: str, target: str, threshold: float | None, by: str, evidence: dict
    ) -> int:
        """Record ``account``'s leaf threshold for ``target`` under model ``version`` (None: back to the
        export's); servers of that model use it within their reload interval. Returns its number."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO thresholds (model, account, target, threshold, at, by, evidence) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version, account, target, threshold, time.time(), by, json.dumps(evidence)),
            )
            return int(cursor.lastrowid)

    def raised_thresholds(self, version: str) -> tuple[int, dict[tuple[str, str], float]]:
        """``(the last threshold row's number, {(account, target): threshold})`` of model ``version``."""
        try:
            with self._read() as db:  # one snapshot: a row written between two reads is never skipped
                rows = db.execute(
                    "SELECT seq, account, target, threshold FROM thresholds WHERE model=? ORDER BY seq",
                    (version,),
                ).fetchall()
                last = db.execute("SELECT coalesce(max(seq), 0) FROM thresholds").fetchone()[0]
        except sqlite3.OperationalError:  # a registry made before thresholds could be raised
            return 0, {}
        out: dict[tuple[str, str], float] = {}
        for _, account, target, threshold in rows:
            if threshold is None:
                out.pop((account, target), None)
            else:
                out[(account, target)] = float(threshold)
        return int(last), out

    def threshold_head(self) -> int:
        """The number of the last threshold row (0: none): what a server compares to see a change."""
        try:
            return int(self._query("SELECT coalesce(max(seq), 0) FROM thresholds")[0][0])
        except sqlite3.OperationalError:  # no such table yet: nothing raised
            return 0

    # ---- inside -----------------------------------------------------------------------------
    def _wait(self, deadline: float | None) -> float:
        if deadline is None:
            return self.lock_wait
        return min(self.lock_wait, deadline - time.monotonic() - 0.5)

    def _served_model(self) -> Model:
        try:
            return self.model(self.serving()[1])
        except NothingPromoted:
            raise UpdateError("model_version", "no model is promoted yet", 409) from None

    def _answered(self, db, key: str, request_sha: str | None) -> dict | None:
        row = db.execute("SELECT answer, request_sha FROM changes WHERE idempotency_key=?", (key,)).fetchone()
        if row is None:
            return None
        if request_sha is not None and row[1] is not None and row[1] != request_sha:
            raise UpdateError("Idempotency-Key", "this key was used for a different request", 422)
        return {**json.loads(row[0]), "replayed": True}

    def _insert_change(
        self, db, account, by, kind, payload, arrays: bytes, key, request_sha, reverts=None
    ) -> int:
        text = json.dumps(payload)
        sha = hashlib.sha256(text.encode() + arrays).hexdigest()
        cursor = db.execute(
            "INSERT INTO changes (account, at, by, kind, payload, arrays, sha, reverts, idempotency_key, "
            "request_sha) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (account, time.time(), by, kind, text, arrays, sha, reverts, key, request_sha),
        )
        return int(cursor.lastrowid)

    def _record(
        self, db, model: Model, account: str, seq: int, labels: AccountLabels, by: str, started: float, **more
    ) -> dict:
        """Store the merchant's labels after change ``seq`` under ``model`` and that change's answer
        (what a retry with its idempotency key gets); returns the answer."""
        self._put_row(db, model.version, account, seq, labels)
        answer = {
            "generation": generation_name(seq),
            "previous": generation_name(seq - 1),
            "model_version": f"{model.version}/{generation_name(seq)}",
            "account_id": account,
            "labels": list(labels.labels),
            "by": by,
            **more,
            "seconds": round(time.perf_counter() - started, 4),
        }
        db.execute("UPDATE changes SET answer=? WHERE seq=?", (json.dumps(answer), seq))
        return answer

    def _put_row(self, db, version: str, account: str, seq: int, labels: AccountLabels) -> None:
        blob, sha = encode_labels(labels)
        db.execute(
            "INSERT OR REPLACE INTO label_rows VALUES (?, ?, ?, ?, ?)", (version, account, seq, sha, blob)
        )
        db.execute(
            "DELETE FROM label_rows WHERE model=? AND account=? AND seq NOT IN (SELECT seq FROM label_rows "
            "WHERE model=? AND account=? ORDER BY seq DESC LIMIT ?)",
            (version, account, version, account, KEEP_ROWS),
        )

    def _current(self, db, model: Model, account: str, embed) -> AccountLabels | None:
        """The merchant's labels under ``model`` now (a damaged latest row is rebuilt from the change
        log, the truth)."""
        _, start, changes = self._pending(db, model, account)
        return start if changes is None else fold(model, account, changes, embed, start)[0]

    def _pending(
        self, db, model: Model, account: str
    ) -> tuple[int, AccountLabels | None, list[Change] | None]:
        """``(its last change number, labels, the changes to fold onto them)`` of a merchant under
        ``model``: its last good row and None when no change came after it; that row and the updates
        after it when only updates came (what a promotion costs grows with the changes since the
        model last served); else the model's exported labels (None) and its whole history."""
        last = db.execute("SELECT coalesce(max(seq), 0) FROM changes WHERE account=?", (account,)).fetchone()[
            0
        ]
        since, start = self._last_good(db, model.version, account)
        if start is not None and since == last:
            return last, start, None
        later = db.execute(
            "SELECT count(*) FROM changes WHERE account=? AND seq>? AND kind!='update'", (account, since)
        ).fetchone()[0]
        if start is None or later:
            since, start = 0, None
        return last, start, self._effective(db, account, since)

    def _effective(self, db, account: str, after: int = 0) -> list[Change]:
        """The merchant's updates still in effect (not rolled back), in order; those after change
        ``after`` only."""
        rows = db.execute(
            "SELECT seq, kind, payload, arrays, sha, reverts FROM changes "
            "WHERE account=? AND seq>? ORDER BY seq",
            (account, after),
        ).fetchall()
        reverted = {r[5] for r in rows if r[1] == "revert"}
        out = []
        for seq, kind, payload, arrays, sha, _ in rows:
            if kind != "update" or seq in reverted:
                continue
            if hashlib.sha256(payload.encode() + arrays).hexdigest() != sha:
                raise ArtifactError(f"label change {seq} of {account!r} is damaged")
            out.append(_change(seq, account, json.loads(payload), arrays))
        return out

    def _accounts_changed(self, since: int, until: int) -> list[str]:
        rows = self._query(
            "SELECT DISTINCT account FROM changes WHERE seq>? AND seq<=? ORDER BY account", (since, until)
        )
        return [r[0] for r in rows]

    def _materialise(self, model: Model, accounts: list[str], embed, txn=None) -> dict[str, list[str]]:
        """A row under ``model`` at its latest change for each of ``accounts`` (:meth:`_pending`, folded
        outside any transaction unless ``txn``, the open write transaction to use); notes by merchant."""
        notes = {}
        for account in accounts:
            with self._read() if txn is None else _same(txn) as db:
                try:
                    last, start, changes = self._pending(db, model, account)
                except ArtifactError as err:
                    notes[account] = [f"not carried: {err}"]
                    continue
            if changes is None:
                continue
            labels, notes[account] = fold(model, account, changes, embed, start)
            if labels is not None:
                with self._write() if txn is None else _same(txn) as db:
                    self._put_row(db, model.version, account, last, labels)
        return notes

    def _last_good(self, db, version: str, account: str) -> tuple[int, AccountLabels | None]:
        """``(its change number, labels)`` of the merchant's latest readable row under ``version``."""
        rows = db.execute(
            "SELECT seq, sha, blob FROM label_rows WHERE model=? AND account=? ORDER BY seq DESC",
            (version, account),
        ).fetchall()
        for seq, sha, blob in rows:
            try:
                return int(seq), self.decode(version, blob, sha)
            except ArtifactError:
                continue
        return 0, None


@contextmanager
def _same(db) -> Iterator[sqlite3.Connection]:
    yield db


def _last_change(db) -> int:
    return int(db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])


def _before(deadline: float | None) -> None:
    """Refuse (the transaction rolls back) once the request's deadline has passed: an update is
    never committed after its caller was told it failed."""
    if deadline is not None and time.monotonic() > deadline:
        raise UpdateError(
            "body", "the update could not finish within the request deadline; nothing changed", 503
        )


def _payload(update: LabelUpdate) -> dict:
    return {
        "account_id": update.account_id,
        "add": list(update.add),
        "rename": dict(update.rename),
        "retire": list(update.retire),
        "create_account": bool(update.create_account),
        "examples": [[label, len(tickets)] for label, tickets in update.examples.items()],
        "example_weight": float(update.example_weight),
        "max_turn_deg": update.max_turn_deg,
    }


def _arrays(update: LabelUpdate, names: dict[str, np.ndarray]) -> bytes:
    """The change's arrays: the name embeddings it was made with, and its example tickets."""
    arrays = {f"name{i}": v for i, v in enumerate(names.values())}
    i = 0
    for tickets in update.examples.values():
        for ticket in tickets:
            arrays[f"example{i}"] = np.asarray(ticket, np.float32)
            i += 1
    return _npz(arrays, name_texts=np.asarray(list(names), str))


def _npz(arrays: dict[str, np.ndarray], **more: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays, **more)
    return out.getvalue()


def _change(seq: int, account: str, payload: dict, arrays: bytes) -> Change:
    with np.load(io.BytesIO(arrays), allow_pickle=False) as z:
        texts = [str(t) for t in z["name_texts"]] if "name_texts" in z else []
        names = {t: z[f"name{i}"] for i, t in enumerate(texts)}
        examples: dict[str, list[np.ndarray]] = {}
        i = 0
        for label, n in payload.get("examples", []):
            examples[label] = [z[f"example{i + j}"] for j in range(n)]
            i += n
    update = LabelUpdate(
        account,
        payload["add"],
        payload["rename"],
        payload["retire"],
        examples,
        payload["create_account"],
        payload.get("example_weight", 1.0),  # changes recorded before corrections had weights
        payload.get("max_turn_deg"),
    )
    return Change(seq, account, update, names)


def _read_only(directory: Path) -> None:
    """Files of a registered export cannot be written by mistake (a registered export never changes)."""
    for folder, _, files in os.walk(directory):
        for name in files:
            path = Path(folder) / name
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
