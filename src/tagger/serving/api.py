"""The HTTP API: FastAPI over the ONNX Runtime predictor (no torch in the serving process).

    python -m tagger.serving [key=value ...]                       # conf/serve.yaml, workers included
    TAGGER_REGISTRY_DIR=registry uvicorn --factory tagger.serving.api:app_from_env

It serves the model promoted in a registry (:mod:`tagger.serving.registry`) with every merchant's
label changes. POST /predict, POST /predict/batch, GET /health, GET /ready,
GET /accounts/{account_id}/labels (``docs=true``: /docs and /openapi.json); with
``Authorization: Bearer $TAGGER_ADMIN_TOKEN``:
POST /admin/labels (add, rename or retire a merchant's labels without a restart),
POST /admin/labels/rollback, POST /admin/promote, POST /admin/rollback, GET /admin/models, POST /feedback
(agents' corrections, :mod:`tagger.serving.feedback`). Every
process serving the same registry picks up a promotion or a label change within ``reload_interval``
seconds (a background thread looks; no request waits for it, none fails during a swap).

The prediction endpoints are answered by :class:`PredictRoutes`, a plain ASGI layer in front of
FastAPI's router (FastAPI's request handling cost more than the model: 0.19 ms a request): the body
is read with orjson and scored in one scoring thread per worker (:mod:`tagger.serving.request_path`),
so the event loop stays free to admit or refuse the next request (:mod:`tagger.serving.gate`). Their
FastAPI declarations below give the OpenAPI document and are never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from omegaconf import OmegaConf

from tagger.paths import resolve
from tagger.serving import routes
from tagger.serving.feedback import FeedbackStore
from tagger.serving.gate import Admission, Gate, send_json
from tagger.serving.header_deadline import HeaderDeadline
from tagger.serving.limits import Limits, configured_limits, limits_from
from tagger.serving.live import Live
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.prediction_log import PredictionLog
from tagger.serving.registry import Registry, TextEmbedder
from tagger.serving.request_path import ApiError, RequestScorer, error_body
from tagger.serving.telemetry import DROPPED, Telemetry, request_log

__all__ = ["ApiError", "Limits", "app_from_config", "app_from_env", "create_app", "serve_config"]
log = logging.getLogger(__name__)
INTERNAL_ERROR = error_body(None, "internal error")


class PredictRoutes:
    """ASGI layer answering ``POST`` to ``routes`` (path -> (body bytes, query string) -> response
    bytes, run in the one-thread ``pool``) and passing everything else on to ``app``."""

    def __init__(self, app, routes: dict, pool: ThreadPoolExecutor, telemetry: Telemetry | None = None):
        self.app, self.routes, self.pool, self.telemetry = app, routes, pool, telemetry

    async def __call__(self, scope, receive, send):
        fn = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if fn is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        message = await receive()  # the gate has read the whole body: one message
        answer = None
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self.pool, fn, message["body"], scope.get("query_string", b"")
            )
            content, status = answer.body, 200
        except ApiError as err:
            content, status = err.body(), err.status
        except Exception:  # never a stack trace in a response
            log.exception("scoring failed")
            content, status = INTERNAL_ERROR, 500
        await send_json(send, status, content)
        if answer is not None and self.telemetry is not None:  # after the answer went out
            self.telemetry.answered(scope, answer.tickets, answer.answers)


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the server's memory
    grew with every label update); a no-op where malloc_trim does not exist."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class LabelWork:
    """Label changes and reloads, all in one thread: they allocate megabytes, and one thread keeps
    that memory in one malloc arena (spread over request threads, memory grew with every update)."""

    def __init__(self, live: Live, telemetry: Telemetry | None = None):
        self.live, self.telemetry = live, telemetry
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels")

    def _then_release(self, fn, *args):
        before = self.live.current
        try:
            return fn(*args)
        finally:
            if self.live.current is not before:  # the old model's or labels' memory is free now
                _release_free_memory()
            if self.telemetry is not None:
                self.telemetry.served(self.live)

    def call(self, fn, *args):
        """``fn(*args)`` in the label thread, waiting for it."""
        return self.pool.submit(self._then_release, fn, *args).result()

    async def run(self, fn, *args):
        """``fn(*args)`` in the label thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._then_release, fn, *args)

    def refresh(self) -> None:
        """Catch up with the registry now."""
        self.call(self.live.refresh)


def _lower_priority(nice: int) -> None:
    """Run the calling thread ``nice`` steps below the rest of the process (Linux): when the CPU is
    short, the event loop, which admits and refuses requests, goes before the scoring."""
    if nice:
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def _poll_labels(work: weakref.ref, interval: float) -> None:
    """Every ``interval`` seconds, catch up with the live label generation; ends with its app."""
    stop = threading.Event()
    while not stop.wait(interval):
        labels = work()
        if labels is None:
            return
        try:
            labels.refresh()
        except RuntimeError:  # the interpreter is shutting down
            return
        del labels


def create_app(
    registry_dir: str | os.PathLike,
    limits: Limits | None = None,
    admin_token: str | None = None,
    embed: TextEmbedder | None = None,
    reload_interval: float = 0.25,
    scoring_nice: int = 0,
    lock_wait: float = 5.0,
    read_token: str | None = None,
    docs: bool = False,
    logs: dict | None = None,
    metrics: bool = True,
) -> FastAPI:
    """The API serving the model promoted in the registry at ``registry_dir``. ``admin_token``
    enables the admin routes; ``embed`` embeds label names (default: the export's all-MiniLM-L6-v2
    in ONNX Runtime, loaded only when the admin routes are enabled). ``reload_interval`` 0 looks at
    the registry before every request instead of in the background (tests). ``lock_wait``: the
    longest an admin change waits for another writer. ``read_token``: every route but ``/health``
    needs it (or the admin token) as a bearer token, and ``/health`` shows details only with one.
    ``docs``: serve ``/docs`` and ``/openapi.json``. ``logs``: conf/serve.yaml's ``logs`` (the
    request log and the prediction log; None: neither). ``metrics``: count every request and answer
    for ``/metrics`` (False with no logs: the request path does none of it, for measuring its cost)."""
    limits = limits or configured_limits()
    live = Live(Registry(registry_dir, create=False, lock_wait=lock_wait), lambda p: RequestScorer(p, limits))
    if admin_token and embed is None:
        embed = NameEncoder(live.predictor.export_dir).embed
    telemetry = telemetry_from(logs, lambda: live.current.version, metrics)
    telemetry.served(live)
    observed = telemetry if metrics or telemetry.request_log or telemetry.prediction_log else None
    labels = LabelWork(live, telemetry)
    if reload_interval > 0:
        poller = threading.Thread(
            target=_poll_labels, args=(weakref.ref(labels), reload_interval), name="label-reload", daemon=True
        )
        poller.start()
    scoring = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="scoring", initializer=_lower_priority, initargs=(scoring_nice,)
    )
    feedback = FeedbackStore(registry_dir, lock_wait) if admin_token else None  # agents' corrections
    service = routes.Service(live, labels, Admission(), limits, admin_token, embed, read_token, feedback)
    app = FastAPI(
        lifespan=_closing(telemetry),
        title="tagger",
        version=live.current.version,
        description="Contact-reason tagging: each merchant gets a label from its own label set.",
        **({} if docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    app.state.service = service
    # a request takes the model served when it starts (live.current) and keeps it to its end
    app.add_middleware(
        PredictRoutes,
        routes={
            "/predict": lambda body, query: live.current.scorer.respond(body, query, batch=False),
            "/predict/batch": lambda body, query: live.current.scorer.respond(body, query, batch=True),
        },
        pool=scoring,
        telemetry=observed,
    )
    app.add_middleware(  # added last: the outer layer
        Gate,
        limits=limits,
        admission=service.admission,
        admin_token=admin_token,
        before=labels.refresh if reload_interval <= 0 else None,
        read_token=read_token,
        telemetry=observed,
    )
    _error_handlers(app)
    for router in (routes.predictions, routes.labels, routes.admin):
        app.include_router(router)
    return app


def telemetry_from(logs: dict | None, version, metrics: bool = True) -> Telemetry:
    """The logs conf/serve.yaml's ``logs`` asks for (None: none), and the metrics unless ``metrics``
    is False."""
    if logs is None:
        return Telemetry(version, count=metrics)
    requests = None
    if logs["requests"] is not None:
        path = None if logs["requests"] == "stderr" else str(resolve(logs["requests"]))
        requests = request_log(path, logs["buffer"], logs["flush_s"])
    predictions = None
    if logs["predictions"] is not None:
        predictions = PredictionLog(
            resolve(logs["predictions"]),
            logs["rotate_rows"],
            logs["rotate_s"],
            logs["buffer"],
            logs["flush_s"],
            on_drop=DROPPED.labels("prediction").inc,
        )
    return Telemetry(version, request_log=requests, prediction_log=predictions, count=metrics)


def _closing(telemetry: Telemetry):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        telemetry.close()  # the server has drained its requests: write what the logs hold

    return lifespan


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return Response(err.body(), status_code=err.status, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in err.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):  # never a stack trace in a response
        return Response(INTERNAL_ERROR, status_code=500, media_type="application/json")


def serve_config(overrides: list[str] | None = None):
    """conf/serve.yaml composed by Hydra with ``key=value`` overrides (an unknown key is an error)."""
    from tagger.paths import compose_config

    return compose_config("serve", overrides)


def app_from_config(cfg, registry_dir: str | os.PathLike) -> FastAPI:
    """The API for the registry at ``registry_dir`` as conf/serve.yaml (``cfg``) and
    $TAGGER_ADMIN_TOKEN say; a missing registry, no promoted model or a bad export refuses to start
    with one clear line (SystemExit), not a traceback."""
    from tagger.manifest import ArtifactError

    token = os.environ.get("TAGGER_ADMIN_TOKEN") or None
    read_token = os.environ.get("TAGGER_READ_TOKEN") or None
    for name, value in (("TAGGER_ADMIN_TOKEN", token), ("TAGGER_READ_TOKEN", read_token)):
        if value is not None and len(value) < MIN_TOKEN_CHARS:
            raise SystemExit(
                f"tagger API refuses to start: {name} has {len(value)} characters; at least "
                f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 16`)"
            )
    # the event loop (admitting and refusing) takes the GIL back from the scoring thread within this
    sys.setswitchinterval(float(cfg.gil_switch_interval))
    HeaderDeadline.timeout = float(cfg.header_timeout_s)  # this process's server protocol (__main__)
    try:
        return create_app(
            Path(registry_dir),
            limits_from(cfg.limits),
            admin_token=token,
            reload_interval=float(cfg.reload_interval),
            scoring_nice=int(cfg.scoring_nice),
            lock_wait=float(cfg.lock_wait),
            read_token=read_token,
            docs=bool(cfg.docs),
            logs=OmegaConf.to_container(cfg.logs),
            metrics=bool(cfg.metrics),
        )
    except (ArtifactError, OSError, ValueError, KeyError, sqlite3.Error) as err:
        raise SystemExit(
            f"tagger API refuses to start: {registry_dir}: {type(err).__name__}: {err}"
        ) from None


OVERRIDES_ENV = "TAGGER_SERVE_OVERRIDES"
MIN_TOKEN_CHARS = 32
REGISTRY_ENV = "TAGGER_REGISTRY_DIR"


def app_from_env() -> FastAPI:
    """The app factory each server worker calls: $TAGGER_REGISTRY_DIR (else the config's
    ``registry_dir``) and conf/serve.yaml with the overrides in $TAGGER_SERVE_OVERRIDES (a JSON list
    of ``key=value``, as ``python -m tagger.serving`` sets it)."""
    cfg = serve_config(json.loads(os.environ.get(OVERRIDES_ENV) or "[]"))
    return app_from_config(cfg, os.environ.get(REGISTRY_ENV) or resolve(cfg.registry_dir))
