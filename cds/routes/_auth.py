"""The dependency that guards every CDS Hooks endpoint (discovery, service, feedback)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from ..auth import AuthFailure, Caller, bearer_token
from ._state import State

log = logging.getLogger("cds.auth")


def endpoint_url(request: Request, public_url: str | None) -> str:
    """The exact URL the EHR called, as it must appear in the token's `aud`."""
    base = public_url.rstrip("/") if public_url else f"{request.url.scheme}://{request.url.netloc}"
    return base + request.url.path


async def authenticate(request: Request, state: State) -> Caller | None:
    """The verified caller (None only with auth disabled for a local demo). FastAPI runs it once per
    request: as the routers' guard and for the routes that ask for `VerifiedCaller`."""
    if state.verifier is None:  # auth_disabled_for_local_demo
        return None
    try:
        token = bearer_token(request.headers.get("authorization"))
        caller = await state.verifier.verify(token, endpoint_url(request, state.settings.public_url))
    except AuthFailure as failure:
        state.metrics.auth_failure(failure.reason)
        # The caller sees a bare 401; the reason (a code, never the token) is for the operators.
        log.warning("caller refused", extra={"event": {"reason": failure.reason, "why": failure.detail}})
        raise
    return caller


VerifiedCaller = Annotated[Caller | None, Depends(authenticate)]
