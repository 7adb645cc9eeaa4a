"""The request path of ``POST /predict`` and ``POST /predict/batch``: body bytes in, response bytes out.

No pydantic over the floats and no data frame per request: the body is parsed once with orjson, a
ticket's embeddings (a JSON string or an object) go straight into one float32 array
(:func:`tagger.data.embeddings_json.parse_embeddings`, the ingest's parser), the ticket is scored
against its own merchant's labels by :meth:`OnnxPredictor.predict_vectors` and the answer is written
with orjson. Errors name the field, as the pydantic models of :mod:`tagger.serving.schemas` would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import numpy as np
import orjson

from tagger.data.embeddings_json import EMBEDDING_DIM, EmbeddingError, is_empty, parse_embeddings
from tagger.model.base import Predictions
from tagger.model.thresholds import answer_levels
from tagger.serving.limits import Limits
from tagger.serving.onnx_predictor import OnnxPredictor

_NO_SENTENCES = np.zeros((0, EMBEDDING_DIM), np.float32)
MAX_TICKET_ID = 200  # characters of a request's optional ticket_id (recorded in the prediction log)
# what a ticket's answer holds besides its model version (API: PredictionOut; predict.py: its columns)
# answer_level: 0 the leaf label, 1 its parent (the first ``::`` level), when only the parent is sure enough
ANSWER_COLUMNS = ("label", "confidence", "answer_level", "top_labels", "top_scores", "abstained", "fallback")


def error_body(field: str | None, message: str) -> bytes:
    """The JSON of every refusal the API makes: ``{"detail": {"field", "message"}}``."""
    return orjson.dumps({"detail": {"field": field, "message": message}})


class ApiError(Exception):
    """An answer other than 200: ``status``, the ``field`` it is about (None: the request as a
    whole) and a message; ``errors`` lists several (field, message) pairs for a 422 of schema checks."""

    def __init__(
        self, status: int, field: str | None, message: str, errors: list[tuple[str, str]] | None = None
    ):
        super().__init__(message)
        self.status, self.field, self.message, self.errors = status, field, message, errors

    def body(self) -> bytes:
        """The JSON answer: ``{"detail": {"field", "message"}}`` (a list of them for schema errors)."""
        if self.errors:
            return orjson.dumps({"detail": [{"field": f, "message": m} for f, m in self.errors]})
        return error_body(self.field, self.message)


def read_json(body: bytes) -> Any:
    """The request body as JSON; a 422 naming the body when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ApiError(422, "body", "not valid JSON", [("body", f"JSON decode error: {err}")]) from None


class Ticket(NamedTuple):
    """One ticket of a request: its account, its embeddings value as sent and its optional id."""

    account_id: str
    embeddings: Any
    ticket_id: str | None


class Response(NamedTuple):
    """A prediction request's answer: the response body, and the tickets and answers it holds."""

    body: bytes
    tickets: list[Ticket]
    answers: list[dict]


def ticket_fields(obj: Any, where: str) -> Ticket:
    """One ticket object's fields, checked as ``TicketIn`` would."""
    place = where.rstrip(".") or "body"
    if not isinstance(obj, dict):
        raise ApiError(422, place, "not an object", [(place, "Input should be a valid dictionary")])
    account = obj.get("account_id")
    errors = []
    if account is None:
        errors.append((f"{where}account_id", "Field required"))
    elif not isinstance(account, str):
        errors.append((f"{where}account_id", "Input should be a valid string"))
    elif not account:
        errors.append((f"{where}account_id", "String should have at least 1 character"))
    text = obj.get("email_sentence_embeddings")
    if not (text is None or isinstance(text, str | dict)):
        message = "Input should be a JSON object of sentence id -> 384 floats, its text, or null"
        errors.append((f"{where}email_sentence_embeddings", message))
    ticket_id = obj.get("ticket_id")
    if not (ticket_id is None or (isinstance(ticket_id, str) and len(ticket_id) <= MAX_TICKET_ID)):
        errors.append(
            (f"{where}ticket_id", f"Input should be a string of at most {MAX_TICKET_ID} characters")
        )
    if errors:
        raise ApiError(422, errors[0][0], errors[0][1], errors)
    return Ticket(account, text, ticket_id)


def ticket_sentences(text: str | dict | None, where: str, limits: Limits) -> tuple[list[str], np.ndarray]:
    """One ticket's sentence ids and vectors ``[n, 384]`` (float32) from its embeddings field, checked
    against ``limits`` (``where`` names the ticket in an error)."""
    if is_empty(text):
        return [], _NO_SENTENCES
    try:
        return parse_embeddings(text, max_sentences=limits.max_sentences)
    except EmbeddingError as err:
        status = 413 if err.kind == "too many sentences" else 422
        raise ApiError(status, f"{where}email_sentence_embeddings", str(err)) from None


def ticket_vectors(text: str | dict | None, where: str, limits: Limits) -> np.ndarray:
    """:func:`ticket_sentences`' vectors only."""
    return ticket_sentences(text, where, limits)[1]


def why_of(weights: np.ndarray | None, ids: list[list[str]], n: int) -> list[list[dict] | None]:
    """Each ticket's ``n`` sentences with the largest weights (``weights [tickets, S]``, its sentences'
    shares of its pooled vector), as ``[{"sentence": id, "weight": w}]`` in decreasing weight; None
    for a ticket without sentences. ``ids``: each ticket's sentence ids in the order it was scored."""
    out = []
    for i, mine in enumerate(ids):
        if not mine or weights is None:
            out.append(None if not mine else [])
            continue
        w = weights[i, : min(len(mine), weights.shape[1])]
        top = np.argsort(-w, kind="stable")[:n]
        out.append([{"sentence": mine[j], "weight": float(w[j])} for j in top])
    return out


def target_key(thresholds: dict, asked: str) -> str | None:
    """The key under which an export's ``thresholds`` (serving.json) hold the precision target
    ``asked`` ("0.90" is "0.9"); None when they hold none for it or it is not a number."""
    try:
        wanted = float(asked)
    except ValueError:
        return None
    return next((key for key in thresholds.get("global") or {} if float(key) == wanted), None)


class RequestScorer:
    """Scores request bodies with one predictor: :meth:`one` for ``/predict``, :meth:`batch` for
    ``/predict/batch``; both return the response body (bytes) or raise :class:`ApiError`.

    A ticket is answered at its leaf label when the leaf's confidence reaches its merchant's threshold
    for the precision target, else at the parent label when the parent's (summed) confidence reaches
    the parent-level threshold, else it abstains. The target is ``limits.precision_target`` unless a
    request asks for another one the model has thresholds for (``?precision_target=0.9``)."""

    def __init__(self, predictor: OnnxPredictor, limits: Limits):
        self.predictor, self.limits = predictor, limits
        thresholds = predictor.serving.get("thresholds", {})
        parent = thresholds.get("parent") or {}
        self.levels = {
            "leaf": (thresholds.get("global") or {}, thresholds.get("per_account") or {}),
            "parent": (parent.get("global") or {}, parent.get("per_account") or {}),
        }
        self.thresholds = thresholds
        # (account, target) -> a leaf threshold raised from agents' reviews (the registry's, via Live)
        self.raised: dict[tuple[str, str], float] = {}
        float(limits.precision_target)  # not a number: ValueError, and the server refuses to start
        # "0.90" in conf names the thresholds the export keys "0.9"
        configured = target_key(thresholds, limits.precision_target) or limits.precision_target
        self.limits = limits = dataclasses.replace(limits, precision_target=configured)

    def why(self, query: bytes = b"") -> bool:
        """Whether a request asks for the sentences that decided (``?why=true``); a 422 for a value
        other than true or false, a 409 when the model's export gives no sentence weights."""
        asked = parse_qs(query.decode("latin-1")).get("why") if query else None
        if not asked or asked[-1].lower() == "false":
            return False
        if asked[-1].lower() != "true":
            raise ApiError(422, "why", f"{asked[-1][:40]!r}: why is true or false")
        if "sentence_weights" not in self.predictor.outputs:
            raise ApiError(409, "why", "this model's export has no sentence weights: export it again")
        return True

    def target(self, query: bytes = b"") -> str:
        """The precision target a request asks for (``?precision_target=``), as the thresholds name it;
        the configured one when it asks for none; a 422 naming the field when the model has none for it."""
        asked = parse_qs(query.decode("latin-1")).get("precision_target") if query else None
        if not asked:
            return self.limits.precision_target
        key = target_key(self.thresholds, asked[-1])
        if key is None:
            known = ", ".join(sorted(self.levels["leaf"][0], key=float)) or "none"
            message = f"{asked[-1][:40]!r} is not a precision target of this model (it has: {known})"
            raise ApiError(422, "precision_target", message)
        return key

    def threshold(self, account: str, target: str | None = None, level: str = "leaf") -> float | None:
        """The confidence ``account``'s answers need at ``level`` for ``target`` (None: never there)."""
        target = target or self.limits.precision_target
        global_, per_account = self.levels[level]
        chosen = (per_account.get(target) or {}).get(account, global_.get(target))
        raised = self.raised.get((account, target)) if level == "leaf" and self.raised else None
        return chosen if raised is None else max(raised, chosen if chosen is not None else raised)

    def one(self, body: bytes, query: bytes = b"") -> bytes:
        """``/predict``: one ticket object."""
        return self.respond(body, query, batch=False).body

    def batch(self, body: bytes, query: bytes = b"") -> bytes:
        """``/predict/batch``: ``{"tickets": [...]}`` of at most ``max_batch`` tickets."""
        return self.respond(body, query, batch=True).body

    def respond(self, body: bytes, query: bytes = b"", batch: bool = False) -> Response:
        """The response to a ``/predict`` (``batch`` False) or ``/predict/batch`` body, with the
        tickets and answers it holds (for the metrics and the prediction log)."""
        target, why = self.target(query), self.why(query)
        if not batch:
            tickets = [ticket_fields(read_json(body), "")]
            answers = self.score(tickets, False, target, why)
            return Response(orjson.dumps(answers[0]), tickets, answers)
        obj = read_json(body)
        listed = obj.get("tickets") if isinstance(obj, dict) else None
        if not isinstance(listed, list):
            raise ApiError(422, "tickets", "a list of tickets is required", [("tickets", "Field required")])
        if len(listed) > self.limits.max_batch:
            message = f"{len(listed)} tickets; at most {self.limits.max_batch} per batch"
            raise ApiError(413, "tickets", message)
        tickets = [ticket_fields(t, f"tickets[{i}].") for i, t in enumerate(listed)]
        answers = self.score(tickets, True, target, why) if tickets else []
        return Response(orjson.dumps(answers), tickets, answers)

    def score(
        self, tickets: list[Ticket], prefix: bool, target: str | None = None, why: bool = False
    ) -> list[dict]:
        """The answers (``PredictionOut`` as dicts) of the request's tickets; ``why``: with the
        sentences that decided each."""
        predictor = self.predictor
        view = predictor.view  # one label generation for the whole request
        accounts, vectors, ids = [], [], []
        for i, (account, text, _) in enumerate(tickets):
            where = f"tickets[{i}]." if prefix else ""
            if account not in view.state.accounts:
                raise ApiError(404, f"{where}account_id", f"unknown account {account!r}")
            accounts.append(account)
            sentence_ids, v = ticket_sentences(text, where, self.limits)
            ids.append(sentence_ids)
            vectors.append(v)
        pred = predictor.predict_vectors(accounts, vectors, k=self.limits.top_k, view=view)
        version = f"{predictor.serving['model_version']}/{view.generation}"
        cols = self.answer_columns(pred, accounts, target, ids if why else None)
        answers = [
            {
                "contact_reason": label,
                "confidence": confidence,
                "answer_level": level,
                "top_k": [{"label": n, "score": p} for n, p in zip(names, scores, strict=True)],
                "abstained": abstained,
                "fallback": fallback,
                "model_version": version,
            }
            for label, confidence, level, names, scores, abstained, fallback in zip(
                *(cols[c] for c in ANSWER_COLUMNS), strict=True
            )
        ]
        if why:
            for answer, sentences in zip(answers, cols["why"], strict=True):
                answer["why"] = sentences
        return answers

    def answer_columns(
        self,
        pred: Predictions,
        accounts: list[str],
        target: str | None = None,
        sentence_ids: list[list[str]] | None = None,
    ) -> dict[str, list]:
        """The answers of ``pred`` (tickets of ``accounts``) as columns (:data:`ANSWER_COLUMNS`): the
        one place where a prediction becomes an answer, for the API and for ``predict.py``. A ticket is
        answered at the leaf when its confidence reaches its account's leaf threshold, else at the
        parent when the parent's does (``answer_level`` 1, the parent's confidence), else it abstains
        (with its top leaf and that leaf's confidence). ``sentence_ids`` (each ticket's, in order):
        also ``why``, the sentences that decided (:func:`why_of`)."""
        names = pred.names
        inf = float("inf")
        leaf = [self.threshold(a, target) for a in accounts]
        up = [self.threshold(a, target, "parent") for a in accounts]
        # the parent level only where some merchant has a parent threshold (its sums cost a request
        # tens of microseconds, and most merchants of the built-in data have none)
        one_up = any(t is not None for t in up)
        confidence = pred.confidence
        at_leaf, at_parent = answer_levels(
            confidence,
            pred.parent_confidence if one_up else None,
            ~pred.abstained,
            np.array([inf if t is None else t for t in leaf]),
            np.array([inf if t is None else t for t in up]) if one_up else None,
        )
        if one_up:
            at_parent &= np.not_equal(pred.parents, None)
            parents, parent_confidence = pred.parents.tolist(), pred.parent_confidence.tolist()
        confidence = confidence.tolist()
        top_rows, top_probs = pred.top_rows.tolist(), pred.top_probs.tolist()
        abstained, fallback = pred.abstained.tolist(), pred.fallback.tolist()
        at_leaf, at_parent = at_leaf.tolist(), at_parent.tolist()
        cols: dict[str, list] = {c: [] for c in ANSWER_COLUMNS}
        for i in range(len(accounts)):
            ranked = [(names[r], p) for r, p in zip(top_rows[i], top_probs[i], strict=True) if r >= 0]
            if at_parent[i]:
                label, conf, level = parents[i], parent_confidence[i], 1
            else:
                label, conf, level = (ranked[0][0] if ranked and not abstained[i] else None), confidence[i], 0
            cols["label"].append(label)
            cols["confidence"].append(conf)
            cols["answer_level"].append(level)
            cols["top_labels"].append([n for n, _ in ranked])
            cols["top_scores"].append([p for _, p in ranked])
            cols["abstained"].append(not (at_leaf[i] or at_parent[i]))
            cols["fallback"].append(fallback[i])
        if sentence_ids is not None:  # the sentences that decided, the scored ones only
            kept = [ids[: self.predictor.max_sentences] for ids in sentence_ids]
            cols["why"] = why_of(pred.sentence_weights, kept, self.limits.why_sentences)
        return cols
