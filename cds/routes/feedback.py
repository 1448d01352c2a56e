"""POST /cds-services/{id}/feedback: clinician feedback on our cards."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

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
    lifecycle = state.deps.lifecycle
    lineup = lifecycle.lineup(service.model_name) if lifecycle is not None else None
    if lifecycle is not None and lineup is not None and lineup.canary is not None:
        await lifecycle.note_feedback(service.model_name, await _by_version(state, body, result))
    return json_response(result)


async def _by_version(
    state: State, body: FeedbackRequest, result: dict[str, Any]
) -> dict[str, tuple[int, int]]:
    """(feedback items, overrides) per model version that answered the cards, while a canary runs:
    the override guardrail compares the canary's override rate with the champion's."""
    new = {r["card"] for r in result["results"] if r["status"] != "unchanged"}
    cards = await state.store.get_cards(sorted(new))
    counts: dict[str, list[int]] = {}
    for item in body.feedback:
        card = cards.get(item.card)
        if card is None or item.card not in new:
            continue
        method = card.risk_assessment.get("method", {}).get("coding", [{}])[0]
        version = str(method.get("version", ""))
        entry = counts.setdefault(version, [0, 0])
        entry[0] += 1
        entry[1] += int(item.outcome == "overridden")
    return {v: (n, o) for v, (n, o) in counts.items() if v}
