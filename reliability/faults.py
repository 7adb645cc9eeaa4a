"""Fault cases, each run for real and recorded: broken registries and exports at start-up, damaged
label rows on a hot reload, corrupt ticket files, and a model save that fails half-way.

Expectations: a server never starts on a broken export, a registry with no promoted model or no
registry (one clear line, no traceback); a running server offered a damaged merchant row keeps that
merchant's last good labels, quarantines it (said by /health) and serves every other merchant; a
corrupt parquet gives a clear error or a quarantine report; a failed save leaves no model directory.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tagger.data.cache import load_tickets
from tagger.data.validation import SchemaError
from tagger.paths import shown
from tagger.serving.api import app_from_config, serve_config
from tagger.serving.label_store import encode_labels
from tagger.serving.registry import Registry


class CaseFailed(Exception):
    """A fault case whose expectation did not hold."""


def _expect(ok: bool, message: object) -> None:
    """Fail the running case with ``message`` unless ``ok`` (an ``assert`` would vanish under -O)."""
    if not ok:
        raise CaseFailed(str(message))


def _case(name: str, expectation: str, run: Callable[[], str]) -> dict:
    """Run one fault case: ``run`` returns what happened, raises :class:`CaseFailed` if it went wrong."""
    try:
        outcome, ok = run(), True
    except CaseFailed as err:
        outcome, ok = f"FAILED: {err}", False
    except Exception as err:  # a crash is a failed case, recorded with its type
        outcome, ok = f"CRASHED: {type(err).__name__}: {err} {traceback.format_exc(limit=2)}", False
    return {"case": name, "expectation": expectation, "outcome": outcome, "ok": ok}


# ---- start-up ------------------------------------------------------------------------------------
def _refuses_to_start(export_dir: Path) -> str:
    try:
        app_from_config(serve_config(), export_dir)
    except SystemExit as exit_:
        message = str(exit_.code)
        _expect("refuses to start" in message and "Traceback" not in message, message)
        return message
    raise CaseFailed("the server started")


def _truncate(name: str) -> Callable[[Path], None]:
    """Cut file ``name`` (below a directory given later) to half its length."""

    def go(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return go


def broken_exports(export_dir: Path) -> list[tuple[str, Callable[[Path], None]]]:
    """(name, what breaks a copy of the export) of every start-up case."""
    rel = "labels/base"

    def remove(name: str) -> Callable[[Path], None]:
        return lambda d: (d / name).unlink()

    def write(name: str, text: str) -> Callable[[Path], None]:
        return lambda d: (d / name).write_text(text)

    return [
        ("model.onnx missing", remove("model.onnx")),
        ("model.onnx truncated", _truncate("model.onnx")),
        ("label_tower.onnx truncated", _truncate("label_tower.onnx")),
        ("serving.json altered", write("serving.json", "{}")),
        ("manifest.json missing", remove("manifest.json")),
        ("model.onnx from another export (manifest mismatch)", write("model.onnx", "not this model")),
        ("label_vectors.npy truncated", _truncate(f"{rel}/label_vectors.npy")),
        ("labels.parquet altered", write(f"{rel}/labels.parquet", "{}")),
        ("label base manifest missing", remove(f"{rel}/manifest.json")),
        ("export directory missing", lambda d: shutil.rmtree(d)),
    ]


def _registry(export_dir: Path, root: Path) -> tuple[Registry, str]:
    """A registry at ``root`` serving a copy of ``export_dir``."""
    registry = Registry(root)
    version, _ = registry.register(export_dir, by="faults")
    registry.promote(version, by="faults")
    return registry, version


def startup_cases(export_dir: Path, tmp: Path) -> list[dict]:
    """The server refuses a registry whose promoted export is broken, or that serves nothing."""
    out = []
    for i, (name, breaker) in enumerate(broken_exports(export_dir)):
        registry, version = _registry(export_dir, tmp / f"startup-{i}")
        copy = registry.model_dir(version)
        for path in copy.rglob("*"):  # registered files are read-only: the fault writes them anyway
            path.chmod(0o755 if path.is_dir() else 0o644)
        breaker(copy)
        out.append(
            _case(
                f"start-up: {name}",
                "refuses to start with a clear message",
                lambda r=registry.root: _refuses_to_start(r),
            )
        )
    empty = tmp / "startup-empty"
    Registry(empty).register(export_dir, by="faults")
    out.append(_case("start-up: no model promoted", "refuses to start", lambda: _refuses_to_start(empty)))
    out.append(
        _case("start-up: no registry", "refuses to start", lambda: _refuses_to_start(tmp / "nothing-here"))
    )
    return out


# ---- hot reload -----------------------------------------------------------------------------------
FAULTS_TOKEN = "faults-token"


class _Unreadable:
    """A registry connection whose every statement fails with a disk I/O error while ``failing``:
    the registry file unreadable for a moment, as a flaky disk or network mount leaves it."""

    def __init__(self, db):
        self.db, self.failing = db, True

    def execute(self, *args, **kwargs):
        if self.failing:
            import sqlite3

            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.db, name)


def reload_cases(export_dir: Path, tmp: Path) -> list[dict]:
    """A running server offered a damaged merchant row keeps that merchant's last good labels,
    quarantines it (said by /health and /ready) and serves and updates every other merchant; a
    server that cannot read the registry for a moment says so (/ready 503), keeps serving and
    catches up once it can."""
    import sqlite3

    from fastapi.testclient import TestClient

    from tagger.model.label_update import LabelUpdate
    from tagger.serving.api import create_app
    from tagger.serving.name_encoder import NameEncoder

    auth = {"Authorization": f"Bearer {FAULTS_TOKEN}"}

    def serve(name: str):
        """A scratch registry, a server on it (looking at the registry before every request), a
        writer of the same registry (another process's), two of its merchants."""
        registry, version = _registry(export_dir, tmp / f"reload-{abs(hash(name))}")
        embed = NameEncoder(registry.model_dir(version)).embed
        app = create_app(registry.root, reload_interval=0.0, admin_token=FAULTS_TOKEN, embed=embed)
        account, other = sorted(registry.label_view(version)[0].state.accounts)[:2]
        return registry, TestClient(app, raise_server_exceptions=False), embed, account, other

    def labels(client, account: str) -> list[str]:
        r = client.get(f"/accounts/{account}/labels")
        _expect(r.status_code == 200, f"/accounts/{account}/labels answered {r.status_code}")
        return [x["label"] for x in r.json()["labels"]]

    def offer(name: str, damage: Callable[[bytes, str], tuple[bytes, str]]) -> str:
        registry, client, embed, account, other = serve(name)
        registry.update(LabelUpdate(account, add=["Fault good"]), "faults", embed)
        _expect("Fault good" in labels(client, account), "the first change was not served")
        seq = int(
            registry.update(LabelUpdate(account, add=["Fault damaged"]), "faults", embed)["generation"][1:]
        )
        with sqlite3.connect(registry.root / "registry.sqlite") as db:  # the row as a bad disk left it
            blob, sha = db.execute(
                "SELECT blob, sha FROM label_rows WHERE account=? AND seq=?", (account, seq)
            ).fetchone()
            db.execute(
                "UPDATE label_rows SET blob=?, sha=? WHERE account=? AND seq=?",
                (*damage(blob, sha), account, seq),
            )
        health = client.get("/health").json()
        _expect(health["quarantined"] == [account], f"quarantined: {health['quarantined']}")
        _expect(health["last_reload_error"] is None, f"last_reload_error: {health['last_reload_error']}")
        ready = client.get("/ready")
        _expect(ready.status_code == 200 and account in ready.json()["quarantined"], f"/ready: {ready.text}")
        served = labels(client, account)
        _expect("Fault good" in served and "Fault damaged" not in served, f"{account} serves {served}")
        for who in (account, other):
            r = client.post("/predict", json={"account_id": who, "email_sentence_embeddings": None})
            _expect(r.status_code == 200, f"/predict for {who} answered {r.status_code}")
        r = client.post("/admin/labels", json={"account_id": other, "add": ["Fault other"]}, headers=auth)
        _expect(r.status_code == 200, f"an update of {other} answered {r.status_code}: {r.text}")
        _expect("Fault other" in labels(client, other), f"the update of {other} is not served")
        _expect(client.get("/health").json()["quarantined"] == [account], "the quarantine did not hold")
        restarted = TestClient(create_app(registry.root, reload_interval=0.0), raise_server_exceptions=False)
        again = restarted.get("/health").json()["quarantined"]
        _expect(again == [account], f"a restarted server quarantined {again}")
        _expect(
            "Fault damaged" not in labels(restarted, account), "a restarted server serves the damaged row"
        )
        return (
            f"{account} quarantined with its last good labels, {other} served and updated; "
            f"a restarted server quarantines {account} too"
        )

    def unreadable(name: str) -> str:
        registry, client, embed, _, other = serve(name)
        live = client.app.state.service.live
        fault = _Unreadable(live.registry.db)
        live.registry.db = fault
        try:
            registry.update(LabelUpdate(other, add=["Fault later"]), "faults", embed)
            r = client.post("/predict", json={"account_id": other, "email_sentence_embeddings": None})
            _expect(
                r.status_code == 200, f"/predict answered {r.status_code} while the registry was unreadable"
            )
            ready = client.get("/ready")
            _expect(ready.status_code == 503, f"/ready answered {ready.status_code}")
            error = client.get("/health").json()["last_reload_error"]
            _expect(error is not None and "disk I/O error" in error, f"last_reload_error: {error}")
        finally:
            fault.failing = False
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:  # retried with a growing pause
            _expect(time.monotonic() < deadline, "never recovered")
            time.sleep(0.1)
        _expect("Fault later" in labels(client, other), "the change made meanwhile is not served")
        said = error.split(" (")[0]
        return f"/ready 503 ({said}), requests served; then recovered, the change made meanwhile served"

    def truncated(blob: bytes, sha: str) -> tuple[bytes, str]:
        return blob[: len(blob) // 2], sha

    def wrong_dimension(blob: bytes, sha: str) -> tuple[bytes, str]:
        from tagger.serving.label_store import decode_labels

        labels = decode_labels(blob, sha)
        return encode_labels(
            dataclasses.replace(labels, vectors=np.ascontiguousarray(labels.vectors[..., :10]))
        )

    cases = [
        ("a merchant's label row damaged after it was written (fails its SHA-256)", truncated),
        ("a merchant's label row of another model (wrong dimension, valid SHA-256)", wrong_dimension),
    ]
    out = [
        _case(
            f"hot reload: {name}",
            "that merchant quarantined with its last good labels, the others served and updated",
            lambda n=name, m=make: offer(n, m),
        )
        for name, make in cases
    ]
    name = "the registry unreadable for a moment (a disk I/O error on every read)"
    out.append(
        _case(
            f"hot reload: {name}",
            "/ready 503 and last_reload_error said, requests still served, then caught up",
            lambda: unreadable(name),
        )
    )
    return out


# ---- data ----------------------------------------------------------------------------------------
def data_cases(parquet: Path, tmp: Path) -> list[dict]:
    """Corrupt ticket files give a clear error or a quarantine report."""
    table = pq.read_table(parquet).slice(0, 500)
    good = tmp / "good.parquet"
    pq.write_table(table, good)
    raw = good.read_bytes()

    def clear_error(path: Path) -> str:
        try:
            load_tickets(path, cache_dir=tmp / "cache", progress=False)
        except SchemaError as err:
            _expect(bool(str(err)) and "Traceback" not in str(err), str(err))
            return f"SchemaError: {str(err)[:160]}"
        raise CaseFailed("loaded without an error")

    def quarantined(path: Path, expect: str) -> str:
        tickets = load_tickets(path, cache_dir=tmp / "cache", progress=False)
        counts = tickets.report.counts()
        _expect(any(expect in k for k in counts), counts)
        kept = len(tickets)
        return f"{kept} tickets kept, {tickets.report.n_quarantined} quarantined: {counts}"

    truncated = tmp / "truncated.parquet"
    truncated.write_bytes(raw[: len(raw) // 2])
    empty = tmp / "empty.parquet"
    empty.write_bytes(b"")
    wrong_types = tmp / "wrong_types.parquet"
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("unix_timestamp"),
            "unix_timestamp",
            pa.array(["yesterday"] * len(table)),
        ),
        wrong_types,
    )
    bad_json = tmp / "bad_json.parquet"
    texts = table.column("email_sentence_embeddings").to_pylist()
    broken = [t[: len(t) // 2] if t and i % 3 == 0 else t for i, t in enumerate(texts)]
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("email_sentence_embeddings"),
            "email_sentence_embeddings",
            pa.array(broken),
        ),
        bad_json,
    )
    no_column = tmp / "no_column.parquet"
    pq.write_table(table.drop_columns(["contact_reason"]), no_column)
    return [
        _case("parquet truncated half-way", "a clear error", lambda: clear_error(truncated)),
        _case("parquet empty (0 bytes)", "a clear error", lambda: clear_error(empty)),
        _case("a required column missing", "a clear error", lambda: clear_error(no_column)),
        _case(
            "timestamps of the wrong type (text)",
            "every row quarantined and named",
            lambda: quarantined(wrong_types, "unix_timestamp"),
        ),
        _case(
            "a third of the embeddings truncated JSON",
            "those rows quarantined, the rest kept",
            lambda: quarantined(bad_json, "malformed JSON"),
        ),
    ]


# ---- model save ----------------------------------------------------------------------------------
def save_cases(model_dir: Path, tmp: Path) -> list[dict]:
    """A save that fails half-way (disk full after the weights) leaves no model directory behind."""
    from unittest import mock

    from tagger.model.artifacts import load_shared, save_shared

    estimator = load_shared(model_dir)
    data = json.loads((model_dir / "data.json").read_text())
    out = tmp / "models"
    out.mkdir()

    def run() -> str:
        with mock.patch("numpy.save", side_effect=OSError(28, "No space left on device")):
            try:
                save_shared(estimator, out / "shared-partial", data=data, metrics={}, config_yaml="")
            except OSError as err:
                left = sorted(p.name for p in out.iterdir())
                _expect(not left, f"left behind: {left}")
                return f"save failed ({err}); {out} is empty"
        raise CaseFailed("the save did not fail")

    return [_case("model save fails after the weights are written", "no partial model directory", run)]


def run_faults(export_dir: Path, model_dir: Path | None, parquet: Path | None) -> dict:
    """Every fault case; returns {"cases": [...], "ok": n, "failed": n}."""
    tmp = Path(tempfile.mkdtemp(prefix="tagger-faults-"))
    export_dir = Path(export_dir)
    try:
        cases = startup_cases(export_dir, tmp) + reload_cases(export_dir, tmp)
        if parquet is not None:
            cases += data_cases(Path(parquet), tmp)
        if model_dir is not None:
            cases += save_cases(Path(model_dir), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for case in cases:  # results name no path of the machine they ran on
        outcome = case["outcome"].replace(str(tmp), "<tmp>")
        case["outcome"] = outcome.replace(str(export_dir), shown(export_dir))
    ok = sum(c["ok"] for c in cases)
    return {"cases": cases, "ok": ok, "failed": len(cases) - ok}


def markdown(result: dict) -> list[str]:
    lines = [
        f"{len(result['cases'])} fault cases: **{result['ok']} behaved as expected, "
        f"{result['failed']} did not**.",
        "",
        "| case | expected | what happened |",
        "|---|---|---|",
    ]
    for c in result["cases"]:
        outcome = c["outcome"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['case']} | {c['expectation']} | {'ok' if c['ok'] else '**FAILED**'}: {outcome} |")
    return lines


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(result, indent=2, default=str))
