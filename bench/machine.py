"""Name the machine a benchmark ran on, for the figures it writes."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil


def machine_description() -> str:
    """CPU model, core count, memory and Python version, in one line."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    python = f"Python {platform.python_version()}"
    return f"{cpu}, {psutil.cpu_count()} cores, {memory}, {python}, {platform.system()}"
