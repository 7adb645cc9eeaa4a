"""The API's routes, in three routers over one injected :class:`Service` (``app.state.service``):
predictions (their schemas; :class:`tagger.serving.api.PredictRoutes` answers them), labels and
health, and the admin endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from tagger.model.label_update import LabelUpdate, UpdateError
from tagger.serving.admin import TextEmbedder, update_export
from tagger.serving.gate import Admission
from tagger.serving.limits import Limits
from tagger.serving.onnx_predictor import OnnxPredictor
from tagger.serving.request_path import ApiError, RequestScorer, ticket_vectors
from tagger.serving.schemas import (
    BatchIn,
    LabelUpdateIn,
    LabelUpdateOut,
    PredictionOut,
    TicketIn,
    request_body,
)


@dataclass
class Service:
    """What the routes share: the predictor, its request scorer, the label thread (``labels``: an
    object with an awaitable ``run(fn, *args)``), the admission counters and the settings."""

    predictor: OnnxPredictor
    scorer: RequestScorer
    labels: object
    admission: Admission
    limits: Limits
    admin_token: str | None
    embed: TextEmbedder | None


def service(request: Request) -> Service:
    """The app's service (a FastAPI dependency)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]


predictions = APIRouter(tags=["predictions"])
labels = APIRouter(tags=["labels"])
admin = APIRouter(tags=["admin"])


@predictions.post("/predict", response_model=PredictionOut, openapi_extra=request_body(TicketIn))
async def predict(request: Request) -> Response:  # answered by PredictRoutes; the schema only
    """The contact reason of one ticket."""
    raise NotImplementedError


@predictions.post("/predict/batch", response_model=list[PredictionOut], openapi_extra=request_body(BatchIn))
async def predict_batch(request: Request) -> Response:  # answered by PredictRoutes; the schema only
    """Contact reasons of up to ``max_batch`` tickets."""
    raise NotImplementedError


@labels.get("/health")
def health(s: ServiceDep) -> dict:
    """The model version, the live label generation, and this worker's admission counters."""
    view = s.predictor.view
    return {
        "status": "ok",
        "model_version": f"{s.predictor.serving['model_version']}/{view.generation}",
        "label_generation": view.generation,
        "last_reload_error": s.predictor.last_reload_error,
        "admin": "ready" if s.admin_token else "disabled",
        "accounts": len(view.state.accounts),
        "labels": view.state.n_labels,
        "worker": os.getpid(),
        "in_flight": s.admission.in_flight,
        "admitted": s.admission.admitted,
        "refused": s.admission.refused,
    }


@labels.get("/accounts/{account_id}/labels")
def account_labels(account_id: str, s: ServiceDep) -> dict:
    """One merchant's live labels with their training counts and priors, and its threshold."""
    view = s.predictor.view
    account = view.labels_of(account_id)
    if account is None:
        raise ApiError(404, "account_id", f"unknown account {account_id!r}")
    return {
        "account_id": account_id,
        "label_generation": view.generation,
        "threshold": s.scorer.threshold(account_id),
        "labels": [
            {"label": name, "n_train": int(n), "prior": float(p)}
            for name, n, p in zip(account.labels, account.n_train, account.prior, strict=True)
        ],
    }


@admin.post(
    "/admin/labels",
    response_model=LabelUpdateOut,
    responses={401: {"description": "missing or wrong token"}, 403: {"description": "admin disabled"}},
)
async def update_labels(
    body: LabelUpdateIn,
    s: ServiceDep,
    authorization: Annotated[str | None, Header(description="Bearer TOKEN (checked before the body)")] = None,
) -> LabelUpdateOut:
    """Add, rename or retire one merchant's labels, folding in examples; live at once, no restart."""
    update = label_update(body, s.limits)
    try:
        result = await s.labels.run(update_export, s.predictor, [update], s.embed, "api")
    except UpdateError as err:
        raise ApiError(err.status, err.field, err.message) from None
    return LabelUpdateOut(
        generation=result["generation"],
        previous=result["previous"],
        model_version=result["model_version"],
        labels=result["accounts"][update.account_id],
        seconds=result["seconds"],
    )


def label_update(body: LabelUpdateIn, limits: Limits) -> LabelUpdate:
    """The update a request asks for, its sizes checked against ``limits`` (413/422 naming the field)."""
    if len(body.examples) > limits.max_batch:
        raise ApiError(413, "examples", f"{len(body.examples)} examples; at most {limits.max_batch}")
    changes = len(body.add) + len(body.rename) + len(body.retire)
    if changes > limits.max_label_changes:
        raise ApiError(413, "body", f"{changes} label changes; at most {limits.max_label_changes}")
    names = [("add", n) for n in body.add] + [(f"rename.{k}", v) for k, v in body.rename.items()]
    for where, name in names:
        if len(name) > limits.max_label_name:
            message = f"a label name of {len(name)} characters; at most {limits.max_label_name}"
            raise ApiError(422, where, message)
    examples: dict[str, list[np.ndarray]] = {}
    for i, ex in enumerate(body.examples):
        vectors = ticket_vectors(ex.email_sentence_embeddings, f"examples[{i}].", limits)
        if not len(vectors):
            raise ApiError(422, f"examples[{i}].email_sentence_embeddings", "an example needs sentences")
        examples.setdefault(ex.label, []).append(vectors)
    return LabelUpdate(body.account_id, body.add, body.rename, body.retire, examples, body.create_account)
