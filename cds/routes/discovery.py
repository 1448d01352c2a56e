"""GET /cds-services: the discovery document, rendered from hooks.SERVICES."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hooks import SERVICES

router = APIRouter()


@router.get("/cds-services")
async def discovery() -> dict[str, Any]:
    return {"services": [entry for service in SERVICES.values() for entry in service.discovery()]}
