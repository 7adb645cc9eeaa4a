"""A command run as its own process with the peak memory of its whole process tree sampled while it
runs (the driver and whatever it starts: Ray's raylet and workers, DDP's second rank)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

from tagger.paths import PROJECT_ROOT


@dataclass
class SampledRun:
    """What :func:`sampled_run` saw: the output, the wall time, and the peaks of the tree's summed
    proportional set size (shared pages counted once) and summed resident size, MB."""

    stdout: str
    stderr: str
    wall_seconds: float
    peak_pss_mb: float
    peak_rss_sum_mb: float


def tree_processes(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (none if it has gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(sum of proportional set sizes, sum of resident sizes) of a process and its descendants, MB."""
    pss = rss = 0
    for process in tree_processes(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = process.memory_full_info()
            pss, rss = pss + info.pss, rss + info.rss
    return pss / 2**20, rss / 2**20


def sampled_run(command: list[str], every: float = 0.25) -> SampledRun:
    """Run ``command`` in the project root, sampling its tree's memory every ``every`` seconds;
    RuntimeError with the end of its stderr if it fails."""
    started = time.perf_counter()
    pipe = subprocess.PIPE
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=pipe, stderr=pipe, text=True)
    peak = [0.0, 0.0]

    def sample() -> None:
        while process.poll() is None:
            pss, rss = tree_memory_mb(process.pid)
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return SampledRun(stdout, stderr, wall, peak[0], peak[1])
