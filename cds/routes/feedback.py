"""POST /cds-services/{id}/feedback: clinician feedback on our cards."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..feedback import record_feedback
from ..schemas import FeedbackRequest
from ._body import parse_body
from ._state import app_state, service_or_404

router = APIRouter()


@router.post("/cds-services/{service_id}/feedback")
async def post_feedback(service_id: str, request: Request) -> dict[str, Any]:
    service = service_or_404(service_id)
    body = await parse_body(request, FeedbackRequest)
    state = app_state(request)
    result = await record_feedback(service, body, state.store)
    for item in result["results"]:
        state.metrics.feedback_item(service.id, item["status"])
    return result
