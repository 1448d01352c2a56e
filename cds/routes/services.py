"""POST /cds-services/{id}: one hook call, answered within its budget or not at all (caller gone)."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from ..admission import Deadline
from ..bodies import check_json_request, read_body
from ..logs import log_event
from ..pipeline import NO_GUIDANCE, HookOutcome, answer_hook
from ..responses import json_response
from ..schemas import HookRequest
from ..settings import Settings
from ._auth import VerifiedCaller
from ._openapi import json_body
from ._state import Arrival, ServiceOf, State, until_disconnected

router = APIRouter()
log = logging.getLogger("cds.hook")

# Kept back from the budget for writing the answer and its trip back to the EHR.
ANSWER_MARGIN_S = 0.05


@router.post("/cds-services/{service_id}", openapi_extra=json_body(HookRequest), response_model=None)
async def call_service(
    service: ServiceOf, request: Request, state: State, started: Arrival, caller: VerifiedCaller
) -> Response:
    deadline = Deadline.after(state.settings.hook_timeout_s - ANSWER_MARGIN_S, start=started)
    check_json_request(request)
    reason = "error"
    try:
        try:
            async with asyncio.timeout(max(0.0, deadline.remaining())):
                raw = await read_body(request, state.settings.max_hook_bytes)
        except TimeoutError:
            outcome = HookOutcome(dict(NO_GUIDANCE), "budget-spent", {"stage": "body"})
        else:
            work = asyncio.ensure_future(
                answer_hook(
                    service,
                    raw,
                    state.deps,
                    deadline=deadline,
                    launch_url=launch_url(request, state.settings),
                    issuer=caller.iss if caller else None,
                )
            )
            gone = asyncio.ensure_future(until_disconnected(request))
            try:
                finished, _ = await asyncio.wait(
                    {work, gone}, timeout=max(0.0, deadline.remaining()), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                gone.cancel()
            if work not in finished:
                work.cancel()  # caller gone, or budget spent: nothing more is started for this call
                outcome = HookOutcome(
                    dict(NO_GUIDANCE), "client-gone" if gone in finished else "budget-spent"
                )
            else:
                outcome = work.result()
        reason = outcome.reason
        state.metrics.ehr_outcomes(service.id, int(outcome.details.get("ehr_outcomes", 0)))
        log_event(
            log,
            "hook answered",
            service=service.id,
            reason=reason,
            ms=round(1000 * (time.monotonic() - started), 1),
            **{k: v for k, v in outcome.details.items() if k in _LOGGED},
        )
        response = json_response(outcome.body)
        if outcome.after is not None and state.deps.lifecycle is not None:
            # Started once the answer is sent: the shadow's score never delays the answer.
            response.background = BackgroundTask(state.deps.lifecycle.spawn, outcome.after)
        return response
    except ClientDisconnect:
        reason = "client-gone"
        return json_response(dict(NO_GUIDANCE))
    finally:
        state.metrics.hook(service.id, reason, time.monotonic() - started)


def launch_url(request: Request, settings: Settings) -> str:
    """Where card links launch the explanation app (CDS_SMART_LAUNCH_URL, else our own /smart/launch)."""
    if settings.smart_launch_url:
        return settings.smart_launch_url
    base = (
        settings.public_url.rstrip("/")
        if settings.public_url
        else f"{request.url.scheme}://{request.url.netloc}"
    )
    return f"{base}/smart/launch"


# Counts and codes only: what may appear in a hook log line.
_LOGGED = {
    "prefetched",
    "fetched",
    "ehr_outcomes",
    "icu_hour",
    "band",
    "observations",
    "measurements",
    "skipped",
    "unmapped_codes",
    "unit_errors",
    "implausible",
    "minimum",
    "fhir",
    "stage",
    "hookInstance",
    "consent",
    "consent_unreadable",
    "code_conflicts",
    "stay",
    "model_role",
}
