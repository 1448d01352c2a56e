"""POST /cds-services/{id}: one hook call."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request

from ..logs import log_event
from ..pipeline import run_hook
from ..schemas import HookRequest
from ..settings import Settings
from ._body import parse_body
from ._state import app_state, service_or_404

router = APIRouter()
log = logging.getLogger("cds.hook")


@router.post("/cds-services/{service_id}")
async def call_service(service_id: str, request: Request) -> dict[str, Any]:
    service = service_or_404(service_id)
    body = await parse_body(request, HookRequest)
    state = app_state(request)
    started = time.perf_counter()
    reason = "error"
    try:
        caller = getattr(request.state, "caller", None)
        outcome = await run_hook(
            service,
            body,
            state.deps,
            launch_url=launch_url(request, state.settings),
            issuer=caller.iss if caller else None,
        )
        reason = outcome.reason
        state.metrics.ehr_outcomes(service.id, int(outcome.details.get("ehr_outcomes", 0)))
        log_event(
            log,
            "hook answered",
            service=service.id,
            hookInstance=body.hookInstance,
            reason=reason,
            ms=round(1000 * (time.perf_counter() - started), 1),
            **{k: v for k, v in outcome.details.items() if k in _LOGGED},
        )
        return outcome.body
    finally:
        state.metrics.hook(service.id, reason, time.perf_counter() - started)


def launch_url(request: Request, settings: Settings) -> str:
    """Where card links launch the explanation app (CDS_SMART_LAUNCH_URL, else our own /smart/launch)."""
    if settings.smart_launch_url:
        return settings.smart_launch_url
    base = settings.public_url.rstrip("/") if settings.public_url else f"{request.url.scheme}://{request.url.netloc}"
    return f"{base}/smart/launch"


# Counts and codes only: what may appear in a hook log line.
_LOGGED = {"prefetched", "fetched", "ehr_outcomes", "icu_hour", "band", "observations", "measurements", "skipped", "unmapped_codes", "unit_errors"}
