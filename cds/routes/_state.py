"""The routes' dependencies: the server's state, its settings, the service a path names, the
verified caller and when the call arrived. Routes declare what they need (`Annotated[..., Depends]`);
nothing reads `request.app.state` but `app_state`. Every dependency is `async def`: FastAPI runs a
plain `def` dependency in its thread pool, a thread hop per dependency per call (a few hundred
microseconds each on a busy 2-core machine) for work that never blocks."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request

from hooks import SERVICES, Service

from ..errors import ServiceNotFound
from ..settings import Settings
from ..state import AppState

ARRIVAL = "cds.arrival"  # scope key: when the call reached us (time.monotonic), set by the middleware


async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.cds
    return state


async def app_settings(state: Annotated[AppState, Depends(app_state)]) -> Settings:
    return state.settings


async def arrival(request: Request) -> float:
    """When the call arrived: its budget counts from here, body reading included."""
    stamped = request.scope.get(ARRIVAL)
    return float(stamped) if stamped is not None else time.monotonic()


async def service_or_404(service_id: str) -> Service:
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


State = Annotated[AppState, Depends(app_state)]
AppSettings = Annotated[Settings, Depends(app_settings)]
ServiceOf = Annotated[Service, Depends(service_or_404)]
Arrival = Annotated[float, Depends(arrival)]
