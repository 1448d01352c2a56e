"""Liveness, readiness and metrics: always answered at once, whatever the load or the state of the store.

Kubernetes: `/healthz` is the liveness probe (200 while the process serves; restarting it would not
help a down store), `/readyz` the readiness probe (503 until the models are loaded, the record store
answers and every configured EHR's JWKS is in this worker's cache, so the first call after a
rollout is not the one that waits for a key download).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE
from ._state import State

router = APIRouter()

STORE_CHECK_S = 0.25
JWKS_CHECK_S = 1.0


async def _store_ok(state: State) -> bool:
    try:
        async with asyncio.timeout(STORE_CHECK_S):
            store_ok = await state.store.ping()
    except Exception:  # a down or slow store is reported here, not raised
        store_ok = False
    return store_ok and not state.store.health().degraded


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    """200 while the process serves; `store` says whether the record store answered just now."""
    store_ok = await _store_ok(state)
    health = state.store.health()
    return {
        "status": "ok" if store_ok else "degraded",
        "store": "ok" if store_ok else "unavailable",
        "spooled_cards": health.spooled,
        "models": {name: m.version for name, m in state.deps.models.items()},
        "hooks": {"in_flight": state.hook_gate.in_flight, "waiting": state.deps.lane.waiting},
    }


@router.get("/readyz", response_model=None)
async def readyz(state: State) -> JSONResponse:
    """200 when this worker can answer a hook call now; 503 (with what is missing) otherwise."""
    models_ok = bool(state.deps.models)
    # The PostgreSQL store answers ping while it spools (cards are kept): ready then too.
    try:
        async with asyncio.timeout(STORE_CHECK_S):
            store_ok = await state.store.ping()
    except Exception:
        store_ok = False
    jwks: dict[str, bool] = {}
    if state.verifier is not None:
        urls = [i.jwks_url for i in state.settings.auth_issuers if i.jwks_url]
        try:
            async with asyncio.timeout(JWKS_CHECK_S):
                jwks = await state.verifier.jwks.warm(urls)
        except TimeoutError:
            jwks = {url: state.verifier.jwks.is_warm(url) for url in urls}
    checks = {
        "models": "ok" if models_ok else "missing",
        "store": "ok" if store_ok else "unavailable",
        "jwks": "ok" if all(jwks.values()) else "cold",
    }
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not-ready", "checks": checks, "jwks_loaded": sum(jwks.values())}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_model=None)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
