"""``python predict.py``: a ticket parquet file in, a predictions parquet file out, written as it goes.

Memory does not grow with the file: ``batch_rows`` rows are read, checked, parsed, scored and
written at a time. What grows is the duplicate check (the ticket ids, read once, about 100 bytes a
ticket) and the list of quarantined rows. Bad rows are quarantined exactly as the ingest does
(:mod:`tagger.data.ingest`: the same checks, the same :class:`~tagger.data.validation.RowProblem`),
written to ``<out stem>.quarantine.parquet`` and counted in the summary, never dropped silently.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig
from tqdm.auto import tqdm

from tagger.batch.engines import local_tables, ray_tables
from tagger.batch.score import PREDICTION_COLUMNS, PROBLEM_COLUMNS, RESULT_SCHEMA, STEPS, Timings, plan
from tagger.data.ingest import duplicate_rows, read_schema
from tagger.data.validation import RowProblem, ValidationReport
from tagger.paths import resolve, shown
from tagger.serving.limits import configured_limits
from tagger.serving.onnx_predictor import BASE_GENERATION
from tagger.serving.registry import Registry
from tagger.serving.request_path import target_key

ENGINES = ("local", "ray")


def outputs(out: str | os.PathLike) -> dict[str, Path]:
    """The files a run writes: the predictions, the quarantined rows and the summary."""
    out = resolve(out)
    return {
        "predictions": out,
        "quarantine": out.with_name(f"{out.stem}.quarantine.parquet"),
        "summary": out.with_name(f"{out.stem}.json"),
    }


def _model(cfg: DictConfig) -> tuple[dict, dict[str, str]]:
    """What scores the file: ``export_dir=`` with its own labels, else the registry's promoted
    model with every merchant's label changes (and the label generation it starts on); and the
    merchants whose latest label row is damaged (scored with their last good labels), and why."""
    if cfg.export_dir:
        export_dir = resolve(cfg.export_dir)
        return {"export_dir": export_dir, "registry_dir": None, "version": None, "generation": None}, {}
    # the registry's served model, its labels checked again by every scorer (a Ray actor too)
    registry = Registry(resolve(cfg.registry_dir), create=False)
    try:
        served = registry.serving()
        view, quarantined = registry.label_view(served[1])
    finally:
        registry.close()
    model = {
        "export_dir": registry.model_dir(served[1]),
        "generation": view.generation,
        "registry_dir": registry.root,
        "version": served[1],
    }
    return model, quarantined


def _check_target(export_dir: Path, target: str, why: bool = False) -> None:
    """Refuse a ``precision_target`` the model has no thresholds for, naming the ones it has, and
    ``why`` from an export that gives no sentence weights."""
    serving = json.loads((export_dir / "serving.json").read_text())
    if why and "sentence_weights" not in (serving.get("outputs") or {}):
        raise ValueError("why=true: this model's export has no sentence weights (export it again)")
    thresholds = serving.get("thresholds") or {}
    if target_key(thresholds, target) is None:
        known = sorted(thresholds.get("global") or {}, key=float)
        raise ValueError(
            f"precision_target={target}: this model has thresholds for {', '.join(known) or 'no target'}"
        )


def predict_file(cfg: DictConfig) -> dict:
    """Score ``cfg.data.path`` with the registry's promoted model and its label changes (or
    ``cfg.export_dir`` with its own labels) on ``cfg.engine``; write the outputs and return the
    summary."""
    if cfg.engine not in ENGINES:
        raise ValueError(f"engine={cfg.engine!r}: expected one of {', '.join(ENGINES)}")
    path = resolve(cfg.data.path)
    read_schema(path, require_labels=False)  # a missing file or column stops here, named
    model, quarantined = _model(cfg)
    _check_target(Path(model["export_dir"]), str(cfg.precision_target), bool(cfg.why))
    pieces = plan(path)
    n_rows = pq.ParquetFile(path).metadata.num_rows
    scorer_args = {
        "path": str(path),
        **{k: (str(v) if v is not None else None) for k, v in model.items()},
        "threads": int(cfg.threads),
        "batch_rows": int(cfg.batch_rows),
        "onnx_batch": int(cfg.onnx_batch),
        "limits": configured_limits(top_k=int(cfg.top_k), precision_target=str(cfg.precision_target)),
        "duplicates": duplicate_rows(path),
        "why": bool(cfg.why),
    }
    if cfg.engine == "local":
        tables = local_tables(pieces, scorer_args)
    else:
        tables = ray_tables(pieces, scorer_args, int(cfg.ray.workers), cfg.ray.address)
    files = outputs(cfg.out)
    started = time.perf_counter()
    columns = (*PREDICTION_COLUMNS, "why") if cfg.why else PREDICTION_COLUMNS
    written = _write(tables, files, n_rows, cfg.progress, columns)
    seconds = time.perf_counter() - started
    summary = _summary(cfg, path, model, files, written, seconds, quarantined)
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write(tables, files: dict[str, Path], n_rows: int, progress: bool, columns: tuple[str, ...]) -> dict:
    """Split each result table into predictions (``columns``) and quarantined rows and append them to
    their files (written under a temporary name, renamed when complete)."""
    files["predictions"].parent.mkdir(parents=True, exist_ok=True)
    # unique to this run: two runs with the same output never write into each other's partial file
    run_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = {
        k: files[k].with_name(f".{files[k].name}.{run_id}.partial") for k in ("predictions", "quarantine")
    }
    timings, problems = Timings(), []
    counts = {"scored": 0, "fallback": 0, "abstained": 0, "no_label": 0}
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        with tqdm(total=n_rows, desc="predict", unit="ticket", unit_scale=True, disable=not progress) as bar:
            for table in tables:
                timings.add(table)
                started = time.perf_counter()
                bad = pc.is_valid(table.column("problem"))
                good = table.filter(pc.invert(bad)).select(columns)
                quarantined = table.filter(bad).select(PROBLEM_COLUMNS)
                for name, part in (("predictions", good), ("quarantine", quarantined)):
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(partial[name], part.schema.remove_metadata())
                    writers[name].write_table(part.replace_schema_metadata(None))
                problems += [RowProblem(**r) for r in quarantined.to_pylist()]
                counts["scored"] += good.num_rows
                counts["fallback"] += pc.sum(good.column("fallback")).as_py() or 0
                counts["abstained"] += pc.sum(good.column("abstained")).as_py() or 0
                counts["no_label"] += good.column("label").null_count
                timings.seconds["write"] += time.perf_counter() - started
                bar.update(good.num_rows + pc.count_distinct(quarantined.column("row")).as_py())
        empty = RESULT_SCHEMA.empty_table()  # a file without rows still gets both outputs, empty
        for name, kept in (("predictions", columns), ("quarantine", PROBLEM_COLUMNS)):
            if name not in writers:
                part = empty.select(kept)
                writers[name] = pq.ParquetWriter(partial[name], part.schema.remove_metadata())
        for writer in writers.values():
            writer.close()
        for name, tmp in partial.items():
            os.replace(tmp, files[name])
    except BaseException:
        for writer in writers.values():
            writer.close()
        for tmp in partial.values():
            tmp.unlink(missing_ok=True)
        raise
    report = ValidationReport(n_rows, counts["scored"], counts["fallback"], problems)
    return {"counts": counts, "report": report, "timings": timings}


def _summary(
    cfg, path: Path, model: dict, files: dict, written: dict, seconds: float, quarantined: dict[str, str]
) -> dict:
    import resource

    report, counts, timings = written["report"], written["counts"], written["timings"]
    version = json.loads((Path(model["export_dir"]) / "serving.json").read_text())["model_version"]
    return {
        "command": "python predict.py",
        "data": shown(path),
        "export_dir": shown(model["export_dir"]),
        "registry_dir": shown(model["registry_dir"]) if model["registry_dir"] else None,
        "model_version": f"{version}/{model['generation'] or BASE_GENERATION}",
        # merchants whose latest label row is damaged: scored with their last good labels
        "quarantined_merchants": dict(sorted(quarantined.items())),
        "engine": cfg.engine,
        "workers": int(cfg.ray.workers) if cfg.engine == "ray" else 1,
        "outputs": {k: shown(v) for k, v in files.items()},
        "rows": report.n_rows,
        "scored": counts["scored"],
        "fallback_no_embeddings": counts["fallback"],
        "abstained": counts["abstained"],
        "no_label_unknown_account_or_abstained": counts["no_label"],
        "validation": report.to_dict(),
        "seconds": round(seconds, 3),
        "tickets_per_second": round(report.n_rows / max(seconds, 1e-9), 1),
        "step_seconds": {k: round(timings.seconds.get(k, 0.0), 3) for k in (*STEPS, "write")},
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def format_summary(summary: dict) -> str:
    """The lines printed at the end of a run."""
    v = summary["validation"]
    lines = [
        f"{summary['rows']:,} rows in {summary['seconds']:.1f} s ({summary['tickets_per_second']:,.0f} "
        f"tickets/s, engine={summary['engine']}, {summary['workers']} worker(s))",
        f"scored {summary['scored']:,} ({summary['fallback_no_embeddings']:,} without embeddings: the "
        f"account prior; {summary['abstained']:,} abstained); quarantined {v['quarantined']:,}",
    ]
    for kind, problem in v["problems"].items():
        lines.append(f"  {kind}: {problem['count']:,} (e.g. {', '.join(problem['ticket_ids'][:3])})")
    lines.append(f"model {summary['model_version']}")
    if summary["quarantined_merchants"]:  # a damaged label row: said, never scored silently
        names = ", ".join(summary["quarantined_merchants"])
        lines.append(f"damaged label rows, scored with their last good labels: {names}")
    total = sum(summary["step_seconds"].values()) or 1.0
    lines.append(
        "time by step (summed over workers): "
        + ", ".join(f"{k} {s:.1f} s ({s / total:.0%})" for k, s in summary["step_seconds"].items())
    )
    lines += [f"wrote {p}" for p in summary["outputs"].values()]
    return "\n".join(lines)
