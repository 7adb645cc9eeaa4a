"""The label side of an export directory, stored per merchant and changed in numbered generations.

    EXPORT/labels/CURRENT              the live generation's name, ``gNNNNNN`` (replaced with os.replace)
    EXPORT/labels/base/                every merchant's labels as export.py wrote them (generation 0):
        labels.parquet                 account_id, label, text, n_train, prior (merchant-contiguous rows)
        label_vectors.npy              [L, K, d] unit label vectors
        label_names.npy                [L, 384] name embeddings (checked at startup, then memory-mapped:
                                       only label updates read them)
        account_queries.npy            [A + 1, q] attention-query shifts in account order, the last row
                                       for an unknown account (q = 0: none)
        manifest.json                  SHA-256 of each file, written last
    EXPORT/labels/accounts/KEY/v000003/  one merchant's labels after an update (never changed once written):
        labels.json  label_vectors.npy  label_names.npy  query.npy  manifest.json
        (labels.json names its ``parent``: the version it replaced, what a rollback brings back)
    EXPORT/labels/accounts/KEY/history.json  the merchant's live version at each generation that changed it
    EXPORT/labels/log/g000007.json     generation 7: the merchant versions it made live, and why
    EXPORT/labels/log/live-g000100.json  every 100 generations: every changed merchant's live version

A label update writes only the changed merchants' version directories, their history and one small
log entry, then moves CURRENT. A server catching up from generation g to CURRENT reads the log
entries after g and the version directories they name, nothing else: reload costs what changed.
Startup reads the base once, the latest snapshot of live versions, the log entries after it (at
most 99) and the live version of each merchant ever updated.

Guarantees kept from whole-table generations: an update is all or nothing (its version directories
are complete and checked before the log entry that names them exists, and the entry before CURRENT
names it); a reader sees a generation whole or not at all; a version that fails its manifest is
refused and the previous state keeps serving (a rollback of that merchant, or a new version of it,
supersedes it); one writer at a time (a file lock); what a writer that crashed before moving
CURRENT left behind is undone by the next writer (:func:`_recover`). Each merchant keeps the last
``KEEP_VERSIONS`` versions of its live line (the live one and the ones it replaced), so
:func:`rollback` can bring them back one by one (then the exported labels, from the first).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from tagger.manifest import ArtifactError, atomic_directory, verify, write_manifest
from tagger.model.label_table import LabelTable
from tagger.model.label_update import AccountLabels, LabelState

BASE_FILES = ("labels.parquet", "label_vectors.npy", "label_names.npy", "account_queries.npy")
VERSION_FILES = ("labels.json", "label_vectors.npy", "label_names.npy", "query.npy")
KEEP_VERSIONS = 5  # per merchant: the live version and its predecessors, for a rollback
SNAPSHOT_EVERY = 100  # generations between snapshots of every merchant's live version (startup)
BASE = "base"
_NAME = re.compile(r"^g(\d{6,})$")
_VERSION = re.compile(r"^v(\d{6,})$")


def labels_dir(export_dir: str | os.PathLike) -> Path:
    return Path(export_dir) / "labels"


def generation_name(number: int) -> str:
    return f"g{number:06d}"


def generation_number(name: str) -> int:
    """The number of a generation name; ValueError for anything else."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"labels/CURRENT names {name!r}, not a generation")
    return int(match.group(1))


def current_generation(export_dir: str | os.PathLike) -> str:
    """The live generation's name; raises FileNotFoundError if there is none."""
    return (labels_dir(export_dir) / "CURRENT").read_text().strip()


def account_key(account: str) -> str:
    """A directory name for any account id (ids may hold any character)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", account)[:32]
    return f"{safe}-{hashlib.sha256(account.encode()).hexdigest()[:12]}"


# ---- reading --------------------------------------------------------------------------------------
def read_base(export_dir: str | os.PathLike) -> LabelState:
    """Generation 0: every merchant's labels as exported, checked against the manifest."""
    folder = labels_dir(export_dir) / BASE
    verify(folder, BASE_FILES)
    frame = pd.read_parquet(folder / "labels.parquet")
    table = LabelTable(frame[["account_id", "label", "text", "n_train"]])
    vectors = np.load(folder / "label_vectors.npy")
    names = np.load(folder / "label_names.npy", mmap_mode="r")
    queries = np.load(folder / "account_queries.npy")
    if len(vectors) != len(table) or len(names) != len(table):
        raise ArtifactError(f"{folder}: {len(vectors)} vectors for {len(table)} labels")
    if len(queries) != table.n_accounts + 1:
        raise ArtifactError(f"{folder}: {len(queries)} account queries for {table.n_accounts} accounts")
    return LabelState.from_table(
        table, vectors, frame["prior"].to_numpy(float), names, queries if queries.shape[1] else None
    )


def read_version(export_dir: str | os.PathLike, path: str) -> tuple[str, AccountLabels]:
    """``(account_id, labels)`` of one merchant version directory (relative to labels/)."""
    folder = labels_dir(export_dir) / path
    verify(folder, VERSION_FILES)
    info = json.loads((folder / "labels.json").read_text())
    query = np.load(folder / "query.npy")
    labels = AccountLabels(
        tuple(info["labels"]),
        tuple(info["text"]),
        np.asarray(info["n_train"], np.int64),
        np.asarray(info["prior"], float),
        np.load(folder / "label_vectors.npy"),
        np.load(folder / "label_names.npy"),
        query if query.size else None,
    )
    if not (len(labels.vectors) == len(labels.names) == len(labels) == len(labels.prior) > 0):
        raise ArtifactError(f"{folder}: {len(labels.vectors)} vectors for {len(labels)} labels")
    return info["account_id"], labels


def read_log(export_dir: str | os.PathLike, number: int) -> dict:
    """The log entry of generation ``number`` (>= 1)."""
    path = labels_dir(export_dir) / "log" / f"{generation_name(number)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: {err}") from err


def live_paths(export_dir: str | os.PathLike, since: int, until: int) -> dict[str, str]:
    """For each merchant changed by generations ``since + 1 .. until``: its version there (from 0:
    the latest snapshot at or before ``until`` and the log entries after it)."""
    paths: dict[str, str] = {}
    if since == 0:
        since, paths = _snapshot(export_dir, until)
    for number in range(since + 1, until + 1):
        paths.update(read_log(export_dir, number)["accounts"])
    return paths


def catch_up(
    export_dir: str | os.PathLike, state: LabelState, since: int, until: int
) -> tuple[LabelState, list[str]]:
    """``state`` (generation ``since``) brought to generation ``until``, and the merchants that
    changed: only those are read."""
    if until < since:
        raise ArtifactError(
            f"labels/CURRENT went back from {generation_name(since)} to {generation_name(until)}"
        )
    changed = {}
    for account, path in live_paths(export_dir, since, until).items():
        read_account, labels = read_version(export_dir, path)
        if read_account != account:
            raise ArtifactError(f"labels/{path} holds account {read_account!r}, not {account!r}")
        changed[account] = labels
    return (state.replace(changed) if changed else state), list(changed)


def read_generation(export_dir: str | os.PathLike, name: str | None = None) -> tuple[str, LabelState]:
    """``(name, state)`` of a generation (the live one by default): the base and every merchant's
    version at that generation, each checked against its manifest; raises
    :class:`tagger.manifest.ArtifactError` if a file is missing or altered."""
    name = name or current_generation(export_dir)
    return name, catch_up(export_dir, read_base(export_dir), 0, generation_number(name))[0]


# ---- writing --------------------------------------------------------------------------------------
def write_base(export_dir: str | os.PathLike, state: LabelState, change: dict) -> str:
    """Write every merchant's labels as generation 0 (export.py) and make it live."""
    root = labels_dir(export_dir)
    table, vectors, prior, names, queries = state.to_table()
    with atomic_directory(root / BASE, replace=False) as tmp:
        frame = table.frame.assign(prior=prior)
        frame.to_parquet(tmp / "labels.parquet", index=False)
        np.save(tmp / "label_vectors.npy", vectors)
        np.save(tmp / "label_names.npy", names)
        if queries is None:
            queries = np.zeros((table.n_accounts + 1, 0), np.float32)
        np.save(tmp / "account_queries.npy", queries)
        write_manifest(tmp, BASE_FILES, change=change)
    _set_current(root, generation_name(0))
    return generation_name(0)


def write_version(export_dir: str | os.PathLike, account: str, labels: AccountLabels) -> str:
    """Write one merchant's labels as its next version directory; returns its path under labels/."""
    folder = _account_dir(export_dir, account)
    folder.mkdir(parents=True, exist_ok=True)
    # never reuse a number, even of a pruned version: an old log entry must not name new contents
    named = [int(e["path"].rsplit("/v", 1)[1]) for e in _history(export_dir, account)]
    number = max([*_versions(folder), *named], default=0) + 1
    path = folder / f"v{number:06d}"
    with atomic_directory(path, replace=False) as tmp:
        info = {
            "account_id": account,
            "labels": list(labels.labels),
            "text": list(labels.text),
            "n_train": [int(n) for n in labels.n_train],
            "prior": [float(p) for p in labels.prior],
        }
        (tmp / "labels.json").write_text(json.dumps(info))
        np.save(tmp / "label_vectors.npy", np.ascontiguousarray(labels.vectors, np.float32))
        np.save(tmp / "label_names.npy", np.ascontiguousarray(labels.names, np.float32))
        query = labels.query if labels.query is not None else np.zeros(0, np.float32)
        np.save(tmp / "query.npy", np.ascontiguousarray(query, np.float32))
        write_manifest(tmp, VERSION_FILES)
    return path.relative_to(labels_dir(export_dir)).as_posix()


def write_generation(
    export_dir: str | os.PathLike, changed: dict[str, AccountLabels], change: dict, created: tuple = ()
) -> str:
    """Write the ``changed`` merchants' labels as a new generation and make it live; returns its
    name. ``created``: merchants new with this change (nothing to roll back to). Call under
    :func:`lock` when another writer may run."""
    live = _recover(export_dir)
    lines = {}
    for account, labels in changed.items():
        entry = live_entry(export_dir, account, live)
        parent = None if account in created else (entry["path"] if entry else BASE)
        lines[account] = (write_version(export_dir, account, labels), parent)
    return _commit(export_dir, lines, change)


def live_entry(export_dir: str | os.PathLike, account: str, generation: int) -> dict | None:
    """The merchant's history entry live at ``generation``: ``path`` (its version directory) and
    ``parent`` (what that version replaced: a path, ``base``, or None for nothing); None while
    the merchant has its exported labels (or none)."""
    entries = [e for e in _history(export_dir, account) if e["generation"] <= generation]
    return entries[-1] if entries else None


def rollback(export_dir: str | os.PathLike, account: str, change: dict | None = None) -> str:
    """Make live again the labels the merchant's live version replaced (its exported labels
    after its first update); returns the new generation's name. Works when the live version is
    damaged (it reads only the merchant's history). Call under :func:`lock`."""
    entry = live_entry(export_dir, account, _recover(export_dir))
    if entry is None:
        raise ValueError(f"account {account!r} has no label update to roll back")
    if entry["parent"] is None:
        raise ValueError(f"account {account!r} has no earlier version of its labels to roll back to")
    if entry["parent"] != BASE and not (labels_dir(export_dir) / entry["parent"]).is_dir():
        raise ValueError(
            f"account {account!r}: its earlier labels are gone (each merchant keeps its last "
            f"{KEEP_VERSIONS} versions)"
        )
    if entry["parent"] == BASE:  # the exported labels, as a version of their own (a reload reads only it)
        base = read_base(export_dir)
        if account not in base.accounts:
            raise ValueError(f"account {account!r} has no exported labels to roll back to")
        target = (write_version(export_dir, account, base.accounts[account]), None)
    else:
        read_version(export_dir, entry["parent"])  # checked before it is made live
        earlier = [e for e in _history(export_dir, account) if e["path"] == entry["parent"]]
        target = (entry["parent"], earlier[-1]["parent"] if earlier else None)
    return _commit(
        export_dir, {account: target}, {"rollback": account, "to": entry["parent"], **(change or {})}
    )


@contextmanager
def lock(export_dir: str | os.PathLike, timeout: float = 30.0) -> Iterator[None]:
    """An exclusive lock on the export directory's labels (one writer at a time, across processes)."""
    root = labels_dir(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(root / ".lock", timeout=timeout):
            yield
    except Timeout:
        raise TimeoutError(f"{root}: another label update holds the lock") from None


def _commit(export_dir: str | os.PathLike, lines: dict[str, tuple[str, str | None]], change: dict) -> str:
    """Make ``lines`` (account -> (version path, its parent)) live as the next generation."""
    root = labels_dir(export_dir)
    previous = current_generation(export_dir)
    number = generation_number(previous) + 1
    name = generation_name(number)
    paths = {account: path for account, (path, _) in lines.items()}
    entry = {
        "generation": name,
        "previous": previous,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "change": change,
        "accounts": paths,
    }
    (root / "log").mkdir(exist_ok=True)
    _write_atomic(root / "log" / f"{name}.json", json.dumps(entry))  # an orphan of a crash is overwritten
    for account, (path, parent) in lines.items():
        # entries at or past this number are orphans of a crash: that generation never went live
        history = [e for e in _history(export_dir, account) if e["generation"] < number]
        history.append({"generation": number, "path": path, "parent": parent})
        _write_atomic(_account_dir(export_dir, account) / "history.json", json.dumps(history))
    if number % SNAPSHOT_EVERY == 0:  # from the snapshot before it: never from a crash's leftover
        since, paths_then = _snapshot(export_dir, number - 1)
        paths_then.update(live_paths(export_dir, since, number))
        _write_atomic(
            root / "log" / f"live-{name}.json", json.dumps({"generation": name, "accounts": paths_then})
        )
    _set_current(root, name)
    for account in lines:
        _prune(export_dir, account, number)
    return name


def _recover(export_dir: str | os.PathLike) -> int:
    """Undo what a writer that crashed before moving CURRENT left behind (its log entry, history
    entries, snapshot and version directories never went live); returns the live generation."""
    live = generation_number(current_generation(export_dir))
    name = generation_name(live + 1)
    orphan = labels_dir(export_dir) / "log" / f"{name}.json"
    if orphan.exists():
        try:
            accounts = list(json.loads(orphan.read_text()).get("accounts", {}))
        except (OSError, json.JSONDecodeError):
            accounts = []  # a torn entry: its merchants' histories never got to be written
        for account in accounts:
            history = [e for e in _history(export_dir, account) if e["generation"] <= live]
            _write_atomic(_account_dir(export_dir, account) / "history.json", json.dumps(history))
            _prune(export_dir, account, live)
        (labels_dir(export_dir) / "log" / f"live-{name}.json").unlink(missing_ok=True)
        orphan.unlink()
    return live


def _account_dir(export_dir: str | os.PathLike, account: str) -> Path:
    return labels_dir(export_dir) / "accounts" / account_key(account)


def _history(export_dir: str | os.PathLike, account: str) -> list[dict]:
    path = _account_dir(export_dir, account) / "history.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: {err}") from err


def _snapshot(export_dir: str | os.PathLike, until: int) -> tuple[int, dict[str, str]]:
    """The latest snapshot of live versions at or before ``until``: (its generation, the paths)."""
    number = until // SNAPSHOT_EVERY * SNAPSHOT_EVERY
    while number > 0:
        path = labels_dir(export_dir) / "log" / f"live-{generation_name(number)}.json"
        if path.exists():
            return number, json.loads(path.read_text())["accounts"]
        number -= SNAPSHOT_EVERY
    return 0, {}


def _set_current(root: Path, name: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "CURRENT", name + "\n")


def _write_atomic(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}-{os.getpid()}")
    scratch.write_text(text)
    os.replace(scratch, path)


def _versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name)))


def _prune(export_dir: str | os.PathLike, account: str, generation: int) -> None:
    """Keep the live version and the ones it replaced, ``KEEP_VERSIONS`` in all; drop the rest
    (older ones, rolled-back ones, and versions of a write that never went live)."""
    history = _history(export_dir, account)
    parents = {e["path"]: e["parent"] for e in history}
    entry = live_entry(export_dir, account, generation)
    keep, path = set(), entry["path"] if entry else None
    while path not in (None, BASE) and len(keep) < KEEP_VERSIONS:
        keep.add(path.rsplit("/", 1)[1])
        path = parents.get(path)
    folder = _account_dir(export_dir, account)
    for number in _versions(folder):
        if f"v{number:06d}" not in keep:
            shutil.rmtree(folder / f"v{number:06d}", ignore_errors=True)
