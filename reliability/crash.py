"""Crash test of the registry: a writer process does label updates and promotions without pause and
is killed with SIGKILL at a random instant, again and again; after each kill, what a restarted
server would serve is checked to be exactly one committed state, with every acknowledged change.

After each kill point (a fresh :class:`Registry`, as a restarted server opens it):
- SQLite's ``integrity_check`` is ok;
- the promoted model is registered and its export directory passes its manifest;
- a server starts (:class:`tagger.serving.live.Live`) with no merchant quarantined;
- every acknowledged update is in the change log and every acknowledged promotion is recorded;
- for every merchant with changes, the served model's row is at its latest change (nothing
  committed without its labels), and equals the replay of its change log onto the served model.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from tagger.manifest import verify
from tagger.model.label_update import LabelUpdate
from tagger.serving.onnx_predictor import EXPORT_FILES
from tagger.serving.registry import Registry


def _name_embeddings(texts: list[str]) -> np.ndarray:
    """A fixed unit vector per label name (the writer needs no text encoder to be killed)."""
    out = []
    for text in texts:
        v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=384).astype(np.float32)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def writer(root: str, versions: list[str], accounts: list[str], log_path: str, seed: int) -> None:
    """Label updates and promotions without end (until killed); each acknowledged one is logged
    after the call returned, each begun one before it starts."""
    registry = Registry(root)
    for version in versions:  # loaded before the kill clock starts
        registry.model(version)
    rng = random.Random(seed)
    with open(log_path, "a", buffering=1) as log:
        log.write("ready\n")
        n = 0
        while True:
            n += 1
            if rng.random() < 0.2:
                served = registry.served()[1]
                target = next(v for v in versions if v != served)
                log.write(f"begin promote {target}\n")
                registry.promote(target, by="crash-test")
                log.write(f"acked promote {target}\n")
                continue
            account, key = rng.choice(accounts), f"{seed}-{n}"
            labels = registry.labels_of(registry.served()[1], account)  # one row: cheap between writes
            mine = [x for x in labels.labels if x.startswith("Crash ")]
            if mine and rng.random() < 0.5:
                update = LabelUpdate(account, retire=[rng.choice(mine)])
            elif mine and rng.random() < 0.3:
                update = LabelUpdate(account, rename={mine[0]: f"Crash {key} renamed"})
            else:
                update = LabelUpdate(account, add=[f"Crash {key}"])
            log.write(f"begin update {key}\n")
            registry.update(update, "crash-test", _name_embeddings, key=key)
            log.write(f"acked update {key}\n")


def check(root: Path, acked_updates: set[str], acked_promotions: int, deep: bool) -> list[str]:
    """What is wrong with the registry at ``root`` as a restarted server finds it (empty: nothing)."""
    from tagger.serving.live import Live

    problems = []
    with sqlite3.connect(root / "registry.sqlite") as db:
        if (status := db.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {status}")
    registry = Registry(root)
    try:
        version = registry.served()[1]
        verify(registry.model_dir(version), EXPORT_FILES)
        live = Live(registry)
        if live.quarantined:
            problems.append(f"quarantined at start-up: {live.quarantined}")
        db = registry.db
        keys = {
            k for (k,) in db.execute("SELECT idempotency_key FROM changes WHERE idempotency_key IS NOT NULL")
        }
        if lost := acked_updates - keys:
            problems.append(f"{len(lost)} acknowledged updates lost: {sorted(lost)[:5]}")
        promotions = db.execute("SELECT count(*) FROM promotions WHERE by='crash-test'").fetchone()[0]
        if promotions < acked_promotions:
            problems.append(f"{acked_promotions - promotions} acknowledged promotions lost")
        view = live.current.predictor.view
        for (account,) in db.execute("SELECT DISTINCT account FROM changes").fetchall():
            last = db.execute("SELECT max(seq) FROM changes WHERE account=?", (account,)).fetchone()[0]
            row = db.execute(
                "SELECT max(seq) FROM label_rows WHERE model=? AND account=?", (version, account)
            ).fetchone()[0]
            if row != last:
                problems.append(f"{account}: served row at change {row}, its last change is {last}")
            if deep:
                expected = registry.replayed(version, account)
                served = view.labels_of(account)
                if expected.labels != served.labels or not np.allclose(
                    expected.vectors, served.vectors, atol=1e-5
                ):
                    problems.append(f"{account}: served labels differ from the replay of its change log")
    finally:
        registry.close()
    return problems


def run_crash(
    root: Path, versions: list[str], points: int = 100, seed: int = 0, max_delay: float = 0.3
) -> dict:
    """Kill the writer ``points`` times at random instants (up to ``max_delay`` s after it is ready)
    and check the registry after each; returns the figures."""
    registry = Registry(root)
    accounts = sorted(registry.label_view(registry.served()[1])[0].state.accounts)[:3]
    registry.close()
    rng = random.Random(seed)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tagger.serving.registry"])
    acked_updates: set[str] = set()
    acked_promotions = 0
    during: Counter = Counter()
    failures = []
    started = time.perf_counter()
    log_path = root / "crash-writer.log"
    for point in range(points):
        log_path.write_text("")
        child = context.Process(
            target=writer,
            args=(str(root), versions, accounts, str(log_path), seed * 10_000 + point),
            daemon=True,
        )
        child.start()
        deadline = time.monotonic() + 60
        while "ready" not in log_path.read_text():
            if time.monotonic() > deadline or not child.is_alive():
                raise RuntimeError(f"the crash writer did not start (exit code {child.exitcode})")
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        lines = log_path.read_text().splitlines()
        for line in lines:
            if line.startswith("acked update "):
                acked_updates.add(line.split()[-1])
            elif line.startswith("acked promote "):
                acked_promotions += 1
        last = lines[-1] if lines else ""
        during[
            "update"
            if last.startswith("begin update")
            else "promote"
            if last.startswith("begin promote")
            else "between operations"
        ] += 1
        problems = check(root, acked_updates, acked_promotions, deep=point % 10 == 9 or point == points - 1)
        if problems:
            failures.append({"point": point, "killed": last, "problems": problems})
    log_path.unlink(missing_ok=True)
    with sqlite3.connect(root / "registry.sqlite") as db:
        changes = db.execute("SELECT count(*) FROM changes").fetchone()[0]
    return {
        "points": points,
        "recovered": points - len(failures),
        "killed_during": dict(during),
        "acknowledged_updates": len(acked_updates),
        "acknowledged_promotions": acked_promotions,
        "changes_committed": changes,
        "acknowledged_lost": sum("acknowledged" in p for f in failures for p in f["problems"]),
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> list[str]:
    """The crash test's figures for results/reliability.md."""
    lines = [
        f"`python -m reliability crash crash_points={result['points']}` (export "
        f"`{result.get('export_dir', '-')}`, two versions of it in a scratch registry), "
        f"{result['seconds']:.0f} s: **{result['recovered']} of {result['points']} kill points recovered "
        f"to a committed state; {result['acknowledged_lost']} acknowledged changes lost**.",
        "",
        "- Killed during: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["killed_during"].items()))
        + " (between: reading what to change next).",
        f"- Acknowledged: {result['acknowledged_updates']} label updates, "
        f"{result['acknowledged_promotions']} promotions; {result['changes_committed']} changes "
        "committed in all (committed but not yet acknowledged when killed: the difference).",
        "- After each kill: SQLite integrity_check, the promoted export's manifest, a server start with no "
        "merchant quarantined, every acknowledged change present, every merchant's served row at its "
        "last change (and, every tenth point, equal to the replay of its change log).",
    ]
    for failure in result["failures"]:
        lines.append(
            f"- **Point {failure['point']}** ({failure['killed']}): {'; '.join(failure['problems'])}"
        )
    return lines
