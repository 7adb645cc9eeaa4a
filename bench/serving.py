"""Serving benchmark: the HTTP API on real held-out tickets, side by side in one run with the floors
it is measured against: a FastAPI app under the same server settings answering a constant (the floor
of an HTTP round trip on this machine) and the bare ONNX session call (the floor of the model).

    python -m bench.serving [export_dir=DIR] [compare_export_dir=DIR] [seconds=8] [repeats=3]

Measures the single-ticket round trip by sentence count for string and object embeddings, p50/p99
at fixed offered rates (open loop), the saturation throughput of 1 and 2 workers (closed loop), and
admission control at twice saturation, each beside the constant app; reports the API's ratios to
both floors and checks that 1 and 2 workers give the same answers. ``compare_export_dir``: another
export served by the same code beside it (e.g. one member of an ensemble). Writes
results/benchmarks/serving.md (and .json).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq

from bench.config import bench_config
from bench.load import http_request, percentiles, run_load, sequential
from bench.machine import machine_description
from bench.servers import (
    api_command,
    constant_app,
    free_port,
    promoted_export,
    server_process,
    tree_rss_mb,
)
from tagger.data.splits import cutoff_seconds
from tagger.serving.label_store import read_base


def request_bodies(export_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` real held-out tickets as API request bodies (the embeddings JSON string as in the parquet)."""
    serving = json.loads((export_dir / "serving.json").read_text())
    data = json.loads((Path(serving["model_dir"]) / "data.json").read_text())
    table = pq.read_table(data["file"], columns=["account_id", "unix_timestamp", "email_sentence_embeddings"])
    cutoff = cutoff_seconds(data["split"])
    rows = np.flatnonzero(table.column("unix_timestamp").to_numpy() >= cutoff)
    known = set(read_base(export_dir).accounts)
    accounts = table.column("account_id").to_pylist()
    rows = [r for r in rows if accounts[r] in known]
    pick = np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False)
    texts = table.column("email_sentence_embeddings").take(pick).to_pylist()
    return [
        {"account_id": accounts[r], "email_sentence_embeddings": t} for r, t in zip(pick, texts, strict=True)
    ]


BUCKETS = {"1": (1, 1), "2-3": (2, 3), "8-20": (8, 20), "50+": (50, 10**9)}


def n_sentences(body: dict) -> int:
    """Sentences of a request body's ticket (0 without embeddings)."""
    text = body["email_sentence_embeddings"]
    return len(orjson.loads(text)) if text else 0


def as_object(body: dict) -> dict:
    """The same ticket with its embeddings as a JSON object instead of a JSON string."""
    text = body["email_sentence_embeddings"]
    return {**body, "email_sentence_embeddings": orjson.loads(text) if text else None}


def encoded(bodies: list[dict]) -> list[bytes]:
    """``POST /predict`` requests of ``bodies``, as raw HTTP."""
    return [http_request("/predict", orjson.dumps(b)) for b in bodies]


def in_process(export_dir: Path, bodies: list[dict], repeats: int = 500) -> dict:
    """In-process latency of each layer on the same tickets: the bare ONNX session call, the ONNX
    predictor, the whole request path (parse, score, serialise), PyTorch eager; single and batched."""
    from tagger.data.tickets import Tickets
    from tagger.serving.limits import configured_limits
    from tagger.serving.onnx_predictor import OnnxPredictor
    from tagger.serving.request_path import RequestScorer, ticket_vectors

    predictor = OnnxPredictor(export_dir)
    no_cap = configured_limits(max_sentences=10_000)
    scorer = RequestScorer(predictor, no_cap)
    accounts = [b["account_id"] for b in bodies]
    vectors = [ticket_vectors(b["email_sentence_embeddings"], "", no_cap) for b in bodies]
    tickets = [Tickets.from_vectors([a], [v]) for a, v in zip(accounts, vectors, strict=True)]
    raw = [orjson.dumps(b) for b in bodies]

    def timed(fn, items) -> dict:
        ms = []
        for i in range(repeats):
            item = items[i % len(items)]
            t0 = time.perf_counter()
            fn(item)
            ms.append((time.perf_counter() - t0) * 1000)
        return {**percentiles(ms), "mean": statistics.mean(ms)}

    out = {
        "bare ONNX session call, one ticket": timed(
            lambda feed: predictor.session.run(None, feed), bare_feeds(predictor, bodies)
        ),
        "ONNX predictor, one ticket (predict_vectors)": timed(
            lambda i: predictor.predict_vectors([accounts[i]], [vectors[i]], 3), range(len(bodies))
        ),
        "request path, one ticket (parse, score, serialise)": timed(scorer.one, raw),
    }
    batches = {
        size: [
            Tickets.from_vectors(accounts[i : i + size], vectors[i : i + size])
            for i in range(0, len(tickets) - size + 1, size)
        ]
        for size in (32, 256)
        if len(tickets) >= size
    }
    for size, items in batches.items():
        out[f"ONNX predictor, batch of {size}"] = timed(
            predictor.predict, items[: max(1, repeats // size)] or items
        )
    import torch

    from tagger.model.artifacts import load_shared

    torch.set_num_threads(1)
    estimator = load_shared(json.loads((export_dir / "serving.json").read_text())["model_dir"])
    out["PyTorch eager, one ticket"] = timed(estimator.predict, tickets)
    for size, items in batches.items():
        out[f"PyTorch eager, batch of {size}"] = timed(
            estimator.predict, items[: max(1, repeats // size)] or items
        )
    return out


def bare_feeds(predictor, bodies: list[dict]) -> list[dict]:
    """The ONNX inputs of each ticket, built beforehand: what ``session.run`` alone costs."""
    from tagger.serving.limits import configured_limits
    from tagger.serving.request_path import ticket_vectors

    no_cap = configured_limits(max_sentences=10_000)
    feeds = []
    for b in bodies:
        vectors = ticket_vectors(b["email_sentence_embeddings"], "", no_cap)
        cand = predictor.view.candidates([b["account_id"]])
        feeds.append(predictor.feed(cand, vectors, np.array([0, len(vectors)]), np.arange(1)))
    return feeds


def round_trips(port: int, groups: dict[str, list[bytes]], repeats: int, n: int = 300) -> dict:
    """Sequential round trips of each group of requests: p50 and p99 (medians over ``repeats`` runs)
    and the server's own time (Server-Timing) where the server reports it."""
    out = {}
    for name, requests in groups.items():
        runs = [sequential(port, requests, n) for _ in range(repeats)]
        out[name] = {
            "p50": statistics.median(float(np.percentile(r[0], 50)) for r in runs),
            "p99": statistics.median(float(np.percentile(r[0], 99)) for r in runs),
            "server_p50": statistics.median(float(np.percentile(r[1], 50)) for r in runs)
            if runs[0][1]
            else None,
        }
    return out


def answers_agree(port_a: int, port_b: int, requests: list[bytes]) -> dict:
    """Both servers' answers to every request: how many are the same JSON (``identical``), and how
    many give the same ranked labels and scores (``same_top_k``: the model's output, whatever the
    answer policy on top of it)."""
    _, _, a = sequential(port_a, requests, len(requests))
    _, _, b = sequential(port_b, requests, len(requests))
    pairs = [(orjson.loads(x), orjson.loads(y)) for x, y in zip(a, b, strict=True)]
    same = sum(x == y for x, y in pairs)

    def ranked(answer):
        return answer.get("top_k") if isinstance(answer, dict) else answer

    return {
        "requests": len(requests),
        "identical": same,
        "same_top_k": sum(ranked(x) == ranked(y) for x, y in pairs),
    }


def saturation(port: int, requests: list[bytes], seconds: float, repeats: int, connections: int) -> dict:
    """Closed-loop throughput (answers 200 per second), median of ``repeats`` runs."""
    runs = [run_load(port, requests, None, seconds, connections).summary() for _ in range(repeats)]
    best = sorted(runs, key=lambda r: r["throughput"])[len(runs) // 2]
    return {"throughput": best["throughput"], "runs": [r["throughput"] for r in runs], "p50": best["p50"]}


def overload(server, port: int, requests: list[bytes], rate: float, seconds: float) -> dict:
    """An open loop at ``rate`` (twice saturation) over 256 connections, with the server's memory
    (all its processes) sampled every 0.2 s."""
    memory, stop = [], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            memory.append(tree_rss_mb(server.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    start_mb = tree_rss_mb(server.pid)
    sampler.start()
    try:
        result = run_load(port, requests, rate, seconds, connections=256).summary()
    finally:
        stop.set()
        sampler.join()
    other_5xx = sum(v for k, v in result["statuses"].items() if k.startswith("5") and k != "503")
    return {
        **result,
        "offered": rate,
        "other_5xx": other_5xx,
        "rss_mb_start": start_mb,
        "rss_mb_max": max(memory, default=start_mb),
        "rss_mb_end": tree_rss_mb(server.pid),
    }


NEW, TWO = "API, 1 worker", "API, 2 workers"
BARE = "API, 1 worker, no metrics or logs"
CONSTANT, OTHER = "constant FastAPI app", "compared export, 1 worker"
NO_LOGS = ("logs.requests=null", "logs.predictions=null")


def by_bucket(export_dir: Path, per_bucket: int = 200) -> dict[str, list[dict]]:
    """Up to ``per_bucket`` held-out tickets of each sentence-count bucket (all of them are read:
    only a few emails have 50 sentences or more)."""
    every = request_bodies(export_dir, 10**9, seed=1)
    sizes = [n_sentences(b) for b in every]
    return {
        bucket: [b for b, n in zip(every, sizes, strict=True) if lo <= n <= hi][:per_bucket]
        for bucket, (lo, hi) in BUCKETS.items()
    }


def bare_onnx_ms(export_dir: Path, buckets: dict[str, list[dict]], repeats: int = 300) -> dict[str, float]:
    """p50 of the bare ONNX session call for the tickets of each bucket."""
    from tagger.serving.onnx_predictor import OnnxPredictor

    predictor = OnnxPredictor(export_dir)
    out = {}
    for bucket, bodies in buckets.items():
        feeds = bare_feeds(predictor, bodies)
        ms = []
        for i in range(repeats):
            t0 = time.perf_counter()
            predictor.session.run(None, feeds[i % len(feeds)])
            ms.append((time.perf_counter() - t0) * 1000)
        out[bucket] = float(np.percentile(ms, 50))
    return out


def http_figures(
    export_dir: Path, args, mix: list[bytes], groups: dict[str, list[bytes]], compare_export: Path | None
) -> dict:
    """Every HTTP measurement, with the servers running side by side: the API with 1 and 2 workers,
    the constant app, and the API serving ``compare_export`` when there is one."""
    scratch = Path(tempfile.mkdtemp(prefix="tagger-bench-logs-"))

    def logged(name: str) -> tuple[str, ...]:  # the logs as served, to a scratch folder
        return (f"logs.requests={scratch / name}.jsonl", f"logs.predictions={scratch / name}")

    specs = {
        NEW: lambda p: api_command(export_dir, p, ("workers=1", *logged("one"))),
        TWO: lambda p: api_command(export_dir, p, ("workers=2", *logged("two"))),
        BARE: lambda p: api_command(export_dir, p, ("workers=1", "metrics=false", *NO_LOGS)),
        CONSTANT: constant_app,
    }
    if compare_export is not None:
        specs[OTHER] = lambda p: api_command(compare_export, p, ("workers=1", *logged("other")))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        servers = {}
        for name, spec in specs.items():
            port = free_port()
            servers[name] = (stack.enter_context(server_process(port=port, **spec(port))), port)
        port = {name: p for name, (_, p) in servers.items()}
        f = {"answers": answers_agree(port[NEW], port[TWO], mix)}
        print("answers, 1 worker against 2 workers", f["answers"], flush=True)
        f["round_trip"] = {
            name: round_trips(port[name], groups, args.repeats) for name in specs if name != TWO
        }
        f["open_loop"] = {
            name: {
                f"{rate:g}": run_load(port[name], mix, rate, args.seconds, 64).summary()
                for rate in args.rates
            }
            for name in specs
        }
        # 32 connections a worker: enough to keep both busy when the kernel spreads connections
        # unevenly over the workers, never more than one worker's max_in_flight on average
        connections = {name: 64 if name == TWO else 32 for name in specs}
        seconds = max(3.0, args.seconds / 2)
        f["saturation"] = {
            name: saturation(port[name], mix, seconds, args.repeats, n) for name, n in connections.items()
        }
        f["overload"] = {
            name: overload(*servers[name], mix, 2 * f["saturation"][name]["throughput"], args.seconds)
            for name in (NEW, TWO)
        }
    return f


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from tagger.paths import resolve, shown

    argv = sys.argv[1:] if argv is None else argv
    args = bench_config("serving", argv, __doc__)
    export_dir = resolve(args.export_dir) if args.export_dir else promoted_export(args.get("registry_dir"))
    export_dir = export_dir.resolve()
    compare = resolve(args.compare_export_dir).resolve() if args.get("compare_export_dir") else None
    bodies = request_bodies(export_dir, args.tickets)
    buckets = by_bucket(export_dir)
    groups = {}
    for bucket, chosen in buckets.items():
        groups[f"{bucket} string"] = encoded(chosen)
        groups[f"{bucket} object"] = encoded([as_object(b) for b in chosen])
    counts = {bucket: len(chosen) for bucket, chosen in buckets.items()}
    print(f"{len(bodies):,} tickets; by sentences {counts}", flush=True)
    figures = {
        "command": " ".join(["python -m bench.serving", *argv]),
        "export_dir": shown(export_dir),
        "compare_export_dir": shown(compare) if compare else None,
        "compare_is": args.get("compare_is") if compare else None,
        "floor_goals": {
            "max_round_trip_vs_constant": args.max_round_trip_vs_constant,
            "min_throughput_vs_constant": args.min_throughput_vs_constant,
        },
        "machine": machine_description(),
        "settings": {"seconds": args.seconds, "repeats": args.repeats, "rates": list(args.rates)},
        "tickets": len(bodies),
        "mean_sentences": float(np.mean([n_sentences(b) for b in bodies])),
        "bucket_tickets": counts,
        "in_process": in_process(export_dir, bodies),
        "bare_onnx_by_bucket": bare_onnx_ms(export_dir, buckets),
    }
    if compare is not None:
        figures["compare_bare_onnx_by_bucket"] = bare_onnx_ms(compare, buckets)
    figures |= http_figures(export_dir, args, encoded(bodies), groups, compare)
    figures["goals"] = goals(figures)
    out_dir = resolve(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serving.json").write_text(json.dumps(figures, indent=2))
    text = markdown(figures)
    (out_dir / "serving.md").write_text(text)
    print(text)
    return 0


def goals(f: dict) -> list[dict]:
    """The goals, each with the measured figure and whether it is met: absolute ones (latency, the
    answers of 1 and 2 workers, admission control) and ratios to the floors measured in the same run
    (``floor_goals``; a null bound: that goal is not checked)."""
    rt, sat, bounds = f["round_trip"], f["saturation"], f["floor_goals"]
    answers = f["answers"]
    rows = [
        (
            "server time, one-sentence ticket (string; object) < 0.7 ms",
            f"{rt[NEW]['1 string']['server_p50']:.2f}; {rt[NEW]['1 object']['server_p50']:.2f} ms",
            max(rt[NEW]["1 string"]["server_p50"], rt[NEW]["1 object"]["server_p50"]) < 0.7,
        ),
        (
            "50+-sentence ticket round trip p50 < 5 ms (string; object)",
            f"{rt[NEW]['50+ string']['p50']:.2f}; {rt[NEW]['50+ object']['p50']:.2f} ms",
            max(rt[NEW]["50+ string"]["p50"], rt[NEW]["50+ object"]["p50"]) < 5,
        ),
    ]
    for name in (NEW, TWO):
        p99 = f["open_loop"][name]["100"]["p99"]
        rows.append((f"100 req/s p99 < 10 ms ({name})", f"{p99:.2f} ms", p99 < 10))
    rows.append(
        (
            "1 and 2 workers give the same answer (the same JSON) to every ticket",
            f"{answers['identical']:,} of {answers['requests']:,}",
            answers["identical"] == answers["requests"],
        )
    )
    bound = bounds.get("max_round_trip_vs_constant")
    if bound is not None:
        ratios = [rt[NEW][key]["p50"] / rt[CONSTANT][key]["p50"] for key in ("1 string", "1 object")]
        rows.append(
            (
                f"one-sentence round trip p50 at most {bound:g}x the constant app's (string; object)",
                f"{ratios[0]:.2f}x; {ratios[1]:.2f}x ({rt[NEW]['1 string']['p50']:.2f} ms against "
                f"{rt[CONSTANT]['1 string']['p50']:.2f} ms)",
                max(ratios) <= bound,
            )
        )
    bound = bounds.get("min_throughput_vs_constant")
    if bound is not None:
        a, c = sat[NEW]["throughput"], sat[CONSTANT]["throughput"]
        rows.append(
            (
                f"saturation throughput (1 worker) at least {bound:g} of the constant app's",
                f"{a / c:.2f} ({a:.0f} of {c:.0f} req/s)",
                a >= bound * c,
            )
        )
    rows += _telemetry_goals(f)
    for name, o in f["overload"].items():
        rows += _overload_goals(name, o)
    return [{"goal": g, "measured": m, "met": bool(ok)} for g, m, ok in rows]


def _telemetry_goals(f: dict) -> list[tuple]:
    """What the metrics, the request log and the prediction log cost a request: the API as served
    against the same API with all three off, in the same run."""
    rt, bare = f["round_trip"][NEW]["1 string"], f["round_trip"][BARE]["1 string"]
    p99, bare_p99 = f["open_loop"][NEW]["100"]["p99"], f["open_loop"][BARE]["100"]["p99"]
    return [
        (
            "metrics and logs add < 0.05 ms to the one-sentence round trip p50",
            f"{rt['p50'] - bare['p50']:+.3f} ms ({bare['p50']:.3f} -> {rt['p50']:.3f}; server time "
            f"{bare['server_p50']:.3f} -> {rt['server_p50']:.3f})",
            rt["p50"] - bare["p50"] < 0.05,
        ),
        (
            "metrics and logs add < 10% to the p99 at 100 req/s",
            f"{p99 / bare_p99 - 1:+.0%} ({bare_p99:.2f} -> {p99:.2f} ms)",
            p99 < 1.1 * bare_p99,
        ),
    ]


def _overload_goals(name: str, o: dict) -> list[tuple]:
    """The goals at twice saturation of one server: admitted latency, refusals, errors, memory."""
    refused = o["refused"]
    return [
        (
            f"2x saturation, admitted p99 < 200 ms ({name})",
            f"{o['ok']['p99']:.1f} ms",
            o["ok"]["p99"] < 200,
        ),
        (
            f"2x saturation, refusal p99 < 10 ms ({name})",
            f"{refused['p99']:.1f} ms from due, {refused['from_send_p99']:.1f} ms from sent "
            f"({refused['n']:,} refused; the client's own lag p99 {o['client_lag_p99']:.1f} ms)"
            if refused["n"]
            else "none refused",
            not refused["n"] or refused["p99"] < 10,
        ),
        (
            f"2x saturation, no other 5xx, no connection error ({name})",
            f"{o['other_5xx']} / {o['connection_errors']}",
            o["other_5xx"] == 0 and o["connection_errors"] == 0,
        ),
        (
            f"2x saturation, memory flat ({name})",
            f"{o['rss_mb_start']:.0f} -> max {o['rss_mb_max']:.0f} -> {o['rss_mb_end']:.0f} MB",
            o["rss_mb_max"] - o["rss_mb_start"] < 50,
        ),
    ]


def _ms(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _table(head: str, align: str, rows: list[str]) -> list[str]:
    return [head, align, *rows]


def _compared(f: dict) -> str:
    """What the run compared, in words."""
    text = (
        "Compared side by side in this run, on the same machine, export and tickets: the API "
        "(`python -m tagger.serving` over a scratch registry serving the export) with 1 and 2 workers; "
        "a FastAPI app under the same uvicorn settings that reads the body and answers a constant "
        "(bench/constant_app.py: the floor of an HTTP round trip here, no parsing, no model); and the "
        "bare ONNX session call in process with its inputs built beforehand (the floor of the model). "
    )
    if f.get("compare_export_dir"):
        what = f" ({f['compare_is']})" if f.get("compare_is") else ""
        text += (
            f"Beside them, the same code serving another export, `{f['compare_export_dir']}`{what}, "
            "with 1 worker. "
        )
    return text + (
        "Every ratio below is to a floor measured in the same run, not to another run or to older code."
    )


def markdown(f: dict) -> str:
    """The report: what ran, what is compared, the goals, then each table."""
    s = f["settings"]
    answers = f["answers"]
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {f['machine']}; the load generator runs on the same machine.",
        f"Export: `{f['export_dir']}`; {f['tickets']:,} real held-out tickets "
        f"(mean {f['mean_sentences']:.1f} sentences; the embeddings JSON as in the parquet, nulls included).",
        f"Command: `{f['command'].strip()}` (seconds {s['seconds']:g} per load run, "
        f"{s['repeats']} runs of each round-trip and saturation figure, the median shown).",
        _compared(f),
        "",
        f"Same answers: {answers['identical']:,} of {answers['requests']:,} tickets give the same JSON from "
        f"1 worker and from 2 workers; {answers['same_top_k']:,} the same ranked labels and scores.",
        "",
        "## Goals",
        "",
        *_table(
            "| goal | measured | met |",
            "|---|---|---|",
            [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in f["goals"]],
        ),
        *_round_trip_section(f),
        *_open_loop_section(f),
        *_saturation_section(f),
        *_overload_section(f),
        "",
        "## In process (one thread)",
        "",
        *_table(
            "| path | p50 ms | p99 ms | mean ms |",
            "|---|---:|---:|---:|",
            [
                f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['mean']:.3f} |"
                for name, r in f["in_process"].items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def _round_trip_section(f: dict) -> list[str]:
    other = OTHER in f["round_trip"]
    rows = []
    for bucket in BUCKETS:
        onnx = f["bare_onnx_by_bucket"][bucket]
        for kind in ("string", "object"):
            key = f"{bucket} {kind}"
            b, c = f["round_trip"][NEW][key], f["round_trip"][CONSTANT][key]
            server = b["server_p50"]
            row = (
                f"| {bucket} | {kind} | {f['bucket_tickets'][bucket]} | {_ms(b['p50'])} | {_ms(b['p99'])} "
                f"| {_ms(server)} | {_ms(c['p50'])} | {b['p50'] / c['p50']:.1f}x | {onnx:.3f} "
                f"| {'-' if server is None else f'{server / onnx:.1f}x'} |"
            )
            if other:
                o = f["round_trip"][OTHER][key]
                row += (
                    f" {_ms(o['p50'])} | {b['p50'] / o['p50']:.2f}x "
                    f"| {f['compare_bare_onnx_by_bucket'][bucket]:.3f} |"
                )
            rows.append(row)
    return [
        "",
        "## One ticket at a time (one keep-alive connection, sequential)",
        "",
        "Round trip p50 / p99 in ms of the API with 1 worker; server: the Server-Timing the API reports "
        "(gate entry to response start); the round trip against the constant app's (the HTTP floor) and "
        "the server's own time against the bare ONNX call (the model's floor).",
        "",
        *_table(
            "| sentences | embeddings | tickets | p50 | p99 | server p50 | constant app p50 "
            "| p50 / constant app | bare ONNX p50 | server / bare ONNX |"
            + (" compared export p50 | this / compared | compared bare ONNX p50 |" if other else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if other else ""),
            rows,
        ),
    ]


def _open_loop_section(f: dict) -> list[str]:
    floor = f["open_loop"][CONSTANT]
    rows = []
    for name, by_rate in f["open_loop"].items():
        for rate, r in by_rate.items():
            base = floor[rate]["p99"]
            ratio = f"{r['p99'] / base:.1f}x" if r["p99"] is not None and base else "-"
            rows.append(
                f"| {name} | {rate} | {r['throughput']:.0f} | {_ms(r['p50'])} | {_ms(r['p99'])} | "
                f"{_ms(r['max'])} | {r['statuses']} | {r['connection_errors']} | {ratio} |"
            )
    return [
        "",
        "## Fixed offered rates (open loop, 64 connections, real ticket mix)",
        "",
        "Latency counts from when a request was due, so queueing counts; the last column: p99 against the "
        "constant app's at the same rate.",
        "",
        *_table(
            "| server | offered req/s | answered 200/s | p50 ms | p99 ms | max ms | statuses "
            "| connection errors | p99 / constant app |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|",
            rows,
        ),
    ]


def _saturation_section(f: dict) -> list[str]:
    base = f["saturation"][CONSTANT]["throughput"]
    rows = [
        f"| {name} | {r['throughput']:.0f} | {', '.join(f'{x:.0f}' for x in r['runs'])} | "
        f"{r['throughput'] / base:.2f} |"
        for name, r in f["saturation"].items()
    ]
    return [
        "",
        "## Saturation (closed loop, 32 connections a worker)",
        "",
        *_table(
            "| server | answers 200/s (median) | runs | share of the constant app's |",
            "|---|---:|---|---:|",
            rows,
        ),
    ]


def _overload_section(f: dict) -> list[str]:
    rows = []
    for name, o in f["overload"].items():
        ok, ref = o["ok"], o["refused"]
        rows.append(
            f"| {name} | {o['offered']:.0f} | {o['throughput']:.0f} | {_ms(ok['p50'])} / {_ms(ok['p99'])} | "
            f"{ref['n']:,} | {_ms(ref['p50'])} / {_ms(ref['p99'])} / {_ms(ref['max'])} | "
            f"{_ms(ref['from_send_p99'])} | {_ms(o['client_lag_p99'])} | {o['other_5xx']} | "
            f"{o['connection_errors']} | "
            f"{o['rss_mb_start']:.0f} / {o['rss_mb_max']:.0f} / {o['rss_mb_end']:.0f} |"
        )
    return [
        "",
        "## Twice saturation (open loop, 256 connections): admission control",
        "",
        *_table(
            "| server | offered req/s | admitted 200/s | admitted p50 / p99 ms | refused (503) "
            "| refusal p50 / p99 / max ms | refusal p99 from sent | client lag p99 | other 5xx "
            "| connection errors | memory MB start / max / end |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            rows,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
