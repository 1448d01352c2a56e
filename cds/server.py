"""How connections are served: uvicorn with limits it does not have by itself.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that
never sends a request (or sends its headers a byte at a time) stays open forever: 1,100 such
sockets made the service unreachable at the common 1,024 open-file limit. `GuardedH11Protocol`
closes a connection that has not sent complete request headers within `CDS_HEADER_TIMEOUT_S`
(after connecting, or after its previous answer), and refuses connections beyond
`CDS_MAX_CONNECTIONS` by closing them at once. No `server` banner is sent. Behind a reverse
proxy, set the proxy's own limits too (docs/hardening.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings, get_settings

__all__ = [
    "GuardedH11Protocol",
    "guarded_protocol",
    "no_delay",
    "prepare_multiprocess_metrics",
    "raise_open_file_limit",
    "uvicorn_options",
]

log = logging.getLogger("cds.server")


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off for a TCP connection. Workers started by `--workers N` serve a
    socket the supervisor made with `socket.fromfd`, whose `proto` is 0, so asyncio does not set
    TCP_NODELAY itself: a response written as headers, then body, then waited for the client's
    delayed ACK, 40 ms on every call (GET /cds-services p50 0.6 ms with one worker, 44 ms with
    two; 0.6 ms with two once set)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class GuardedH11Protocol(H11Protocol):
    """Limits come from the class attributes, or (None) from `CDS_*` settings: worker processes
    started by `cds serve --workers N` import this class by name and read the same environment."""

    header_timeout_s: float | None = None
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None or self.max_connections is None:
            settings = get_settings()
            type(self).header_timeout_s = settings.header_timeout_s
            type(self).max_connections = settings.max_connections
        self._header_timer: asyncio.TimerHandle | None = None

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        assert self.header_timeout_s is not None
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire, self.cycle)

    def _expire(self, cycle_when_armed: Any) -> None:
        self._header_timer = None
        # Still no new request since the timer started: the headers never came.
        if self.cycle is cycle_when_armed and self._idle() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        no_delay(transport)
        assert self.max_connections is not None
        if len(self.connections) > self.max_connections:
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._idle():
            self._arm()  # the first bytes of a new request on a kept-alive connection
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """A protocol class bound to these settings (for servers run in-process, e.g. tests)."""
    return type(
        "BoundGuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections},
    )


def uvicorn_options(settings: Settings, *, in_process: bool = False) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config / uvicorn.run."""
    return {
        "http": guarded_protocol(settings) if in_process else GuardedH11Protocol,
        "server_header": False,
        "timeout_keep_alive": settings.keep_alive_s,
        # A worker loading its models holds the GIL for seconds on a busy machine: with uvicorn's
        # 5 s health check the supervisor killed workers while they started (`--workers N`).
        "timeout_worker_healthcheck": 60,
        "log_config": None,
        "access_log": False,  # an access log holds query strings; we log our own lines
    }


def raise_open_file_limit(settings: Settings) -> None:
    """Make room for `max_connections` sockets plus the files a worker keeps open."""
    needed = settings.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < needed:
        log.warning(
            "open-file limit %d is below CDS_MAX_CONNECTIONS + 256 (%d): lower CDS_MAX_CONNECTIONS or raise "
            "the limit",
            target,
            needed,
        )


def prepare_multiprocess_metrics(settings: Settings) -> str:
    """Before the workers start: an empty PROMETHEUS_MULTIPROC_DIR they all write their metrics
    to (prometheus-client's multi-process mode), so /metrics from any worker sums all of them.
    A folder left by an earlier run is emptied: its dead workers' counters would add up."""
    from .metrics import MULTIPROC_ENV

    folder = os.environ.get(MULTIPROC_ENV) or str(settings.var_dir / "prometheus")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    os.environ[MULTIPROC_ENV] = folder
    return folder
