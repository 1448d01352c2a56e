from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from hooks import SERVICES, Service

from ..errors import ServiceNotFound

if TYPE_CHECKING:
    from ..app import AppState


def app_state(request: Request) -> AppState:
    return request.app.state.cds  # type: ignore[no-any-return]


def service_or_404(service_id: str) -> Service:
    service = SERVICES.get(service_id)
    if service is None:
        raise ServiceNotFound(f"no CDS service with id {service_id!r}")
    return service
