"""Whether predict.py's memory depends on how a file is cut into row groups: the built-in data
written with small row groups and as a single one, each scored by ``python predict.py``
(engine=local) with its peak memory sampled.

    python -m bench.row_groups [key=value ...]        (conf/bench/row_groups.yaml)

predict.py reads a row group in slices of ``batch_rows`` rows (pyarrow, no pre-buffering), so its
memory should not follow the row group's size. Writes ``results/benchmarks/row_groups.md`` and ``.json``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pyarrow.parquet as pq

from bench.batch import make_big_file, run_predict
from bench.config import bench_config, write_figures
from bench.machine import machine_description
from bench.servers import promoted_export
from tagger.paths import resolve, shown


def measure(data: Path, export_dir: Path, rows_per_group: list[int], repeats: int, cfg) -> list[dict]:
    """For each row-group size: the file written with it, and the median peak memory of predict.py."""
    n = pq.ParquetFile(data).metadata.num_rows
    work = resolve(cfg.work_dir)
    out = []
    for rows in rows_per_group:
        size = min(int(rows), n) if rows else n  # 0: one row group for the whole file
        path = work / f"tickets-{size}-per-group.parquet"
        if not path.exists():
            make_big_file(data, path, n, row_group_rows=size)
        meta = pq.ParquetFile(path).metadata
        groups = meta.num_row_groups
        largest = max(meta.row_group(i).total_byte_size for i in range(groups))
        runs = [
            run_predict(path, export_dir, work / f"out-{size}.parquet", ("engine=local",), cfg.sample_every)
            for _ in range(repeats)
        ]
        peaks = [r["peak_pss_mb"] for r in runs]
        out.append(
            {
                "rows_per_group": size,
                "row_groups": groups,
                "largest_group_mb": largest / 1e6,
                "tickets": n,
                "peak_pss_mb": statistics.median(peaks),
                "peak_pss_mb_runs": peaks,
                "tickets_per_second": statistics.median(r["summary"]["tickets_per_second"] for r in runs),
            }
        )
        print(f"{size:>8} rows a group ({groups} groups): {statistics.median(peaks):,.0f} MB")
    return out


def markdown(result: dict) -> str:
    rows = result["rows"]
    base = rows[0]["peak_pss_mb"]
    lines = [
        "# predict.py memory against row-group size",
        "",
        f"Machine: {result['machine']}. Command: `python -m bench.row_groups` (conf/bench/row_groups.yaml).",
        f"The built-in data (`{result['data']}`, {rows[0]['tickets']:,} tickets) written with each row-group "
        f"size, scored by `python predict.py engine=local` on export `{result['export_dir']}`; peak "
        f"proportional set size of the process sampled every {result['sample_every']} s, median of "
        f"{result['repeats']} runs.",
        "",
        "| rows a group | row groups | largest group, decoded MB | peak PSS MB "
        "| ratio to the smallest groups | tickets/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rows_per_group']:,} | {r['row_groups']} | {r['largest_group_mb']:,.0f} "
            f"| {r['peak_pss_mb']:,.0f} | "
            f"{r['peak_pss_mb'] / base:.2f}x | {r['tickets_per_second']:,.0f} |"
        )
    worst = max(r["peak_pss_mb"] for r in rows) / base
    lines += [
        "",
        f"Goal (issue 27): memory within 1.2x whatever the row-group size: **{worst:.2f}x**, "
        f"{'met' if worst <= 1.2 else 'NOT met'}. The largest group here is the whole built-in file "
        f"({rows[-1]['rows_per_group']:,} rows); a 1M-row group of such tickets (20 times as many decoded "
        "bytes) does not fit this machine's memory to write, so it is not measured.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    cfg = bench_config("row_groups", argv, __doc__)
    data = resolve(cfg.data)
    export_dir = resolve(cfg.export_dir) if cfg.export_dir else promoted_export(cfg.get("registry_dir"))
    rows = measure(data, export_dir, list(cfg.rows_per_group), int(cfg.repeats), cfg)
    result = {
        "machine": machine_description(),
        "data": shown(data),
        "export_dir": shown(export_dir),
        "repeats": int(cfg.repeats),
        "sample_every": float(cfg.sample_every),
        "rows": rows,
    }
    write_figures(cfg.out_dir, "row_groups", result, markdown(result))


if __name__ == "__main__":
    main()
