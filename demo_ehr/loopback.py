"""Run an ASGI app with uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

__all__ = ["LoopbackServer", "free_port", "serve_in_thread", "wait_until_healthy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_thread(
    app: Any, *, port: int | None = None, timeout_s: float = 30.0, **options: Any
) -> LoopbackServer:
    """`options`: more uvicorn.Config arguments (the CDS server passes its own protocol and limits)."""
    port = port or free_port()
    defaults = {
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 1,
    }  # a hung test EHR must not hold teardown
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", **{**defaults, **options})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server thread exited before it started")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on port {port} did not start in {timeout_s} s")
        time.sleep(0.02)
    return LoopbackServer(server, thread, f"http://127.0.0.1:{port}")


def wait_until_healthy(url: str, *, timeout_s: float = 30.0, path: str = "/healthz") -> None:
    """Poll `url + path` until it answers 200 (a server started as a subprocess)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout_s} s")
