"""Label updates against a running API under load: how soon is each one live, does any request fail?

    python -m bench.label_update [export_dir=DIR] [updates=10] [rate=100]

A scratch registry with a copy of the export (by default the model promoted in ``registry/``) is
served by ``python -m tagger.serving`` (admin token set) while another process sends
real held-out tickets at ``--rate`` requests/s. Two kinds of update alternate:

- through the endpoint (``POST /admin/labels``): the time until the response, then until
  ``GET /accounts/{id}/labels`` shows the change;
- from another process (what ``python -m tagger.serving.admin`` does): the time from the change
  being committed to the registry until the server's ``/health`` reports it.

Each update adds a label to a merchant (with a few of its real tickets as examples), renames one or
retires the one added before. Writes results/benchmarks/label_update.md (and .json).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.config import bench_config, write_figures
from bench.load import seconds_until, start_load, summarise_load
from bench.machine import machine_description
from bench.servers import admin_server, promoted_export
from bench.serving import request_bodies
from tagger.model.label_update import LabelUpdate
from tagger.paths import resolve, shown
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.registry import Registry


def run(export_dir: Path, n_updates: int, rate: float, tickets: int) -> dict:
    """Serve a copy of ``export_dir``, drive it at ``rate`` and apply ``n_updates`` label updates."""
    import httpx

    bodies = request_bodies(export_dir, tickets)
    examples = [b for b in bodies if b["email_sentence_embeddings"]][:5]
    accounts = sorted({b["account_id"] for b in bodies})
    rng = np.random.default_rng(0)
    endpoint, other = [], []
    with admin_server(export_dir) as (_, url, served, auth), httpx.Client(timeout=30) as client:
        writer = Registry(served)  # another writer of the same registry, as the command is
        embed = NameEncoder(writer.model_dir(writer.served()[1])).embed
        seconds = max(10.0, n_updates * 1.5 + 4)
        proc, queue = start_load(f"{url}/predict", bodies, rate, seconds, 8)
        time.sleep(2.0)
        for i in range(n_updates):
            account = accounts[int(rng.integers(len(accounts)))]
            label = f"Benchmark label {i}"
            if i % 2 == 0:  # through the endpoint, with examples
                body = {
                    "account_id": account,
                    "add": [label],
                    "examples": [
                        {"label": label, "email_sentence_embeddings": e["email_sentence_embeddings"]}
                        for e in examples
                    ],
                }
                t0 = time.perf_counter()
                r = client.post(f"{url}/admin/labels", json=body, headers=auth)
                answered = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"update refused: {r.status_code} {r.text}")
                live = seconds_until(
                    lambda a=account, lab=label: (
                        lab in {x["label"] for x in client.get(f"{url}/accounts/{a}/labels").json()["labels"]}
                    )
                )
                endpoint.append(
                    {
                        "response_s": answered,
                        "live_after_response_s": live,
                        "server_s": r.json()["seconds"],
                    }
                )
            else:  # from another process, as the command does
                t0 = time.perf_counter()
                result = writer.update(LabelUpdate(account, add=[label]), "benchmark", embed)
                written = time.perf_counter()
                live = seconds_until(
                    lambda g=result["generation"]: client.get(f"{url}/health").json()["label_generation"] == g
                )
                other.append({"write_s": written - t0, "live_after_write_s": live})
            time.sleep(0.5)
        load = summarise_load(queue.get())
        proc.join()

    def stats(rows: list[dict], key: str) -> dict:
        values = [r[key] * 1000 for r in rows]
        return {"n": len(values), "median_ms": float(np.median(values)), "max_ms": float(np.max(values))}

    return {
        "export_dir": shown(export_dir),
        "machine": machine_description(),
        "rate": rate,
        "updates": n_updates,
        "endpoint": {k: stats(endpoint, k) for k in ("response_s", "live_after_response_s", "server_s")},
        "other_process": {k: stats(other, k) for k in ("write_s", "live_after_write_s")},
        "load": load,
    }


def _markdown(f: dict) -> str:
    e, o, load = f["endpoint"], f["other_process"], f["load"]
    worst = max(
        e["response_s"]["max_ms"] + e["live_after_response_s"]["max_ms"],
        o["write_s"]["max_ms"] + o["live_after_write_s"]["max_ms"],
    )
    return "\n".join(
        [
            "# Label updates under load",
            "",
            f"Machine: {f['machine']}.",
            f"Export: `{f['export_dir']}` (a copy is served and changed). {f['updates']} updates while "
            f"another process sends real held-out tickets at {f['rate']:g} req/s.",
            "",
            "| path | step | n | median ms | max ms |",
            "|---|---|---:|---:|---:|",
            *(
                f"| {path} | {step} | {x['n']} | {x['median_ms']:.1f} | {x['max_ms']:.1f} |"
                for path, step, x in (
                    (
                        "endpoint",
                        "request to response (embed, fold in 5 examples, write, reload)",
                        e["response_s"],
                    ),
                    ("endpoint", "of which inside the server", e["server_s"]),
                    (
                        "endpoint",
                        "response to visible in GET /accounts/{id}/labels",
                        e["live_after_response_s"],
                    ),
                    ("other process", "write the generation (embed the name, write)", o["write_s"]),
                    ("other process", "written to live in the server's /health", o["live_after_write_s"]),
                )
            ),
            "",
            f"Worst case from the start of an update to it being live: {worst:.0f} ms (goal: < 1,000 ms).",
            "",
            f"Load during the updates: {load['requests']:,} requests, {load['errors']} failed "
            f"(statuses {load['statuses']}), p50 {load['p50']:.2f} ms, p99 {load['p99']:.2f} ms.",
            "",
            "Reproduce: `python -m bench.label_update`.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    cfg = bench_config("label_update", argv, __doc__)
    export_dir = resolve(cfg.export_dir) if cfg.export_dir else promoted_export(cfg.get("registry_dir"))
    figures = run(export_dir, int(cfg.updates), float(cfg.rate), int(cfg.tickets))
    write_figures(cfg.out_dir, "label_update", figures, _markdown(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
