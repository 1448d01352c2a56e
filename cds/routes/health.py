"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ._state import app_state

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    state = app_state(request)
    await state.store.ping()
    return {"status": "ok", "models": {name: m.version for name, m in state.deps.models.items()}}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> str:
    return app_state(request).metrics.render()
