"""Training on several processes: ``python train.py`` on one process and with
``trainer.strategy=ddp trainer.devices=2`` (gloo on CPU), same data and config, side by side (the
runs of conf/bench/ddp.yaml): validation metrics, epochs, time, and the peak memory of each run's
whole process tree.

    python -m bench.ddp [key=value ...]          (conf/bench/ddp.yaml)

Writes ``results/benchmarks/ddp.md`` (and ``.json``); each run's metrics.json under ``runs_dir``.
"""

from __future__ import annotations

import json
import sys

from bench.config import bench_config
from bench.machine import machine_description
from bench.processes import sampled_run
from tagger.paths import resolve, shown


def run_train(name: str, overrides: list[str], cfg) -> dict:
    """One ``python train.py`` run (its metrics.json under ``runs_dir/name``), memory sampled."""
    out = resolve(cfg.runs_dir) / name
    # relative to the project (train.py resolves it there): the metrics name no path of this machine
    command = [sys.executable, "train.py", *cfg.train_overrides, f"output_dir={shown(out)}", *overrides]
    run = sampled_run(command, cfg.sample_every)
    shared = json.loads((out / "metrics.json").read_text())["models"]["shared"]
    fit, refit = shared["fit"], shared.get("refit") or {}
    return {
        "run": name,
        "command": " ".join(["python train.py", *cfg.train_overrides, *overrides]),
        "processes": fit.get("world_size", 1),
        "accuracy": shared["overall"]["accuracy"],
        "macro_f1": shared["overall"]["macro_f1"],
        "macro_f1_account_mean": shared["overall"]["macro_f1_account_mean"],
        "top3_accuracy": shared["overall"]["top3_accuracy"],
        "epochs": fit["epochs"],
        "best_epoch": fit["best_epoch"],
        "fit_seconds": shared["fit_seconds"],
        "refit_seconds": refit.get("seconds"),
        "train_tickets": fit["train_tickets"],
        "tickets_per_second": fit["tickets_per_second"],
        "temperature": shared.get("temperature"),
        "wall_seconds": run.wall_seconds,
        "peak_pss_mb": run.peak_pss_mb,
        "peak_rss_sum_mb": run.peak_rss_sum_mb,
        "metrics": shown(out / "metrics.json"),
    }


def markdown(result: dict) -> list[str]:
    """The report's lines."""
    lines = [
        "# Training on several processes (DDP on CPU)",
        "",
        f"Machine: {result['machine']}. Command: `python -m bench.ddp` (conf/bench/ddp.yaml). Both",
        "runs train the shared model on the built-in data with the same config and seed, choose the epoch",
        "and temperature on the same validation slice and refit on the whole window; scores are on that",
        "validation slice. Memory: peak of the whole process tree (both ranks), sampled every "
        f"{result['sample_every']} s.",
        "",
        "| run | processes | accuracy | macro-F1 | macro-F1 (account mean) | top-3 | epochs (best) "
        "| fit s | refit s | training tickets/s | whole run s | peak PSS MB | sum of RSS MB |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        refit = f"{r['refit_seconds']:.0f}" if r["refit_seconds"] is not None else "-"
        lines.append(
            f"| {r['run']} | {r['processes']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} "
            f"| {r['macro_f1_account_mean']:.3f} | {r['top3_accuracy']:.3f} "
            f"| {r['epochs']} ({r['best_epoch']}) "
            f"| {r['fit_seconds']:.0f} | {refit} | {r['tickets_per_second']:,.0f} | {r['wall_seconds']:.0f} "
            f"| {r['peak_pss_mb']:,.0f} | {r['peak_rss_sum_mb']:,.0f} |"
        )
    lines += [
        "",
        "`training tickets/s`: training tickets times epochs over the selection fit's time, all processes "
        "together. Under DDP each process takes every other ticket of an epoch, so an epoch has half the "
        "optimiser steps, each over a global batch of devices x `model.optim.batch_size`.",
    ]
    lines += ["", "Commands:", ""] + [f"- {r['run']}: `{r['command']}`" for r in result["runs"]]
    return lines


def main(argv: list[str] | None = None) -> None:
    cfg = bench_config("ddp", argv, __doc__)
    runs = [run_train(name, [str(o) for o in overrides], cfg) for name, overrides in cfg.runs.items()]
    result = {"machine": machine_description(), "sample_every": float(cfg.sample_every), "runs": runs}
    out_dir = resolve(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ddp.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "ddp.md").write_text("\n".join(markdown(result)) + "\n")
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
