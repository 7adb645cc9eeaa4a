"""The API's routes, in three routers over one injected :class:`Service` (``app.state.service``):
predictions (their schemas; :class:`tagger.serving.api.PredictRoutes` answers them), labels and
health, and the admin endpoint."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from tagger.model.corrections import Correction
from tagger.model.label_update import LabelUpdate, UpdateError
from tagger.serving.feedback import FeedbackStore
from tagger.serving.gate import Admission, may_read
from tagger.serving.header_deadline import HeaderDeadline
from tagger.serving.limits import Limits
from tagger.serving.live import Live
from tagger.serving.registry import LockTimeout, Registry, TextEmbedder
from tagger.serving.request_path import ApiError, ticket_vectors
from tagger.serving.schemas import (
    AccountIn,
    BatchIn,
    FeedbackIn,
    FeedbackOut,
    LabelUpdateIn,
    LabelUpdateOut,
    PredictionOut,
    PromoteIn,
    TicketIn,
    request_body,
)
from tagger.serving.telemetry import CONTENT_TYPE, REVIEWS, exposition


@dataclass
class Service:
    """What the routes share: the live model (``live.current``: predictor and request scorer), the
    registry, the label thread (``labels``: an object with an awaitable ``run(fn, *args)``), the
    admission counters and the settings."""

    live: Live
    labels: object
    admission: Admission
    limits: Limits
    admin_token: str | None
    embed: TextEmbedder | None
    read_token: str | None = None
    feedback: FeedbackStore | None = None

    @property
    def registry(self) -> Registry:
        return self.live.registry

    def deadline(self) -> float:
        """When an admin change must have committed or been refused: inside the request's deadline,
        so that it is never committed after the gate answered 503."""
        return time.monotonic() + 0.8 * float(self.limits.request_timeout_s)

    async def change(self, fn, *args):
        """``fn(*args)`` in the label thread, then this worker serves its result at once."""

        def then_refresh():
            out = fn(*args)
            self.live.refresh(now=True)
            return out

        try:
            return await self.labels.run(then_refresh)
        except UpdateError as err:
            raise ApiError(err.status, err.field, err.message) from None
        except LockTimeout as err:
            raise ApiError(503, None, str(err)) from None


def service(request: Request) -> Service:
    """The app's service (a FastAPI dependency)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]


predictions = APIRouter(tags=["predictions"])
TargetQuery = Annotated[
    str | None,
    Query(description="the precision promised (one of the model's targets, e.g. 0.9); default: the server's"),
]
labels = APIRouter(tags=["labels"])
admin = APIRouter(tags=["admin"])


WhyQuery = Annotated[
    bool | None, Query(description="true: each answer names the sentences that decided it (why)")
]


@predictions.post("/predict", response_model=PredictionOut, openapi_extra=request_body(TicketIn))
async def predict(
    request: Request, precision_target: TargetQuery = None, why: WhyQuery = None
) -> Response:  # the schema only
    """The contact reason of one ticket (answered by :class:`tagger.serving.api.PredictRoutes`)."""
    raise NotImplementedError


@predictions.post("/predict/batch", response_model=list[PredictionOut], openapi_extra=request_body(BatchIn))
async def predict_batch(
    request: Request, precision_target: TargetQuery = None, why: WhyQuery = None
) -> Response:  # the schema only
    """Contact reasons of up to ``max_batch`` tickets."""
    raise NotImplementedError


@labels.get("/health")
def health(
    s: ServiceDep,
    authorization: Annotated[str | None, Header(description="Bearer TOKEN: the details")] = None,
) -> dict:
    """Liveness (always answers). Without a read token set, or with the read or admin token: the
    served model and label generation, quarantined merchants, this worker's counters."""
    if not may_read(authorization, s.read_token, s.admin_token):
        return {"status": "ok"}
    current = s.live.current
    view = current.predictor.view
    return {
        "status": "ok",
        "model_version": current.predictor.version,
        "promotion": current.promotion,
        "label_generation": view.generation,
        "last_reload_error": s.live.last_reload_error,
        "quarantined": sorted(s.live.quarantined),
        "admin": "ready" if s.admin_token else "disabled",
        "accounts": len(view.state.accounts),
        "labels": view.state.n_labels,
        "worker": os.getpid(),
        "in_flight": s.admission.in_flight,
        "admitted": s.admission.admitted,
        "refused": s.admission.refused,
        "slow_bodies": s.admission.slow,
        "slow_headers": HeaderDeadline.timed_out,
    }


@labels.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "the Prometheus text format"}},
)
def metrics() -> Response:
    """Prometheus metrics in the text format (every worker's): requests and latency per route and
    status, refusals, answer outcomes and confidence, the model and label generation served, reload
    failures, dropped log records (docs/operating.md)."""
    return Response(exposition(), media_type=CONTENT_TYPE)


@labels.get("/ready", responses={503: {"description": "the last look at the registry failed"}})
def ready(s: ServiceDep) -> Response:
    """Readiness: 200 while the served model is up to date with the registry (merchants in
    quarantine are listed; the others are served), 503 while the registry cannot be read."""
    current = s.live.current
    body = {
        "ready": s.live.last_reload_error is None,
        "model_version": current.predictor.version,
        "quarantined": dict(sorted(s.live.quarantined.items())),
        "last_reload_error": s.live.last_reload_error,
    }
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@labels.get("/accounts/{account_id}/labels")
def account_labels(account_id: str, s: ServiceDep) -> dict:
    """One merchant's live labels with their training counts and priors, and its threshold."""
    current = s.live.current
    view = current.predictor.view
    account = view.labels_of(account_id)
    if account is None:
        raise ApiError(404, "account_id", f"unknown account {account_id!r}")
    return {
        "account_id": account_id,
        "label_generation": view.generation,
        "quarantined": account_id in s.live.quarantined,
        "threshold": current.scorer.threshold(account_id),
        "parent_threshold": current.scorer.threshold(account_id, level="parent"),
        "labels": [
            {"label": name, "n_train": int(n), "prior": float(p)}
            for name, n, p in zip(account.labels, account.n_train, account.prior, strict=True)
        ],
    }


ADMIN_ERRORS = {
    401: {"description": "missing or wrong token"},
    403: {"description": "admin disabled"},
    503: {"description": "another change held the registry, or the deadline passed: nothing changed"},
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="the same key applies the change once and answers the same every time",
    ),
]
ChangedBy = Annotated[
    str | None, Header(alias="X-Changed-By", max_length=200, description="who makes the change (recorded)")
]


def _who(changed_by: str | None) -> str:
    return f"api:{changed_by}" if changed_by else "api"


@admin.post("/admin/labels", response_model=LabelUpdateOut, responses=ADMIN_ERRORS)
async def update_labels(
    request: Request,
    body: LabelUpdateIn,
    s: ServiceDep,
    idempotency_key: IdempotencyKey = None,
    changed_by: ChangedBy = None,
    authorization: Annotated[str | None, Header(description="Bearer TOKEN (checked before the body)")] = None,
) -> LabelUpdateOut:
    """Add, rename or retire one merchant's labels, folding in examples; live at once, no restart,
    recorded in the registry so that it outlives the model it was made on."""
    update = label_update(body, s.limits)
    digest = hashlib.sha256(await request.body()).hexdigest()
    result = await s.change(
        s.registry.update, update, _who(changed_by), s.embed, idempotency_key, digest, s.deadline()
    )
    return LabelUpdateOut.model_validate(result)


@admin.post("/admin/labels/rollback", response_model=LabelUpdateOut, responses=ADMIN_ERRORS)
async def rollback_labels(
    body: AccountIn, s: ServiceDep, idempotency_key: IdempotencyKey = None, changed_by: ChangedBy = None
) -> LabelUpdateOut:
    """Undo the merchant's last label change still in effect (recorded as a change of its own)."""
    result = await s.change(
        s.registry.revert, body.account_id, _who(changed_by), idempotency_key, s.deadline()
    )
    return LabelUpdateOut.model_validate(result)


@admin.post("/admin/promote", responses=ADMIN_ERRORS)
async def promote(body: PromoteIn, s: ServiceDep, changed_by: ChangedBy = None) -> dict:
    """Serve a registered model, every merchant's label changes replayed onto it; every worker
    swaps to it within ``reload_interval``, no request fails. The report says what could not be
    carried as asked."""
    version = body.model_version.strip()
    return await s.change(s.registry.promote, version, _who(changed_by), s.embed, "promote", s.deadline())


@admin.post("/admin/rollback", responses=ADMIN_ERRORS)
async def rollback(s: ServiceDep, changed_by: ChangedBy = None) -> dict:
    """Serve again the model served before the current one (label changes replayed onto it)."""
    return await s.change(s.registry.rollback, _who(changed_by), s.embed, s.deadline())


@admin.post("/feedback", response_model=FeedbackOut, responses=ADMIN_ERRORS)
async def feedback(
    request: Request,
    body: FeedbackIn,
    s: ServiceDep,
    idempotency_key: IdempotencyKey = None,
    changed_by: ChangedBy = None,
) -> FeedbackOut:
    """Agents' reviews of answers (corrections and confirmations), stored durably per merchant: they
    count toward its live precision, and corrections with embeddings are folded into its label
    vectors in batches (``python -m tagger.serving.feedback fold``)."""
    if s.feedback is None:
        raise ApiError(403, "authorization", "feedback is disabled (no TAGGER_ADMIN_TOKEN)")
    corrections = corrections_of(body, s)
    digest = hashlib.sha256(await request.body()).hexdigest()
    try:
        result = await s.labels.run(s.feedback.add, corrections, _who(changed_by), idempotency_key, digest)
    except UpdateError as err:
        raise ApiError(err.status, err.field, err.message) from None
    if not result.get("replayed"):
        wrong = sum(c.wrong for c in corrections)
        REVIEWS.labels("correction").inc(wrong)
        REVIEWS.labels("confirmation").inc(len(corrections) - wrong)
    return FeedbackOut.model_validate(result)


def corrections_of(body: FeedbackIn, s: Service) -> list[Correction]:
    """The corrections a request holds, checked: at most ``max_batch``, each of a known merchant,
    embeddings as ``/predict`` takes them (413/404/422 naming the field)."""
    limits = s.limits
    if len(body.corrections) > limits.max_batch:
        raise ApiError(413, "corrections", f"{len(body.corrections)} corrections; at most {limits.max_batch}")
    view = s.live.current.predictor.view
    out = []
    for i, c in enumerate(body.corrections):
        where = f"corrections[{i}]."
        if view.labels_of(c.account_id) is None:
            raise ApiError(404, f"{where}account_id", f"unknown account {c.account_id!r}")
        vectors = ticket_vectors(c.email_sentence_embeddings, where, limits)
        out.append(
            Correction(
                c.account_id,
                c.agent_label,
                c.given_label,
                c.confidence,
                c.abstained,
                vectors if len(vectors) else None,
                c.ticket_id,
                c.model_version,
            )
        )
    return out


@admin.get("/admin/models", responses=ADMIN_ERRORS)
def models(s: ServiceDep) -> dict:
    """Every registered model, and the last promotions (newest first)."""
    return {"models": s.registry.models(), "promotions": s.registry.promotions()}


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
