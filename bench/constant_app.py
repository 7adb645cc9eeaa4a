"""The serving benchmark's floor: a minimal FastAPI app that reads the request body and answers
``POST /predict`` with a constant prediction (no parsing, no model). Whatever a real request costs
beyond this is the API's own work."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = (
    b'{"contact_reason":"Refund","confidence":0.9,"top_k":[{"label":"Refund","score":0.9}],'
    b'"abstained":false,"fallback":false,"model_version":"constant"}'
)
app = FastAPI(title="constant")


@app.post("/predict")
async def predict(request: Request) -> Response:
    """A constant answer after reading the body."""
    await request.body()
    return Response(ANSWER, media_type="application/json")


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
