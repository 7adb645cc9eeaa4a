"""Serving benchmark: the HTTP API under fixed request rates from a separate process, plus
in-process ONNX Runtime and PyTorch eager latencies, on real held-out tickets.

    python -m tagger.bench.serving [--export-dir DIR] [--seconds 10] [--rates 10 100 300]

Writes results/benchmarks/serving.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tagger.bench.machine import machine_description
from tagger.data.splits import cutoff_seconds
from tagger.paths import PROJECT_ROOT, latest_export
from tagger.serving.label_store import read_generation


def request_bodies(export_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` real held-out tickets as API request bodies (the embeddings JSON string as in the parquet)."""
    serving = json.loads((export_dir / "serving.json").read_text())
    data = json.loads((Path(serving["model_dir"]) / "data.json").read_text())
    table = pq.read_table(data["file"], columns=["account_id", "unix_timestamp", "email_sentence_embeddings"])
    cutoff = cutoff_seconds(data["split"])
    rows = np.flatnonzero(table.column("unix_timestamp").to_numpy() >= cutoff)
    known = set(read_generation(export_dir)[1].accounts)
    accounts = table.column("account_id").to_pylist()
    rows = [r for r in rows if accounts[r] in known]
    pick = np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False)
    texts = table.column("email_sentence_embeddings").take(pick).to_pylist()
    return [
        {"account_id": accounts[r], "email_sentence_embeddings": t} for r, t in zip(pick, texts, strict=True)
    ]


def percentiles(ms: list[float]) -> dict:
    """p50, p95 and p99 of latencies in milliseconds (None for none)."""
    if not ms:
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(ms)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
    }


def in_process(export_dir: Path, bodies: list[dict], repeats: int = 500) -> dict:
    """Latency of the ONNX predictor and of PyTorch eager on the same tickets, single and batched."""
    from tagger.serving.limits import Limits
    from tagger.serving.onnx_predictor import OnnxPredictor
    from tagger.serving.request_path import ticket_vectors

    predictor = OnnxPredictor(export_dir)
    from tagger.data.tickets import Tickets

    accounts = [b["account_id"] for b in bodies]
    no_cap = Limits(max_sentences=10_000)
    vectors = [ticket_vectors(b["email_sentence_embeddings"], "", no_cap) for b in bodies]
    tickets = [Tickets.from_vectors([a], [v]) for a, v in zip(accounts, vectors, strict=True)]
    out = {}

    def timed(fn, items) -> dict:
        ms = []
        for i in range(repeats):
            item = items[i % len(items)]
            t0 = time.perf_counter()
            fn(item)
            ms.append((time.perf_counter() - t0) * 1000)
        return {**percentiles(ms), "mean": statistics.mean(ms)}

    batches = {
        size: [
            Tickets.from_vectors(accounts[i : i + size], vectors[i : i + size])
            for i in range(0, len(tickets) - size + 1, size)
        ]
        for size in (32, 256)
        if len(tickets) >= size
    }
    out["onnx single ticket"] = timed(predictor.predict, tickets)
    for size, items in batches.items():
        out[f"onnx batch of {size}"] = timed(predictor.predict, items[: max(1, repeats // size)] or items)
    import torch

    from tagger.model.artifacts import load_shared

    torch.set_num_threads(1)
    estimator = load_shared(json.loads((export_dir / "serving.json").read_text())["model_dir"])
    out["pytorch eager single ticket"] = timed(estimator.predict, tickets)
    for size, items in batches.items():
        out[f"pytorch eager batch of {size}"] = timed(
            estimator.predict, items[: max(1, repeats // size)] or items
        )
    return out


def _load(url: str, bodies: list[dict], rate: float | None, seconds: float, threads: int, queue) -> None:
    """Runs in its own process: an open loop at ``rate`` requests/s (None: closed loop, at full speed)."""
    import httpx

    latencies, sent, codes, errors, statuses = [], [], [], 0, {}
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    counter = iter(range(10**9))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=10.0) as client:
            while True:
                with lock:
                    i = next(counter)
                due = start + (i / rate if rate else 0.0)
                if due - start > seconds or (rate is None and time.perf_counter() - start > seconds):
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                try:
                    r = client.post(url, json=bodies[i % len(bodies)])
                    code = r.status_code
                except httpx.HTTPError:
                    code = -1
                # latency counted from when the request was due: queueing behind the server counts
                ms = (time.perf_counter() - (due if rate else t0)) * 1000
                with lock:
                    latencies.append(ms)
                    sent.append((due if rate else t0) - start)
                    codes.append(code)
                    statuses[code] = statuses.get(code, 0) + 1
                    if code != 200:
                        errors += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put(
        {
            "latencies": latencies,
            "sent": sent,  # seconds from the start at which each request was due
            "codes": codes,
            "errors": errors,
            "statuses": statuses,
            "seconds": time.perf_counter() - start,
        }
    )


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@contextmanager
def api_server(export_dir: Path, **env):
    """The API (``python -m tagger.serving``) on a free loopback port, as a separate process;
    yields (process, url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tagger.serving", f"export_dir={export_dir}", f"port={port}"],
        env={**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the API did not start")
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def admin_server(export_dir: Path):
    """A copy of ``export_dir`` served with a random admin token (label updates change the copy only);
    yields (process, url, the served copy, the Authorization header)."""
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="tagger-served-") as work:
        served = Path(work) / "onnx"
        shutil.copytree(export_dir, served)
        with api_server(served, TAGGER_ADMIN_TOKEN=token) as (server, url):
            yield server, url, served, {"Authorization": f"Bearer {token}"}


def start_load(url: str, bodies: list[dict], rate: float | None, seconds: float, threads: int):
    """A load process driving ``url``; returns (process, queue): ``queue.get()`` gives its figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(url, bodies, rate, seconds, threads, queue))
    proc.start()
    return proc, queue


def http(export_dir: Path, bodies: list[dict], rates: list[float], seconds: float) -> dict:
    """Start the API with uvicorn, drive it from another process, stop it."""
    with api_server(export_dir) as (server, url):
        results = {"rss_mb_start": rss_mb(server.pid)}
        for rate in [*rates, None]:
            threads = max(4, min(32, int((rate or 0) / 20) + 4)) if rate else 8
            proc, queue = start_load(f"{url}/predict", bodies, rate, seconds, threads)
            got = queue.get()
            proc.join()
            name = f"{rate:g} req/s" if rate else "max throughput (8 connections)"
            results[name] = summarise_load(got)
        results["rss_mb_end"] = rss_mb(server.pid)
        return results


def summarise_load(got: dict) -> dict:
    """Percentiles, counts and statuses of one load run."""
    return {
        **percentiles(got["latencies"]),
        "requests": len(got["latencies"]),
        "throughput": len(got["latencies"]) / got["seconds"],
        "errors": got["errors"],
        "statuses": {str(k): v for k, v in got["statuses"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m tagger.bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--export-dir", type=Path, default=None)
    parser.add_argument("--tickets", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per request rate")
    parser.add_argument("--rates", type=float, nargs="*", default=[10, 100, 300])
    parser.add_argument("--out-dir", type=Path, default=PROJECT_ROOT / "results" / "benchmarks")
    args = parser.parse_args(argv)
    export_dir = args.export_dir or latest_export()
    bodies = request_bodies(export_dir, args.tickets)
    figures = {
        "export_dir": str(export_dir),
        "machine": machine_description(),
        "tickets": len(bodies),
        "in_process": in_process(export_dir, bodies),
        "http": http(export_dir, bodies, args.rates, args.seconds),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "serving.json").write_text(json.dumps(figures, indent=2))
    (args.out_dir / "serving.md").write_text(_markdown(figures, args.seconds))
    print(_markdown(figures, args.seconds))
    return 0


def _markdown(f: dict, seconds: float) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {f['machine']}.",
        f"Export: `{f['export_dir']}`; "
        f"{f['tickets']:,} real held-out tickets (the embeddings JSON as in the parquet, nulls included).",
        "Command: `python -m tagger.bench.serving`",
        "",
        "## In process",
        "",
        "| path | p50 ms | p95 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in f["in_process"].items():
        lines.append(f"| {name} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {r['mean']:.3f} |")
    h = f["http"]
    lines += [
        "",
        f"## HTTP (uvicorn, 1 worker, loopback; load from a separate process, {seconds:g} s per rate)",
        "",
        "Latency is counted from the moment a request was due, so queueing counts.",
        "",
        "| load | requests | throughput req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in h.items():
        if isinstance(r, dict):
            lines.append(
                f"| {name} | {r['requests']:,} | {r['throughput']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                f"{r['p99']:.2f} | {r['errors']} |"
            )
    lines += [
        "",
        f"Server resident memory: {h['rss_mb_start']:.0f} MB after start, "
        f"{h['rss_mb_end']:.0f} MB at the end.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
