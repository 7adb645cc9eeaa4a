"""Serving benchmark: the HTTP API on real held-out tickets, side by side in one run with the code
before a change (a git worktree of ``before``: conf/bench/serving.yaml), a FastAPI app answering a constant
(the floor of an HTTP round trip here) and the bare ONNX call (the floor of the model).

    python -m tagger.bench.serving [export_dir=DIR] [before=COMMIT] [seconds=8] [repeats=3]

Measures the single-ticket round trip by sentence count for string and object embeddings, p50/p99
at fixed offered rates (open loop), the saturation throughput of 1 and 2 workers (closed loop), and
admission control at twice saturation; checks that both codes give the same answers. Writes
results/benchmarks/serving.md (and .json).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq

from tagger.bench.config import bench_config
from tagger.bench.load import http_request, percentiles, run_load, sequential
from tagger.bench.machine import machine_description
from tagger.bench.servers import (
    before_code,
    constant_app,
    free_port,
    promoted_export,
    server_process,
    this_code,
    tree_rss_mb,
    worktree,
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
    from tagger.serving.limits import Limits
    from tagger.serving.onnx_predictor import OnnxPredictor
    from tagger.serving.request_path import RequestScorer, ticket_vectors

    predictor = OnnxPredictor(export_dir)
    no_cap = Limits(max_sentences=10_000)
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
    from tagger.serving.limits import Limits
    from tagger.serving.request_path import ticket_vectors

    no_cap = Limits(max_sentences=10_000)
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
    answer policy on top of it, e.g. answers one level up, which an older commit does not give)."""
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


NEW, TWO, CONSTANT = "this code, 1 worker", "this code, 2 workers", "constant FastAPI app"


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
    export_dir: Path, args, mix: list[bytes], groups: dict[str, list[bytes]], before_export: Path
) -> dict:
    """Every HTTP measurement, with the four servers running side by side ("before" serving
    ``before_export``)."""
    old = f"before ({args.before})"
    with ExitStack() as stack:
        tree = stack.enter_context(worktree(args.before))
        specs = {
            NEW: lambda p: this_code(export_dir, p, ("workers=1",)),
            TWO: lambda p: this_code(export_dir, p, ("workers=2",)),
            old: lambda p: before_code(tree, before_export, p),
            CONSTANT: constant_app,
        }
        servers = {}
        for name, spec in specs.items():
            port = free_port()
            servers[name] = (stack.enter_context(server_process(port=port, **spec(port))), port)
        port = {name: p for name, (_, p) in servers.items()}
        f = {"answers": answers_agree(port[NEW], port[old], mix)}
        print("answers", f["answers"], flush=True)
        f["round_trip"] = {
            name: round_trips(port[name], groups, args.repeats) for name in (NEW, old, CONSTANT)
        }
        f["open_loop"] = {
            name: {
                f"{rate:g}": run_load(port[name], mix, rate, args.seconds, 64).summary()
                for rate in args.rates
            }
            for name in (NEW, TWO, old)
        }
        # 32 connections a worker: enough to keep both busy when the kernel spreads connections
        # unevenly over the workers, never more than one worker's max_in_flight on average
        connections = {NEW: 32, TWO: 64, old: 32, CONSTANT: 32}
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

    args = bench_config("serving", argv, __doc__)
    export_dir = resolve(args.export_dir) if args.export_dir else promoted_export(args.get("registry_dir"))
    export_dir = export_dir.resolve()
    before_export = resolve(args.before_export_dir).resolve() if args.get("before_export_dir") else export_dir
    bodies = request_bodies(export_dir, args.tickets)
    buckets = by_bucket(export_dir)
    groups = {}
    for bucket, chosen in buckets.items():
        groups[f"{bucket} string"] = encoded(chosen)
        groups[f"{bucket} object"] = encoded([as_object(b) for b in chosen])
    counts = {bucket: len(chosen) for bucket, chosen in buckets.items()}
    print(f"{len(bodies):,} tickets; by sentences {counts}", flush=True)
    figures = {
        "export_dir": shown(export_dir),
        "before_export_dir": shown(before_export),
        "before": args.before,
        "before_is": args.before_is,
        "max_slowdown": args.max_slowdown,
        "machine": machine_description(),
        "tickets": len(bodies),
        "mean_sentences": float(np.mean([n_sentences(b) for b in bodies])),
        "bucket_tickets": counts,
        "in_process": in_process(export_dir, bodies),
        "bare_onnx_by_bucket": bare_onnx_ms(export_dir, buckets),
    }
    if before_export != export_dir:
        figures["before_bare_onnx_by_bucket"] = bare_onnx_ms(before_export, buckets)
    figures |= http_figures(export_dir, args, encoded(bodies), groups, before_export)
    figures["goals"] = goals(figures, f"before ({args.before})", args.max_slowdown)
    out_dir = resolve(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serving.json").write_text(json.dumps(figures, indent=2))
    text = markdown(figures, args)
    (out_dir / "serving.md").write_text(text)
    print(text)
    return 0


ROUND_TRIPS = ("1 string", "1 object", "50+ string")  # the round trips no change may slow down


def goals(f: dict, old: str, max_slowdown: float | None = None) -> list[dict]:
    """The goals, each with the measured figure and whether it is met: against ``before``, no figure
    worse by more than ``max_slowdown`` when it is set (a change that must not cost speed), else the
    fast request path's speed-ups (issue 15)."""
    new, rt = NEW, f["round_trip"]
    sat = f["saturation"]
    best = max(sat[NEW]["throughput"], sat[TWO]["throughput"])
    rows = [
        (
            "server time, one-sentence ticket (string; object) < 0.7 ms",
            f"{rt[new]['1 string']['server_p50']:.2f}; {rt[new]['1 object']['server_p50']:.2f} ms",
            max(rt[new]["1 string"]["server_p50"], rt[new]["1 object"]["server_p50"]) < 0.7,
        ),
        (
            "50+-sentence ticket round trip p50 < 5 ms (string; object)",
            f"{rt[new]['50+ string']['p50']:.2f}; {rt[new]['50+ object']['p50']:.2f} ms",
            max(rt[new]["50+ string"]["p50"], rt[new]["50+ object"]["p50"]) < 5,
        ),
    ]
    for name in (NEW, TWO):
        p99 = f["open_loop"][name]["100"]["p99"]
        rows.append((f"100 req/s p99 < 10 ms ({name})", f"{p99:.2f} ms", p99 < 10))
    if max_slowdown is not None:
        worst = 1 + float(max_slowdown)
        slower = [(f"round trip p50, {key}", rt[old][key]["p50"], rt[new][key]["p50"]) for key in ROUND_TRIPS]
        slower.append(("100 req/s p99", f["open_loop"][old]["100"]["p99"], f["open_loop"][new]["100"]["p99"]))
        for goal, a, b in slower:
            rows.append(
                (
                    f"{goal}, at most {worst:.2f}x before",
                    f"{b / a:.2f}x ({a:.2f} -> {b:.2f} ms)",
                    b <= worst * a,
                )
            )
        a, b = sat[old]["throughput"], sat[new]["throughput"]
        rows.append(
            (
                f"saturation throughput (1 worker), at least before / {worst:.2f}",
                f"{b / a:.2f}x ({a:.0f} -> {b:.0f} req/s)",
                b * worst >= a,
            )
        )
    else:
        rows.append(
            (
                "round trip p50, one-sentence ticket, >= 3x lower than before",
                f"{rt[old]['1 string']['p50'] / rt[new]['1 string']['p50']:.2f}x "
                f"({rt[old]['1 string']['p50']:.2f} -> {rt[new]['1 string']['p50']:.2f} ms)",
                rt[old]["1 string"]["p50"] / rt[new]["1 string"]["p50"] >= 3,
            )
        )
        ratio = best / sat[old]["throughput"]
        rows.append(
            (
                "saturation throughput >= 2x before",
                f"{ratio:.1f}x ({sat[old]['throughput']:.0f} -> {best:.0f} req/s)",
                ratio >= 2,
            )
        )
    for name, o in f["overload"].items():
        rows += _overload_goals(name, o)
    return [{"goal": g, "measured": m, "met": bool(ok)} for g, m, ok in rows]


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


def markdown(f: dict, args) -> str:
    """The report: what ran, the goals, then each table."""
    old = f"before ({f['before']})"
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {f['machine']}; the load generator runs on the same machine.",
        f"Export: `{f['export_dir']}`; {f['tickets']:,} real held-out tickets "
        f"(mean {f['mean_sentences']:.1f} sentences; the embeddings JSON as in the parquet, nulls included).",
        f"Command: `python -m tagger.bench.serving` (seconds {args.seconds:g} per load run, "
        f"{args.repeats} runs of each round-trip and saturation figure, the median shown).",
        f'"Before" is commit {f["before"]} ({f.get("before_is") or "an earlier commit"}) checked out in '
        "a git worktree and served as that commit deployed it, beside this code in the same run, "
        + (
            "on the same export. "
            if f.get("before_export_dir", f["export_dir"]) == f["export_dir"]
            else f"serving its own export `{f['before_export_dir']}`. "
        )
        + "Floors: the bare ONNX session call (in process) and "
        "a FastAPI app that reads the body and answers a constant (src/tagger/bench/constant_app.py).",
        "",
        f"Same answers: {f['answers']['identical']:,} of {f['answers']['requests']:,} tickets give the same "
        f"JSON from this code and from before; {f['answers'].get('same_top_k', f['answers']['identical']):,} "
        "the same ranked labels and scores (the model's output; the answer on top of it may differ by "
        "design, e.g. an answer one level up).",
        "",
        "## Goals",
        "",
        *_table(
            "| goal | measured | met |",
            "|---|---|---|",
            [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in f["goals"]],
        ),
        *_round_trip_section(f, old),
        *_open_loop_section(f),
        *_saturation_section(f, old),
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


def _round_trip_section(f: dict, old: str) -> list[str]:
    own = "before_bare_onnx_by_bucket" in f  # "before" serves another export: its floor too
    rows = []
    for bucket in BUCKETS:
        for kind in ("string", "object"):
            key = f"{bucket} {kind}"
            a, b, c = (f["round_trip"][name][key] for name in (old, NEW, CONSTANT))
            rows.append(
                f"| {bucket} | {kind} | {f['bucket_tickets'][bucket]} | {_ms(a['p50'])} | {_ms(b['p50'])} | "
                f"{b['p50'] / a['p50']:.2f}x | {_ms(b['p99'])} | {_ms(b['server_p50'])} | {_ms(c['p50'])} | "
                f"{f['bare_onnx_by_bucket'][bucket]:.3f} |"
                + (f" {f['before_bare_onnx_by_bucket'][bucket]:.3f} |" if own else "")
            )
    return [
        "",
        "## One ticket at a time (one keep-alive connection, sequential)",
        "",
        "Round trip p50 / p99 in ms; server: the Server-Timing the API reports "
        "(gate entry to response start).",
        "",
        *_table(
            "| sentences | embeddings | tickets | before p50 | this p50 | this / before | this p99 "
            "| server p50 | constant app p50 | bare ONNX p50 |"
            + (" before's bare ONNX p50 |" if own else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if own else ""),
            rows,
        ),
    ]


def _open_loop_section(f: dict) -> list[str]:
    rows = [
        f"| {name} | {rate} | {r['throughput']:.0f} | {_ms(r['p50'])} | {_ms(r['p99'])} | "
        f"{_ms(r['max'])} | {r['statuses']} | {r['connection_errors']} |"
        for name, by_rate in f["open_loop"].items()
        for rate, r in by_rate.items()
    ]
    return [
        "",
        "## Fixed offered rates (open loop, 64 connections, real ticket mix)",
        "",
        "Latency counts from when a request was due, so queueing counts.",
        "",
        *_table(
            "| server | offered req/s | answered 200/s | p50 ms | p99 ms | max ms | statuses "
            "| connection errors |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
            rows,
        ),
    ]


def _saturation_section(f: dict, old: str) -> list[str]:
    base = f["saturation"][old]["throughput"]
    rows = [
        f"| {name} | {r['throughput']:.0f} | {', '.join(f'{x:.0f}' for x in r['runs'])} | "
        f"{r['throughput'] / base:.1f}x |"
        for name, r in f["saturation"].items()
    ]
    return [
        "",
        "## Saturation (closed loop, 32 connections a worker)",
        "",
        *_table("| server | answers 200/s (median) | runs | ratio to before |", "|---|---:|---|---:|", rows),
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
