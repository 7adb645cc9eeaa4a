"""Load and soak: the API (``python -m tagger.serving``, a copy of the export, admin token set) under
real held-out tickets at a fixed rate from another process for many minutes, with label updates
through the admin endpoint at a fixed interval; latency per time window, errors, resident memory.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from bench.load import percentiles, start_load, summarise_load
from bench.machine import machine_description
from bench.servers import admin_server
from bench.servers import tree_rss_mb as rss_mb
from bench.serving import request_bodies
from tagger.paths import shown


def soak(
    export_dir: Path,
    minutes: float = 10.0,
    rate: float = 100.0,
    update_every_s: float = 20.0,
    warmup_s: float = 60.0,
    window_s: float = 30.0,
    tickets: int = 2000,
) -> dict:
    """Run the soak; returns its figures (windows, updates, memory samples, totals)."""
    import httpx

    bodies = request_bodies(export_dir, tickets)
    examples = [b["email_sentence_embeddings"] for b in bodies if b["email_sentence_embeddings"]][:3]
    accounts = sorted({b["account_id"] for b in bodies})
    seconds = minutes * 60
    memory: list[tuple[float, float]] = []
    with admin_server(export_dir) as (server, url, _, auth), httpx.Client(timeout=30) as client:
        rss_ready = rss_mb(server.pid)
        proc, queue = start_load(f"{url}/predict", bodies, rate, warmup_s, 8)
        warmup = summarise_load(queue.get())
        proc.join()
        rss_start = rss_mb(server.pid)
        proc, queue = start_load(f"{url}/predict", bodies, rate, seconds, 8)
        started = time.monotonic() + 0.2  # the load process starts its clock 0.2 s in
        stop = threading.Event()

        def sample_memory() -> None:
            while not stop.is_set():
                memory.append((time.monotonic() - started, rss_mb(server.pid)))
                stop.wait(10.0)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        updates = _label_updates(client, url, auth, accounts, examples, started, seconds, update_every_s)
        got = queue.get()
        proc.join()
        stop.set()
        sampler.join()
        rss_end = rss_mb(server.pid)

    windows, near_update = _windows(got, seconds, window_s, updates)
    ms = np.asarray(got["latencies"])
    return {
        "machine": machine_description(),
        "export_dir": shown(export_dir),
        "minutes": minutes,
        "rate": rate,
        "update_every_s": update_every_s,
        "window_s": window_s,
        "warmup": warmup,
        "overall": summarise_load(got),
        "within_1s_of_an_update": {
            "requests": int(near_update.sum()),
            **percentiles(ms[near_update].tolist()),
        },
        "windows": windows,
        "updates": updates,
        "memory_mb": {
            "ready": rss_ready,
            "after_warmup": rss_start,
            "end": rss_end,
            "growth_pct": 100 * (rss_end / rss_start - 1),
            "samples": memory,
        },
    }


def _label_updates(client, url, auth, accounts, examples, started, seconds, update_every_s) -> list[dict]:
    """Every ``update_every_s`` seconds a label update through the admin endpoint, in turn: a new
    label with three examples, then that label retired (the table keeps its size); each timed."""
    updates, added = [], {}
    i = 0
    while time.monotonic() - started < seconds - update_every_s / 2:
        time.sleep(max(0.0, started + (i + 1) * update_every_s - time.monotonic()))
        account = accounts[(i // 2) % len(accounts)]  # add a label, then retire it
        if account in added:  # retire what was added last time: the table stays the same size
            body = {"account_id": account, "retire": [added.pop(account)]}
        else:
            label = f"Soak label {i}"
            added[account] = label
            body = {
                "account_id": account,
                "add": [label],
                "examples": [{"label": label, "email_sentence_embeddings": e} for e in examples],
            }
        t0 = time.monotonic()
        r = client.post(f"{url}/admin/labels", json=body, headers=auth)
        updates.append(
            {
                "at_s": t0 - started,
                "status": r.status_code,
                "ms": (time.monotonic() - t0) * 1000,
                "kind": "retire" if "retire" in body else "add + 3 examples",
            }
        )
        i += 1
    return updates


def _windows(
    got: dict, seconds: float, window_s: float, updates: list[dict]
) -> tuple[list[dict], np.ndarray]:
    """Latency and errors per ``window_s`` of the load, and which requests came within 1 s of an update."""
    sent = np.asarray(got["sent"])
    ms = np.asarray(got["latencies"])
    codes = np.asarray(got["codes"])
    windows = []
    for start in np.arange(0, seconds, window_s):
        sel = (sent >= start) & (sent < start + window_s)
        windows.append(
            {
                "start_s": float(start),
                "requests": int(sel.sum()),
                "errors": int((codes[sel] != 200).sum()),
                **percentiles(ms[sel].tolist()),
            }
        )
    near_update = np.zeros(len(sent), bool)
    for u in updates:
        near_update |= (sent >= u["at_s"]) & (sent < u["at_s"] + 1.0)
    return windows, near_update


def plot(result: dict, out: Path) -> None:
    """soak.png: p50 / p99 per window with the updates marked, and resident memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result["windows"]
    t = [x["start_s"] / 60 for x in w]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(t, [x["p50"] for x in w], marker=".", label="p50")
    a.plot(t, [x["p99"] for x in w], marker=".", label="p99")
    a.axhline(20, color="grey", ls="--", lw=0.8, label="p99 goal (20 ms)")
    for u in result["updates"]:
        a.axvline(u["at_s"] / 60, color="tab:red", alpha=0.15, lw=0.8)
    a.set(
        ylabel="latency (ms)",
        title=f"Soak: {result['rate']:g} req/s, label updates (red) every {result['update_every_s']:g} s",
    )
    a.legend(fontsize=8)
    samples = result["memory_mb"]["samples"]
    b.plot([s[0] / 60 for s in samples], [s[1] for s in samples], marker=".")
    b.set(xlabel="minutes", ylabel="server RSS (MB)")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    plt.close(fig)


def markdown(r: dict) -> list[str]:
    """The soak section of results/reliability.md."""
    o, m, near = r["overall"], r["memory_mb"], r["within_1s_of_an_update"]
    ok_updates = sum(u["status"] == 200 for u in r["updates"])
    update_ms = [u["ms"] for u in r["updates"]]
    worst = max(r["windows"], key=lambda x: x["p99"] or 0)
    lines = [
        f"{r['minutes']:g} minutes at {r['rate']:g} req/s of real held-out tickets over loopback "
        f"(after a {r['warmup']['requests']:,}-request warm-up), a label update through "
        f"`POST /admin/labels` every {r['update_every_s']:g} s (alternately: add a label with 3 example "
        f"tickets, retire it).",
        "",
        f"- requests: {o['requests']:,}, failed: **{o['errors']}** (statuses {o['statuses']})",
        f"- latency over the whole soak: p50 {o['p50']:.2f} ms, p95 {o['p95']:.2f} ms, "
        f"**p99 {o['p99']:.2f} ms** (goal < 20 ms); worst {r['window_s']:g}-s window: p99 "
        f"{worst['p99']:.2f} ms (window starting at {worst['start_s'] / 60:.1f} min)",
        f"- requests due within 1 s after an update started: {near['requests']:,}, p50 {near['p50']:.2f} ms, "
        f"p99 {near['p99']:.2f} ms",
        f"- label updates: {len(r['updates'])}, answered 200: {ok_updates}, median "
        f"{np.median(update_ms):.0f} ms, max {max(update_ms):.0f} ms",
        f"- server resident memory: {m['ready']:.0f} MB ready, {m['after_warmup']:.0f} MB after the warm-up, "
        f"{m['end']:.0f} MB at the end: **{m['growth_pct']:+.1f}%** (goal: growth under 5%)",
        "",
        "| minute | requests | errors | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for x in r["windows"]:
        lines.append(
            f"| {x['start_s'] / 60:.1f} | {x['requests']:,} | {x['errors']} "
            f"| {x['p50']:.2f} | {x['p99']:.2f} |"
        )
    lines += ["", "![soak](reliability/soak.png)"]
    return lines


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(result, out)
