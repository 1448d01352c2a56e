from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import Request

from hooks import SERVICES, Service

from ..errors import ServiceNotFound

if TYPE_CHECKING:
    from ..app import AppState

ARRIVAL = "cds.arrival"  # scope key: when the call reached us (time.monotonic), set by the middleware


def app_state(request: Request) -> AppState:
    return request.app.state.cds  # type: ignore[no-any-return]


def arrival(request: Request) -> float:
    """When the call arrived: its budget counts from here, body reading included."""
    stamped = request.scope.get(ARRIVAL)
    return float(stamped) if stamped is not None else time.monotonic()


def service_or_404(service_id: str) -> Service:
    service = SERVICES.get(service_id)
    if service is None:
        raise ServiceNotFound(f"no CDS service with id {service_id!r}")
    return service


async def until_disconnected(request: Request) -> None:
    """Returns when the client has gone (call only once the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
