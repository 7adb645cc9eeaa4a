"""The HTTP API: FastAPI over the ONNX Runtime predictor (no torch in the serving process).

    TAGGER_EXPORT_DIR=models/shared-.../onnx uvicorn tagger.serving.api:app --host 127.0.0.1 --port 8000

POST /predict, POST /predict/batch, GET /health, GET /accounts/{account_id}/labels, docs at /docs;
POST /admin/labels (``Authorization: Bearer $TAGGER_ADMIN_TOKEN``) adds, renames or retires a
merchant's labels without a restart. Every process serving the same export directory picks up a
new label generation within ``reload_interval`` seconds; one that fails its checks is refused and
the previous one keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tagger.data.embeddings_json import EMBEDDING_DIM, EmbeddingError, is_empty, parse_embeddings
from tagger.data.tickets import Tickets
from tagger.model.label_update import LabelUpdate, UpdateError
from tagger.serving.admin import TextEmbedder, update_export
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.onnx_predictor import OnnxPredictor


@dataclass(frozen=True)
class Limits:
    """Request caps (413 above them) and the request timeout (503); conf/serve.yaml ``limits``."""

    max_sentences: int = 256
    max_batch: int = 256
    max_body_bytes: int = 8_000_000
    max_label_name: int = 200
    max_label_changes: int = 256
    request_timeout_s: float = 10.0
    top_k: int = 3
    precision_target: str = "0.95"

    @classmethod
    def from_config(cls, cfg) -> Limits:
        """From a mapping such as conf/serve.yaml's ``limits`` (unknown keys are an error)."""
        values = dict(cfg or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown serving limits: {sorted(unknown)}")
        return cls(**{k: (str(v) if k == "precision_target" else v) for k, v in values.items()})


class BodyLimit:
    """ASGI middleware: reads the body (chunked or not) and answers 413 past ``max_bytes`` before the
    application sees it; a Content-Length over the cap is refused without reading."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        too_big = declared.isdigit() and int(declared) > self.max_bytes
        chunks, size = [], 0
        while not too_big:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_big = size > self.max_bytes
            if not message.get("more_body"):
                break
        if too_big:
            detail = {"detail": {"field": "body", "message": f"over {self.max_bytes} bytes"}}
            return await JSONResponse(detail, status_code=413)(scope, receive, send)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[dict], receive):
    async def replayed():
        return messages.pop(0) if messages else await receive()

    return replayed


class TicketIn(BaseModel):
    """One ticket: the account and its sentence embeddings exactly as in the parquet."""

    account_id: str = Field(..., min_length=1, examples=["4b80dc56"])
    email_sentence_embeddings: str | dict[str, Any] | None = Field(
        None, description="JSON object (or its text) of hashed sentence id -> 384 floats; null or {} if empty"
    )


class BatchIn(BaseModel):
    tickets: list[TicketIn]


class LabelScore(BaseModel):
    label: str
    score: float


class PredictionOut(BaseModel):
    contact_reason: str | None
    confidence: float
    top_k: list[LabelScore]
    abstained: bool = Field(..., description="confidence below the account's threshold (or no answer)")
    fallback: bool = Field(..., description="no embeddings: scored from the account's label prior")
    model_version: str


class ExampleIn(BaseModel):
    """A labelled ticket to fold into its label's vector."""

    label: str = Field(..., min_length=1)
    email_sentence_embeddings: str | dict[str, Any]


class LabelUpdateIn(BaseModel):
    """One merchant's label change; applied whole or not at all."""

    account_id: str = Field(..., min_length=1)
    add: list[str] = Field([], description="new label names (scored from their names at once)")
    rename: dict[str, str] = Field({}, description="old name -> new name (the label keeps its vector)")
    retire: list[str] = Field([], description="labels no longer predicted")
    examples: list[ExampleIn] = Field([], description="labelled tickets blended into their labels' vectors")
    create_account: bool = Field(False, description="the account is new (it needs labels in add)")


class LabelUpdateOut(BaseModel):
    generation: str
    previous: str
    model_version: str
    labels: list[str]
    seconds: float


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the server's memory
    grew with every label update); a no-op where malloc_trim does not exist."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _refuse_admin(authorization: str | None, admin_token: str | None) -> tuple[int, str] | None:
    """(status, message) when the admin call must be refused; the token is compared in constant time."""
    if not admin_token:
        return 403, "the admin endpoint is disabled (no TAGGER_ADMIN_TOKEN)"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), admin_token.encode()):
        return 401, "missing or wrong bearer token"
    return None


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str):
        self.status, self.field, self.message = status, field, message


def parse_ticket(ticket: TicketIn, where: str, limits: Limits) -> np.ndarray:
    """One ticket's sentence vectors ``[n, 384]`` from its request body, checked against ``limits``
    (``where`` names the ticket in an error)."""
    text = ticket.email_sentence_embeddings
    if is_empty(text):
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    try:
        _, vectors = parse_embeddings(text)
    except EmbeddingError as err:
        raise ApiError(422, f"{where}email_sentence_embeddings", str(err)) from None
    if len(vectors) > limits.max_sentences:
        raise ApiError(
            413,
            f"{where}email_sentence_embeddings",
            f"{len(vectors)} sentences; at most {limits.max_sentences} per ticket",
        )
    return vectors


def create_app(
    export_dir: str | os.PathLike,
    limits: Limits = Limits(),
    admin_token: str | None = None,
    embed: TextEmbedder | None = None,
    reload_interval: float = 0.25,
) -> FastAPI:
    """The API serving the export directory ``export_dir``. ``admin_token`` enables
    ``POST /admin/labels``; ``embed`` embeds label names (default: the export's all-MiniLM-L6-v2
    in ONNX Runtime, loaded only when the admin endpoint is enabled)."""
    predictor = OnnxPredictor(export_dir)
    if admin_token and embed is None:
        embed = NameEncoder(export_dir).embed
    # Label updates and reloads allocate megabytes; one thread for them keeps that memory in one
    # malloc arena (spread over the request threads, the server's memory grew with every update).
    label_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels")

    def then_release(fn, *args):
        before = predictor.view.generation
        try:
            return fn(*args)
        finally:
            if predictor.view.generation != before:  # the old generation's memory is free now
                _release_free_memory()

    async def in_label_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(label_thread, then_release, fn, *args)

    last_refresh = [time.monotonic()]
    thresholds = predictor.serving.get("thresholds", {})
    global_threshold = (thresholds.get("global") or {}).get(limits.precision_target)
    per_account = (thresholds.get("per_account") or {}).get(limits.precision_target, {})
    app = FastAPI(
        title="tagger",
        version=predictor.version,
        description="Contact-reason tagging: each merchant gets a label from its own label set.",
    )

    @app.middleware("http")
    async def reload_and_timeout(request: Request, call_next):
        if request.url.path.startswith("/admin/"):  # the token first: nothing about the body before it
            refused = _refuse_admin(request.headers.get("authorization"), admin_token)
            if refused:
                return JSONResponse(
                    {"detail": {"field": "authorization", "message": refused[1]}}, status_code=refused[0]
                )
        now = time.monotonic()
        if now - last_refresh[0] >= reload_interval:  # another process may have updated the labels
            last_refresh[0] = now
            await in_label_thread(predictor.refresh)
        try:
            return await asyncio.wait_for(call_next(request), limits.request_timeout_s)
        except TimeoutError:
            message = f"no answer within {limits.request_timeout_s:g} s"
            return JSONResponse({"detail": {"field": None, "message": message}}, status_code=503)

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"detail": {"field": err.field, "message": err.message}}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in err.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):  # never a stack trace in a response
        return JSONResponse({"detail": {"field": None, "message": "internal error"}}, status_code=500)

    def score(tickets: list[TicketIn], prefix: bool) -> list[PredictionOut]:
        view = predictor.view  # one label generation for the whole request
        vectors = []
        for i, t in enumerate(tickets):
            where = f"tickets[{i}]." if prefix else ""
            if t.account_id not in view.state.accounts:
                raise ApiError(404, f"{where}account_id", f"unknown account {t.account_id!r}")
            vectors.append(parse_ticket(t, where, limits))
        batch = Tickets.from_vectors([t.account_id for t in tickets], vectors)
        pred = predictor.predict(batch, k=limits.top_k, view=view)
        version = f"{predictor.serving['model_version']}/{view.generation}"
        names = pred.names
        out = []
        for i, t in enumerate(tickets):
            conf = float(pred.confidence[i])
            threshold = per_account.get(t.account_id, global_threshold)
            below = threshold is None or conf < threshold
            top = [
                LabelScore(label=names[r], score=float(p))
                for r, p in zip(pred.top_rows[i], pred.top_probs[i], strict=True)
                if r >= 0
            ]
            out.append(
                PredictionOut(
                    contact_reason=top[0].label if top and not pred.abstained[i] else None,
                    confidence=conf,
                    top_k=top,
                    abstained=bool(pred.abstained[i] or below),
                    fallback=bool(pred.fallback[i]),
                    model_version=version,
                )
            )
        return out

    @app.post("/predict", response_model=PredictionOut)
    def predict(ticket: TicketIn) -> PredictionOut:
        """The contact reason of one ticket."""
        return score([ticket], prefix=False)[0]

    @app.post("/predict/batch", response_model=list[PredictionOut])
    def predict_batch(batch: BatchIn) -> list[PredictionOut]:
        """Contact reasons of up to ``max_batch`` tickets."""
        if len(batch.tickets) > limits.max_batch:
            raise ApiError(
                413, "tickets", f"{len(batch.tickets)} tickets; at most {limits.max_batch} per batch"
            )
        return score(batch.tickets, prefix=True) if batch.tickets else []

    @app.get("/health")
    def health() -> dict:
        view = predictor.view
        return {
            "status": "ok",
            "model_version": f"{predictor.serving['model_version']}/{view.generation}",
            "label_generation": view.generation,
            "last_reload_error": predictor.last_reload_error,
            "admin": "ready" if admin_token else "disabled",
            "accounts": len(view.state.accounts),
            "labels": view.state.n_labels,
        }

    @app.get("/accounts/{account_id}/labels")
    def account_labels(account_id: str) -> dict:
        view = predictor.view
        labels = view.labels_of(account_id)
        if labels is None:
            raise ApiError(404, "account_id", f"unknown account {account_id!r}")
        return {
            "account_id": account_id,
            "label_generation": view.generation,
            "threshold": per_account.get(account_id, global_threshold),
            "labels": [
                {"label": name, "n_train": int(n), "prior": float(p)}
                for name, n, p in zip(labels.labels, labels.n_train, labels.prior, strict=True)
            ],
        }

    @app.post(
        "/admin/labels",
        response_model=LabelUpdateOut,
        responses={401: {"description": "missing or wrong token"}, 403: {"description": "admin disabled"}},
    )
    async def update_labels(
        body: LabelUpdateIn,
        authorization: str | None = Header(None, description="Bearer TOKEN (checked before the body)"),
    ) -> LabelUpdateOut:
        """Add, rename or retire one merchant's labels, folding in examples; live at once, no restart."""
        return await in_label_thread(apply_update_request, body)

    def apply_update_request(body: LabelUpdateIn) -> LabelUpdateOut:
        if len(body.examples) > limits.max_batch:
            raise ApiError(413, "examples", f"{len(body.examples)} examples; at most {limits.max_batch}")
        changes = len(body.add) + len(body.rename) + len(body.retire)
        if changes > limits.max_label_changes:
            raise ApiError(413, "body", f"{changes} label changes; at most {limits.max_label_changes}")
        names = [("add", n) for n in body.add] + [(f"rename.{k}", v) for k, v in body.rename.items()]
        for where, name in names:
            if len(name) > limits.max_label_name:
                raise ApiError(
                    422, where, f"a label name of {len(name)} characters; at most {limits.max_label_name}"
                )
        examples: dict[str, list[np.ndarray]] = {}
        for i, ex in enumerate(body.examples):
            vectors = parse_ticket(
                TicketIn(account_id=body.account_id, email_sentence_embeddings=ex.email_sentence_embeddings),
                f"examples[{i}].",
                limits,
            )
            if not len(vectors):
                raise ApiError(422, f"examples[{i}].email_sentence_embeddings", "an example needs sentences")
            examples.setdefault(ex.label, []).append(vectors)
        update = LabelUpdate(
            body.account_id, body.add, body.rename, body.retire, examples, body.create_account
        )
        try:
            result = update_export(predictor, [update], embed, by="api")
        except UpdateError as err:
            raise ApiError(err.status, err.field, err.message) from None
        return LabelUpdateOut(
            generation=result["generation"],
            previous=result["previous"],
            model_version=result["model_version"],
            labels=result["accounts"][update.account_id],
            seconds=result["seconds"],
        )

    return app


def serve_config(overrides: list[str] | None = None):
    """conf/serve.yaml with ``key=value`` overrides applied."""
    from omegaconf import OmegaConf

    from tagger.paths import PROJECT_ROOT

    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "serve.yaml")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides or []))


def app_from_config(cfg, export_dir: str | os.PathLike) -> FastAPI:
    """The API for ``export_dir`` as conf/serve.yaml (``cfg``) and $TAGGER_ADMIN_TOKEN say; a bad export
    refuses to start with one clear line (SystemExit), not a traceback."""
    from tagger.manifest import ArtifactError

    token = os.environ.get("TAGGER_ADMIN_TOKEN") or None
    try:
        return create_app(
            Path(export_dir),
            Limits.from_config(cfg.limits),
            admin_token=token,
            reload_interval=float(cfg.reload_interval),
        )
    except (ArtifactError, OSError, ValueError, KeyError) as err:
        raise SystemExit(f"tagger API refuses to start: {export_dir}: {type(err).__name__}: {err}") from None


def _app_from_env() -> FastAPI | None:
    export_dir = os.environ.get("TAGGER_EXPORT_DIR")
    return app_from_config(serve_config(), export_dir) if export_dir else None


app = _app_from_env()
