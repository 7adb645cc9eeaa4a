"""Ingest benchmark: the project's parser against per-row ``json.loads`` and ``ast.literal_eval``.

All in one run on the same file, median of several runs, written to
``results/benchmarks/ingest.md`` (and ``.json``)::

    python -m bench.ingest [path=data/tickets.parquet] [repeats=5]   (conf/bench/ingest.yaml)
"""

from __future__ import annotations

import ast
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.config import bench_config
from bench.machine import machine_description
from tagger.data.cache import load_tickets
from tagger.data.embeddings_json import is_empty
from tagger.data.ingest import EMBEDDINGS
from tagger.paths import shown


def _baseline(parse: Callable[[str], dict], texts: list) -> int:
    """Parse every row with ``parse`` into float32 arrays, as public solutions do; returns sentences."""
    n = 0
    for text in texts:
        if is_empty(text):
            continue
        obj = parse(text)
        array = np.asarray(list(obj.values()), dtype=np.float32)
        n += len(array)
    return n


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), runs


def run(path: Path, repeats: int, ast_rows: int, out_dir: Path) -> dict:
    """Measure every method; returns the figures written to ``out_dir``."""
    column = pq.read_table(path, columns=[EMBEDDINGS]).column(0).to_pylist()
    n_tickets = len(column)
    json_mb = sum(len(t) for t in column if t) / 1e6
    sample = column[:ast_rows]
    sample_mb = sum(len(t) for t in sample if t) / 1e6
    del column

    def read_texts(rows: int | None = None) -> list:
        texts = pq.read_table(path, columns=[EMBEDDINGS]).column(0).to_pylist()
        return texts[:rows] if rows else texts

    results = {}
    cache = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:

        def cold() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            load_tickets(path, cache_dir=cache, progress=False)

        results["tagger (cold: parse + validate + write cache)"] = (_time(cold, repeats), n_tickets, json_mb)
        load_tickets(path, cache_dir=cache, progress=False)
        results["tagger (cached: hash file + memory-map)"] = (
            _time(lambda: load_tickets(path, cache_dir=cache, progress=False), repeats),
            n_tickets,
            json_mb,
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    results["json.loads per row -> numpy"] = (
        _time(lambda: _baseline(json.loads, read_texts()), repeats),
        n_tickets,
        json_mb,
    )
    results[f"ast.literal_eval per row -> numpy (first {len(sample):,} rows)"] = (
        _time(lambda: _baseline(ast.literal_eval, read_texts(ast_rows)), max(1, repeats // 2)),
        len(sample),
        sample_mb,
    )

    rows = []
    for name, ((median, runs), n, mb) in results.items():
        rows.append(
            {
                "method": name,
                "median_s": median,
                "runs_s": runs,
                "tickets": n,
                "tickets_per_s": n / median,
                "json_mb_per_s": mb / median,
            }
        )
    rate = {r["method"]: r["tickets_per_s"] for r in rows}
    cold_rate = rate["tagger (cold: parse + validate + write cache)"]
    json_rate = rate["json.loads per row -> numpy"]
    ast_rate = next(v for k, v in rate.items() if k.startswith("ast"))
    figures = {
        "file": shown(path),
        "tickets": n_tickets,
        "json_mb": json_mb,
        "machine": machine_description(),
        "repeats": repeats,
        "rows": rows,
        "cold_vs_json": cold_rate / json_rate,
        "cold_vs_ast": cold_rate / ast_rate,
        "cached_load_s": next(r["median_s"] for r in rows if r["method"].startswith("tagger (cached")),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ingest.json").write_text(json.dumps(figures, indent=2))
    (out_dir / "ingest.md").write_text(_markdown(figures))
    return figures


def _markdown(f: dict) -> str:
    lines = [
        "# Ingest benchmark",
        "",
        f"File: `{f['file']}`: {f['tickets']:,} tickets, {f['json_mb']:,.0f} MB of embeddings JSON.",
        f"Machine: {f['machine']}.",
        f"Median of {f['repeats']} runs (ast.literal_eval: fewer runs on a slice of the file, "
        "as it is too slow for the whole file).",
        "Command: `python -m bench.ingest`",
        "",
        "| method | median s | tickets/s | MB/s of JSON |",
        "|---|---:|---:|---:|",
    ]
    for r in f["rows"]:
        lines.append(
            f"| {r['method']} | {r['median_s']:.3f} | {r['tickets_per_s']:,.0f} | {r['json_mb_per_s']:,.1f} |"
        )
    lines += [
        "",
        f"- cold parse vs json.loads baseline: **{f['cold_vs_json']:.1f}x** (goal 3x)",
        f"- cold parse vs ast.literal_eval baseline: **{f['cold_vs_ast']:.0f}x** (goal 30x)",
        f"- cached load: **{f['cached_load_s']:.3f} s** (goal under 1 s)",
        "",
        "The cold figure includes everything a first load does: reading the parquet, validating every",
        "row, label normalisation and writing the memory-mappable cache. The baselines only parse.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from tagger.paths import resolve

    cfg = bench_config("ingest", argv, __doc__)
    figures = run(resolve(cfg.path), int(cfg.repeats), int(cfg.ast_rows), resolve(cfg.out_dir))
    print(_markdown(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
