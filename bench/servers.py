"""Server processes the serving benchmark drives, each on a free loopback port: the API as it is
(``python -m tagger.serving`` over a scratch registry serving an export) and a reference FastAPI app
that answers a constant (:mod:`bench.constant_app`, the floor of an HTTP round trip)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from bench.processes import tree_processes
from tagger.paths import resolve

TOOLS_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the top-level bench package


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(command: list[str], port: int, env: dict | None = None, cwd: Path | None = None):
    """Run ``command`` (a server on ``port``) until ``/health`` answers 200; yields the process,
    stops it (and its workers) on exit."""
    server = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}: {command}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the server did not start: {command}")
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def promoted_export(registry_dir: str | os.PathLike | None = None) -> Path:
    """The export directory of the model promoted in the registry at ``registry_dir`` (relative to
    the project root; None: ``registry``): what a benchmark or check measures unless told
    ``export_dir=``. SystemExit with one line when there is no registry or nothing is promoted."""
    from tagger.manifest import ArtifactError
    from tagger.serving.registry import Registry

    try:
        registry = Registry(resolve(registry_dir or "registry"), create=False)
        try:
            return registry.model_dir(registry.serving()[1])
        finally:
            registry.close()
    except ArtifactError as err:  # no registry, or nothing promoted
        raise SystemExit(str(err)) from None


def registry_of(export_dir: Path, root: Path | None = None) -> Path:
    """A registry serving ``export_dir`` (a registry itself is returned as it is): under ``root``,
    else one scratch registry per export directory in the temporary directory."""
    from tagger.serving.registry import DB, Registry

    export_dir = Path(export_dir)
    if (export_dir / DB).exists():
        return export_dir
    key = hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:12]
    root = root or Path(tempfile.gettempdir()) / f"tagger-registry-{key}"
    registry = Registry(root)
    version, _ = registry.register(export_dir, by="bench")
    if registry.served() is None or registry.served()[1] != version:
        registry.promote(version, by="bench")
    registry.close()
    return root


def api_command(export_dir: Path, port: int, overrides: tuple[str, ...] = ()) -> dict:
    """The command serving ``export_dir`` (an export, or a registry) with the installed API."""
    registry = registry_of(export_dir)
    command = [sys.executable, "-m", "tagger.serving", f"registry_dir={registry}", f"port={port}", *overrides]
    return {"command": command}


def constant_app(port: int) -> dict:
    """The command serving :mod:`bench.constant_app` (FastAPI, the same server settings), run from
    the project root with it on the path, so that the top-level ``bench`` package imports."""
    command = [sys.executable, "-m", "uvicorn", "bench.constant_app:app", "--port", str(port)]
    command += ["--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
    path = os.pathsep.join(p for p in (str(TOOLS_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {"command": command, "env": {"PYTHONPATH": path}, "cwd": TOOLS_ROOT}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a server's workers), MB."""
    total = 0
    for process in tree_processes(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


@contextmanager
def api_server(export_dir: Path, **env):
    """The API (``python -m tagger.serving``) on a free loopback port, as a separate process;
    yields (process, url)."""
    port = free_port()
    with server_process(api_command(export_dir, port)["command"], port, env) as server:
        yield server, f"http://127.0.0.1:{port}"


@contextmanager
def admin_server(export_dir: Path):
    """A scratch registry serving ``export_dir`` with a random admin token (label changes go to the
    scratch registry only); yields (process, url, the registry, the Authorization header)."""
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="tagger-served-") as work:
        served = registry_of(export_dir, Path(work) / "registry")
        with api_server(served, TAGGER_ADMIN_TOKEN=token) as (server, url):
            yield server, url, served, {"Authorization": f"Bearer {token}"}
