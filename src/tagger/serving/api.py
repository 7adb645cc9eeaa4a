"""The HTTP API: FastAPI over the ONNX Runtime predictor (no torch in the serving process).

    TAGGER_EXPORT_DIR=models/shared-.../onnx uvicorn tagger.serving.api:app --host 127.0.0.1 --port 8000

POST /predict, POST /predict/batch, GET /health, GET /accounts/{account_id}/labels, docs at /docs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tagger.data.embeddings_json import EMBEDDING_DIM, EmbeddingError, is_empty, parse_embeddings
from tagger.data.tickets import Tickets
from tagger.serving.onnx_predictor import OnnxPredictor


@dataclass(frozen=True)
class Limits:
    """Request caps (413 above them)."""

    max_sentences: int = 256
    max_batch: int = 256
    max_body_bytes: int = 8_000_000
    top_k: int = 3
    precision_target: str = "0.95"


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


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str):
        self.status, self.field, self.message = status, field, message


def _parse(ticket: TicketIn, where: str, limits: Limits) -> np.ndarray:
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


def create_app(export_dir: str | os.PathLike, limits: Limits = Limits()) -> FastAPI:
    """The API serving the export directory ``export_dir``."""
    predictor = OnnxPredictor(export_dir)
    thresholds = predictor.serving.get("thresholds", {})
    global_threshold = (thresholds.get("global") or {}).get(limits.precision_target)
    per_account = (thresholds.get("per_account") or {}).get(limits.precision_target, {})
    app = FastAPI(
        title="tagger",
        version=predictor.version,
        description="Contact-reason tagging: each merchant gets a label from its own label set.",
    )

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_body_bytes:
            return JSONResponse(
                {"detail": {"field": "body", "message": f"over {limits.max_body_bytes} bytes"}},
                status_code=413,
            )
        return await call_next(request)

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
        vectors = []
        for i, t in enumerate(tickets):
            where = f"tickets[{i}]." if prefix else ""
            if t.account_id not in predictor.table.account_slices:
                raise ApiError(404, f"{where}account_id", f"unknown account {t.account_id!r}")
            vectors.append(_parse(t, where, limits))
        batch = Tickets.from_vectors([t.account_id for t in tickets], vectors)
        pred = predictor.predict(batch, k=limits.top_k)
        names = predictor.table.frame["label"].to_numpy(object)
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
                    model_version=predictor.version,
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
        return {
            "status": "ok",
            "model_version": predictor.version,
            "accounts": predictor.table.n_accounts,
            "labels": len(predictor.table),
        }

    @app.get("/accounts/{account_id}/labels")
    def account_labels(account_id: str) -> dict:
        rows = predictor.table.rows_of(account_id)
        if not len(rows):
            raise ApiError(404, "account_id", f"unknown account {account_id!r}")
        frame = predictor.table.frame.iloc[rows.start : rows.stop]
        return {
            "account_id": account_id,
            "threshold": per_account.get(account_id, global_threshold),
            "labels": [
                {"label": r.label, "n_train": int(r.n_train), "prior": float(predictor.prior.probs[i])}
                for i, r in zip(rows, frame.itertuples(), strict=True)
            ],
        }

    return app


def _app_from_env() -> FastAPI | None:
    export_dir = os.environ.get("TAGGER_EXPORT_DIR")
    return create_app(Path(export_dir)) if export_dir else None


app = _app_from_env()
