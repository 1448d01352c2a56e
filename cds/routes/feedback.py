"""POST /cds-services/{id}/feedback: clinician feedback on our cards."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..admission import Deadline
from ..bodies import check_json_request, parse_model, read_body
from ..errors import RequestTimeout
from ..feedback import FeedbackRules, record_feedback
from ..responses import json_response
from ..schemas import FeedbackRequest
from ._openapi import json_body
from ._state import Arrival, ServiceOf, State

router = APIRouter()


@router.post(
    "/cds-services/{service_id}/feedback", openapi_extra=json_body(FeedbackRequest), response_model=None
)
async def post_feedback(service: ServiceOf, request: Request, state: State, arrived: Arrival) -> Response:
    settings = state.settings
    check_json_request(request)
    deadline = Deadline.after(settings.hook_timeout_s, start=arrived)
    try:
        async with asyncio.timeout(max(0.0, deadline.remaining())):
            raw = await read_body(request, settings.max_feedback_bytes)
    except TimeoutError as exc:
        raise RequestTimeout("the feedback body did not arrive in time") from exc
    body = parse_model(raw, FeedbackRequest, max_depth=settings.max_json_depth)
    result = await record_feedback(
        service,
        body,
        state.store,
        now=datetime.now(UTC),
        rules=FeedbackRules.from_settings(settings),
        pseudonymizer=state.deps.pseudonymizer,
    )
    offered = {r.code for r in service.override_reasons}
    for given, item in zip(body.feedback, result["results"], strict=True):
        code = (
            given.overrideReason.reason.code if given.overrideReason and given.overrideReason.reason else None
        )
        reason = None if code is None else (code if code in offered else "not-offered")
        state.metrics.feedback_item(
            service.id, item["status"], item.get("flags", ()), outcome=given.outcome, reason=reason
        )
    return json_response(result)
