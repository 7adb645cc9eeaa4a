"""Run the HTTP API: ``python -m tagger.serving [key=value ...]`` (keys of conf/serve.yaml).

    python -m tagger.serving                              # registry/'s promoted model, 127.0.0.1:8000
    python -m tagger.serving registry_dir=/srv/tagger port=9000 limits.max_batch=64
    python -m tagger.serving workers=2                        # two server processes on one port
    TAGGER_ADMIN_TOKEN=... python -m tagger.serving           # enables the /admin/ routes

On SIGTERM or SIGINT it stops accepting, lets the requests in flight finish (``graceful_shutdown_s``)
and writes what its logs hold before it exits. Binds to loopback unless ``host=`` says otherwise;
runs with ``MALLOC_ARENA_MAX`` set (conf/serve.yaml ``malloc_arena_max``) unless the environment
already sets it. A missing registry, a registry with no promoted model, or a missing, truncated or
altered export refuses to start with one line saying what is wrong (exit status 1).
"""

from __future__ import annotations

import json
import os
import sys

from tagger.paths import command_config, resolve
from tagger.serving.api import OVERRIDES_ENV, REGISTRY_ENV, app_from_config


def main(argv: list[str] | None = None, reexec: bool = False) -> int:
    """Entry point; ``reexec``: the command line itself, which may run again with MALLOC_ARENA_MAX set."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = command_config("serve", argv, __doc__)
    except SystemExit as stop:  # --help, or a mistake said in one line
        return int(stop.code or 0)
    arenas = str(cfg.malloc_arena_max)
    if reexec and arenas != "0" and os.environ.get("MALLOC_ARENA_MAX") is None:
        # glibc reads MALLOC_ARENA_MAX at start-up only: run again with it set. One arena per
        # request thread let the resident memory creep up under a long load with label updates.
        os.environ["MALLOC_ARENA_MAX"] = arenas
        os.execv(sys.executable, [sys.executable, "-m", "tagger.serving", *argv])
    registry_dir = str(os.environ.get(REGISTRY_ENV) or resolve(cfg.registry_dir))
    workers = int(cfg.workers)
    if workers > 1:
        # each worker process builds its own app (its own predictor and scoring thread) from the
        # same registry; check it here so a bad one refuses to start once, with one line
        _check_registry(registry_dir)
        _metrics_dir()
        os.environ[REGISTRY_ENV] = registry_dir
        os.environ[OVERRIDES_ENV] = json.dumps(argv)
        app = "tagger.serving.api:app_from_env"
    else:
        app = app_from_config(cfg, registry_dir)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the API listens on {cfg.host}, not only on loopback", file=sys.stderr)
    import uvicorn

    from tagger.serving.header_deadline import HeaderDeadline

    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers,
        host=cfg.host,
        port=int(cfg.port),
        # httptools with a deadline on request headers (uvicorn has none); h11 as it is
        http=HeaderDeadline if cfg.http == "httptools" else cfg.http,
        loop=cfg.loop,
        timeout_keep_alive=int(cfg.timeout_keep_alive),
        limit_concurrency=int(cfg.max_connections) or None,
        timeout_graceful_shutdown=int(cfg.graceful_shutdown_s) or None,
        access_log=False,
        log_level="warning",
    )
    return 0


def _metrics_dir() -> None:
    """Point the workers' prometheus-client at a fresh directory (its multiprocess mode: any worker's
    /metrics reports them all), removed when the server exits; one the environment names is kept."""
    from tagger.serving.telemetry import MULTIPROC_ENV

    if os.environ.get(MULTIPROC_ENV):
        return
    import atexit
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="tagger-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)


def _check_registry(registry_dir: str) -> None:
    import sqlite3

    from tagger.manifest import ArtifactError, verify
    from tagger.serving.onnx_predictor import EXPORT_FILES
    from tagger.serving.registry import Registry

    try:
        registry = Registry(registry_dir, create=False)
        verify(registry.model_dir(registry.serving()[1]), EXPORT_FILES)
        registry.close()
    except (ArtifactError, OSError, ValueError, sqlite3.Error) as err:
        message = f"tagger API refuses to start: {registry_dir}: {type(err).__name__}: {err}"
        raise SystemExit(message) from None


if __name__ == "__main__":
    raise SystemExit(main(reexec=True))
