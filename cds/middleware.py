"""The outermost layer of every answer (pure ASGI, so it costs microseconds and streams nothing).

- stamps when a call arrived (its budget starts there, body reading included);
- admission: beyond `CDS_MAX_IN_FLIGHT_HOOKS` calls (or bytes) in flight, or when the CPU lane
  would refuse it anyway, a hook call is answered `{"cards": []}` at once, before its body is
  read or its token verified; beyond `CDS_MAX_IN_FLIGHT_FEEDBACK`, feedback gets 503 with
  `Retry-After` (the EHR keeps it and retries: nothing is lost);
- `Cache-Control: no-store` and `X-Content-Type-Options: nosniff` on every answer (cards and
  errors can carry clinical data);
- any exception nobody handled becomes a 500 OperationOutcome, and its traceback is logged as
  frames and exception types only: never the message or local values, which may hold PHI.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hooks import SERVICES

from .responses import json_response, operation_outcome
from .routes._state import ARRIVAL

if TYPE_CHECKING:
    from .state import AppState

__all__ = ["GuardMiddleware", "describe_exception"]

log = logging.getLogger("cds.app")

_HOOK = re.compile(r"^/cds-services/([A-Za-z0-9._~-]+)$")
_FEEDBACK = re.compile(r"^/cds-services/([A-Za-z0-9._~-]+)/feedback$")
_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Exception types and `file:line:function` frames of an exception and its causes; no messages."""
    chain: list[str] = []
    frames: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 5:
        chain.append(type(current).__name__)
        for frame in traceback.extract_tb(current.__traceback__)[-12:]:
            frames.append(f"{PurePath(frame.filename).name}:{frame.lineno}:{frame.name}")
        current = current.__cause__ or current.__context__
    return {"error": chain[0], "chain": chain, "trace": frames}


def _declared_size(scope: Scope, largest: int) -> int:
    """The body's Content-Length, capped at what the endpoint accepts (a chunked body: the cap)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return min(int(value), largest) if value.isdigit() else largest
    return largest


class GuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL] = time.monotonic()
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *_HEADERS]
            await send(message)

        state: AppState | None = getattr(scope["app"].state, "cds", None) if "app" in scope else None
        gate = None
        size = 0
        if state is not None and scope["method"] == "POST":
            path = scope["path"]
            hook = _HOOK.match(path)
            if hook is not None:
                gate = state.hook_gate
                size = _declared_size(scope, state.settings.max_hook_bytes)
                if state.deps.lane.saturated() or not gate.try_enter(size):
                    state.metrics.overloaded("hook")
                    state.metrics.hook(
                        hook.group(1) if hook.group(1) in SERVICES else "unknown", "overloaded", 0.0
                    )
                    await json_response({"cards": []})(scope, receive, guarded_send)
                    return
            elif _FEEDBACK.match(path) is not None:
                gate = state.feedback_gate
                size = _declared_size(scope, state.settings.max_feedback_bytes)
                if not gate.try_enter(size):
                    state.metrics.overloaded("feedback")
                    retry = {"Retry-After": str(state.settings.retry_after_s)}
                    await operation_outcome(
                        503, "overloaded", "too many feedback calls at once; retry", headers=retry
                    )(scope, receive, guarded_send)
                    return
        try:
            await self.app(scope, receive, guarded_send)
        except ClientDisconnect:
            return  # nobody is waiting for an answer
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "unrouted")  # the route's pattern, never the raw path
            log.error("unhandled error", extra={"event": {"route": route, **describe_exception(exc)}})
            if not started:
                await operation_outcome(500, "internal-error", "the service failed; the error was logged")(
                    scope, receive, guarded_send
                )
        finally:
            if gate is not None:
                gate.leave(size)
