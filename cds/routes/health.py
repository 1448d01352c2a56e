"""Liveness and metrics: always answered at once, whatever the load or the state of the store."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from ._state import State

router = APIRouter()

STORE_CHECK_S = 0.25


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    """200 while the process serves; `store` says whether the record store answered just now."""
    try:
        async with asyncio.timeout(STORE_CHECK_S):
            store_ok = await state.store.ping()
    except Exception:  # a down or slow store is reported here, not raised: liveness is ours
        store_ok = False
    health = state.store.health()
    store_ok = store_ok and not health.degraded
    return {
        "status": "ok" if store_ok else "degraded",
        "store": "ok" if store_ok else "unavailable",
        "spooled_cards": health.spooled,
        "models": {name: m.version for name, m in state.deps.models.items()},
        "hooks": {"in_flight": state.hook_gate.in_flight, "waiting": state.deps.lane.waiting},
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> str:
    return state.metrics.render()
