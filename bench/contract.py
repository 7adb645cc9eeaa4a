"""The Node.js reference consumer beside the Python predictor, in process, on the same tickets.

    python -m bench.contract [export_dir=DIR] [bodies=200] [rounds=7] [repeats=3]

One-sentence real held-out tickets of the promoted export (``registry/``) are scored one at a time
from the request body's text to the answer's JSON: in Python by the API's request scorer
(``RequestScorer.one``, what a request costs the server beyond HTTP), in Node.js by
``Tagger.predict`` (clients/node/bench.mjs); and the bare ``model.onnx`` call of each runtime, the
floor of either. Python also answers the same tickets with ``?why=true`` (what naming the sentences
that decided adds). Each ticket's time is the median of ``rounds``; Python and Node alternate
``repeats`` times and each figure is the median over the repeats. Writes
results/benchmarks/contract.md (and .json).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.config import bench_config, write_figures
from bench.machine import machine_description
from bench.servers import promoted_export
from bench.serving import n_sentences, request_bodies
from tagger.paths import PROJECT_ROOT, resolve, shown
from tagger.serving.limits import configured_limits
from tagger.serving.onnx_predictor import OnnxPredictor
from tagger.serving.request_path import RequestScorer

CLIENT = PROJECT_ROOT / "clients" / "node"


def python_times(export_dir: Path, bodies: list[bytes], rounds: int) -> dict[str, float]:
    """Median per-ticket milliseconds of the request scorer and of the bare ONNX call."""
    predictor = OnnxPredictor(export_dir)
    scorer = RequestScorer(predictor, configured_limits())
    for body in bodies[:20]:
        scorer.one(body)
    whole, bare, why = [], [], []
    asks = [b"", b"why=true"] if "sentence_weights" in predictor.outputs else [b""]
    for body in bodies:
        for query, kept in zip(asks, (whole, why), strict=False):
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                scorer.one(body, query)
                times.append(time.perf_counter() - started)
            kept.append(statistics.median(times) * 1000)
        ticket = json.loads(body)
        emb = json.loads(ticket["email_sentence_embeddings"])
        x = np.asarray(list(emb.values()), np.float32)
        cand = predictor.view.candidates([ticket["account_id"]])
        feed = predictor.feed(cand, x, np.array([0, len(x)]), np.array([0]))
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            predictor.session.run(["logits"], feed)
            times.append(time.perf_counter() - started)
        bare.append(statistics.median(times) * 1000)
    out = {"predict_ms": float(np.median(whole)), "onnx_ms": float(np.median(bare))}
    if why:  # the same tickets asked ?why=true: what naming the sentences adds to a request
        out["why_ms"] = float(np.median(why))
        out["why_added_ms"] = float(np.median(np.subtract(why, whole)))
    return out


def node_times(export_dir: Path, bodies_file: Path, rounds: int) -> dict[str, float]:
    """The same figures from clients/node/bench.mjs."""
    node = shutil.which("node")
    if node is None or not (CLIENT / "node_modules").exists():
        raise SystemExit("needs Node.js and `npm ci --prefix clients/node`")
    out = subprocess.run(
        [node, str(CLIENT / "bench.mjs"), str(export_dir), str(bodies_file), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    return {"predict_ms": float(np.median(got["predict_ms"])), "onnx_ms": float(np.median(got["onnx_ms"]))}


def run(export_dir: Path, n_bodies: int, tickets: int, rounds: int, repeats: int) -> dict:
    """Time both runtimes on the same one-sentence tickets, alternating ``repeats`` times."""
    one = [b for b in request_bodies(export_dir, tickets) if n_sentences(b) == 1][:n_bodies]
    bodies = [json.dumps(b).encode() for b in one]
    with tempfile.TemporaryDirectory() as tmp:
        bodies_file = Path(tmp) / "bodies.jsonl"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        runs = []
        for _ in range(repeats):
            runs.append(
                {
                    "python": python_times(export_dir, bodies, rounds),
                    "node": node_times(export_dir, bodies_file, rounds),
                }
            )
    figures = {
        side: {key: statistics.median(r[side][key] for r in runs) for key in runs[0][side]}
        for side in ("python", "node")
    }
    return {
        "machine": machine_description(),
        "export": export_dir.name,
        "tickets": len(bodies),
        "rounds": rounds,
        "repeats": repeats,
        "runs": runs,
        **figures,
        "node_over_python": figures["node"]["predict_ms"] / figures["python"]["predict_ms"],
    }


def markdown(r: dict) -> str:
    p, n = r["python"], r["node"]
    above = (p["predict_ms"] - p["onnx_ms"], n["predict_ms"] - n["onnx_ms"])
    return "\n".join(
        [
            "# The Node.js consumer beside the Python predictor",
            "",
            f"Command: `python -m bench.contract` (bench/contract.py). Machine: {r['machine']}. Export "
            f"{r['export']}; {r['tickets']} real held-out one-sentence tickets, each timed {r['rounds']} "
            f"times (median), the two runtimes alternating {r['repeats']} times (median of the repeats).",
            "",
            "| in process, one ticket | Python (`RequestScorer.one`) | Node.js (`Tagger.predict`) |",
            "|---|---|---|",
            f"| body text to answer JSON | {p['predict_ms']:.3f} ms | {n['predict_ms']:.3f} ms |",
            f"| the bare model.onnx call (the floor) | {p['onnx_ms']:.3f} ms | {n['onnx_ms']:.3f} ms |",
            f"| above the floor | {above[0]:.3f} ms | {above[1]:.3f} ms |",
            "",
            f"Node.js / Python: **{r['node_over_python']:.2f}x** (goal: within 2x).",
            "",
            *(
                [
                    f"`?why=true` (the sentences that decided, Python): {p['why_ms']:.3f} ms, "
                    f"**{p['why_added_ms'] * 1000:+.1f} µs** a request (median of the per-ticket "
                    "differences; goal: under 50 µs).",
                    "",
                ]
                if "why_ms" in p
                else ["The export has no sentence weights: `?why=true` not measured.", ""]
            ),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    cfg = bench_config("contract", argv, __doc__)
    export_dir = resolve(cfg.export_dir) if cfg.export_dir else promoted_export(cfg.registry_dir)
    result = run(export_dir, int(cfg.bodies), int(cfg.tickets), int(cfg.rounds), int(cfg.repeats))
    result["export_dir"] = shown(export_dir)
    write_figures(cfg.out_dir, "contract", result, markdown(result))


if __name__ == "__main__":
    main()
