"""The API's request and response schemas (pydantic): the OpenAPI document, and the parsing of the
admin body. The prediction endpoints parse their bodies with orjson (:mod:`tagger.serving.request_path`)
and answer exactly these shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tagger.serving.request_path import MAX_TICKET_ID


class TicketIn(BaseModel):
    """One ticket: the account and its sentence embeddings exactly as in the parquet."""

    account_id: str = Field(..., min_length=1, examples=["4b80dc56"])
    email_sentence_embeddings: str | dict[str, Any] | None = Field(
        None, description="JSON object (or its text) of hashed sentence id -> 384 floats; null or {} if empty"
    )
    ticket_id: str | None = Field(
        None,
        max_length=MAX_TICKET_ID,
        description="the caller's id of the ticket (kept in the prediction log)",
    )


class BatchIn(BaseModel):
    tickets: list[TicketIn]


class LabelScore(BaseModel):
    label: str
    score: float


class SentenceWeight(BaseModel):
    sentence: str = Field(..., description="the sentence's hash (its key in email_sentence_embeddings)")
    weight: float = Field(..., description="its share of the pooled ticket vector (the ticket's sum to 1)")


class PredictionOut(BaseModel):
    contact_reason: str | None = Field(
        ..., description="the answer: a leaf label, or a parent category (answer_level 1)"
    )
    confidence: float = Field(
        ..., description="the answer's probability (a parent's: summed over its labels)"
    )
    answer_level: int = Field(
        0, description="0: the leaf label; 1: its parent, when only the parent is sure enough"
    )
    top_k: list[LabelScore]
    abstained: bool = Field(
        ..., description="neither the leaf nor its parent reaches the account's threshold (or no answer)"
    )
    fallback: bool = Field(..., description="no embeddings: scored from the account's label prior")
    model_version: str
    why: list[SentenceWeight] | None = Field(
        None,
        description="with ?why=true: the sentences that decided (their hashes as sent), by their share of "
        "the pooled ticket; null for a ticket without sentences",
    )


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
    generation: str = Field(..., description="the label state after this change (g + its change number)")
    previous: str
    model_version: str
    labels: list[str] = Field(..., description="the merchant's labels after the change")
    seconds: float
    by: str = Field(..., description="who made the change (X-Changed-By, else the API)")
    replayed: bool = Field(False, description="the answer of an earlier request with this Idempotency-Key")


class CorrectionIn(BaseModel):
    """An agent's review of one answer: the label the service gave and the agent's."""

    account_id: str = Field(..., min_length=1, max_length=MAX_TICKET_ID)
    agent_label: str = Field(..., min_length=1, max_length=MAX_TICKET_ID, description="the right label")
    given_label: str | None = Field(
        None, max_length=MAX_TICKET_ID, description="the service's label (null: it abstained without one)"
    )
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="the answer's confidence")
    abstained: bool = Field(False, description="the service abstained (the answer went to an agent)")
    model_version: str | None = Field(
        None, max_length=MAX_TICKET_ID, description="the answer's model_version"
    )
    ticket_id: str | None = Field(None, max_length=MAX_TICKET_ID)
    email_sentence_embeddings: str | dict[str, Any] | None = Field(
        None, description="the ticket's embeddings as in /predict (without them a correction moves no vector)"
    )


class FeedbackIn(BaseModel):
    corrections: list[CorrectionIn]


class FeedbackOut(BaseModel):
    stored: int
    pending: dict[str, int] = Field(..., description="each merchant's corrections waiting to be folded in")
    replayed: bool = Field(False, description="the answer of an earlier request with this Idempotency-Key")


class AccountIn(BaseModel):
    account_id: str = Field(..., min_length=1)


class PromoteIn(BaseModel):
    model_version: str = Field(..., min_length=1, description="a registered model (GET /admin/models)")


def request_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` documenting ``model`` as the JSON body of a route that reads its body itself."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):  # the nested models written out in place: no reference to a missing component
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
