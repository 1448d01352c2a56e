"""GET /drift: the drift report's data as JSON (what `cds drift report` draws). Aggregates only:
bin shares, PSI, counts by code and by variable|unit, per model version and configured issuer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ..drift import parse_since
from ..errors import BadRequest, ServiceNotFound
from ._state import State

router = APIRouter()


@router.get("/drift")
async def drift(state: State, since: str = Query("24h", max_length=40)) -> dict[str, Any]:
    if state.drift is None:
        raise ServiceNotFound("drift monitoring is off (CDS_DRIFT_ENABLED=false)")
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise BadRequest("since: an ISO time or a duration like 24h, 7d, 90m") from exc
    return await state.drift.summary(start.timestamp(), state.settings.drift_thresholds())
