"""Promotions and label changes against a running API under load: does any request fail, how long
does a promote or a label change take, how soon does the server serve it?

    python -m bench.lifecycle [model_dir=DIR] [rate=100] [promotions=6] [updates=10]

A scratch registry gets two model versions (the trained model of ``model_dir``, newest by default,
exported twice: at opset 17 and at opset 18, so two versions with their own ``model.onnx``; the
server swaps sessions, labels and scorer exactly as for two trainings) and ``seed_changes`` label
changes spread over merchants (what every promotion replays). One uvicorn worker serves it while
another process sends real held-out tickets at ``rate`` requests/s. Meanwhile promotions (through
``POST /admin/promote``, alternating between the two versions) and label changes (``POST
/admin/labels``) take turns: each is timed to its answer and until ``/health`` or
``/accounts/{id}/labels`` shows it. Writes results/benchmarks/lifecycle.md (and .json).
"""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.config import bench_config, write_figures
from bench.load import seconds_until, start_load, summarise_load
from bench.machine import machine_description
from bench.servers import free_port, server_process
from bench.serving import request_bodies
from tagger.paths import resolve, shown

TOKEN = secrets.token_hex(16)  # 32 characters: shorter ones refuse to start


def _registry(model_dir: Path, root: Path, seed_changes: int) -> tuple[list[str], list[str]]:
    """Two versions of the model registered under ``root`` (the first promoted) and
    ``seed_changes`` label changes; returns (versions, the merchants)."""
    from tagger.model.label_update import LabelUpdate
    from tagger.serving.name_encoder import NameEncoder
    from tagger.serving.onnx_export import export_model
    from tagger.serving.registry import Registry

    registry = Registry(root / "registry")
    versions = []
    for opset in (17, 18):
        out = root / f"export-{opset}"
        export_model(model_dir, out, opset=opset, parity_tickets=200)
        versions.append(registry.register(out, by="bench", move=True)[0])
    registry.promote(versions[0], by="bench")
    embed = NameEncoder(registry.model_dir(versions[0])).embed
    accounts = sorted(registry.label_view(versions[0])[0].state.accounts)
    for i in range(seed_changes):
        update = LabelUpdate(accounts[i % len(accounts)], add=[f"Seeded reason {i}"])
        registry.update(update, "bench", embed)
    registry.close()
    return versions, accounts


def _workers(url: str, n: int) -> set[int]:
    """The pids of the server's ``n`` workers (a fresh connection each look: any worker may take it)."""
    seen: set[int] = set()
    for _ in range(500):
        seen.add(httpx.get(f"{url}/health").json()["worker"])
        if len(seen) == n:
            return seen
    raise RuntimeError(f"saw {len(seen)} of {n} workers")


def _everywhere(url: str, workers: set[int], done) -> float:
    """Seconds until every worker's ``/health`` satisfies ``done`` (fresh connections); inf after 30 s."""
    latest: dict[int, dict] = {}

    def check() -> bool:
        health = httpx.get(f"{url}/health").json()
        latest[health["worker"]] = health
        return set(latest) == workers and all(done(h) for h in latest.values())

    return seconds_until(check)


def run(
    model_dir: Path, rate: float, promotions: int, updates: int, seed_changes: int, tickets: int, workers: int
) -> dict:
    """Serve a scratch registry with ``workers`` workers under load and time ``promotions`` promotions
    and ``updates`` label changes, each until every worker serves it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        versions, accounts = _registry(model_dir, root, seed_changes)
        registry_dir = root / "registry"
        from tagger.serving.registry import Registry

        bodies = request_bodies(Registry(registry_dir).model_dir(versions[0]), tickets)
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "tagger.serving",
            f"registry_dir={registry_dir}",
            f"port={port}",
            f"workers={workers}",
        ]
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}", "X-Changed-By": "bench"}
        promote_s, promote_live_s, update_s, update_live_s, notes = [], [], [], [], []
        steps = max(promotions, updates)
        seconds = 4.0 + steps * 3.0
        with server_process(command, port, {"TAGGER_ADMIN_TOKEN": TOKEN}), httpx.Client(timeout=60) as client:
            pids = _workers(url, workers)
            proc, queue = start_load(f"{url}/predict", bodies, rate, seconds, threads=8)
            time.sleep(2.0)
            for step in range(steps):
                if step < promotions:
                    target = versions[(step + 1) % 2]
                    t0 = time.perf_counter()
                    r = client.post(f"{url}/admin/promote", json={"model_version": target}, headers=auth)
                    promote_s.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    notes.append(r.json().get("merchants_carried"))
                    promote_live_s.append(
                        _everywhere(url, pids, lambda h, t=target: h["model_version"].startswith(t))
                    )
                time.sleep(0.5)
                if step < updates:
                    account, name = accounts[step % len(accounts)], f"Bench reason {step}"
                    t0 = time.perf_counter()
                    r = client.post(
                        f"{url}/admin/labels", json={"account_id": account, "add": [name]}, headers=auth
                    )
                    update_s.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    generation = r.json()["generation"]
                    update_live_s.append(
                        _everywhere(url, pids, lambda h, g=generation: h["label_generation"] >= g)
                    )
                time.sleep(0.5)
            got = queue.get(timeout=seconds + 60)
            proc.join()
    return {
        "machine": machine_description(),
        "model_dir": shown(model_dir),
        "versions": versions,
        "rate": rate,
        "seed_changes": seed_changes,
        "workers": workers,
        "merchants_carried": notes,
        "load": summarise_load(got),
        "promote_s": promote_s,
        "promote_live_s": promote_live_s,
        "update_s": update_s,
        "update_live_s": update_live_s,
        "command": f"python -m bench.lifecycle rate={rate:g} promotions={promotions} "
        f"updates={updates} workers={workers}",
    }


def report(f: dict) -> str:
    """results/benchmarks/lifecycle.md from the figures."""

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms (max {max(values) * 1000:.0f})" if values else "-"

    load = f["load"]
    return (
        "\n".join(
            [
                "# Promotions and label changes under load",
                "",
                f"`{f['command']}`, on {f['machine']}.",
                "",
                f"Model `{f['model_dir']}` exported twice (opset 17 and 18: two versions, each with its own",
                f"`model.onnx`), {f['workers']} uvicorn worker(s), {f['seed_changes']} label changes "
                "in the registry before",
                "the run (replayed by every promotion).",
                "",
                f"- Requests during the run: {load['requests']:,} at {f['rate']:g}/s; **failed (not 200): "
                f"{load['errors']}**; statuses {load['statuses']}; latency p50 {load['p50']:.1f} ms, "
                f"p95 {load['p95']:.1f} ms, p99 {load['p99']:.1f} ms.",
                f"- Promote ({len(f['promote_s'])}, median): answered in {ms(f['promote_s'])}; "
                f"served by every worker (each one's `/health` shows it) {ms(f['promote_live_s'])} "
                "after the answer.",
                f"- Label change ({len(f['update_s'])}, median): answered in {ms(f['update_s'])}; "
                f"served by every worker {ms(f['update_live_s'])} after the answer.",
                "",
                "A promotion is answered once the registry names the new model (every changed merchant",
                "replayed onto it) and the worker that took the request serves it; every other worker",
                "swaps within its `reload_interval` (0.25 s) plus the time to load the model in its label",
                "thread, between two requests (a request finishes on the model it started with).",
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``key=value`` overrides of conf/bench/lifecycle.yaml."""
    cfg = bench_config("lifecycle", argv, __doc__)
    if cfg.model_dir:
        model_dir = resolve(cfg.model_dir)
    else:
        candidates = sorted(resolve("models").glob("shared-*"))
        if not candidates:
            raise SystemExit("no trained model under models/: run `python train.py` first")
        model_dir = candidates[-1]
    figures = run(
        model_dir,
        float(cfg.rate),
        int(cfg.promotions),
        int(cfg.updates),
        int(cfg.seed_changes),
        int(cfg.tickets),
        int(cfg.workers),
    )
    write_figures(cfg.out_dir, "lifecycle", figures, report(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
