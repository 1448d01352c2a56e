"""Connections that hold a socket without asking anything: closed after the header timeout, and
no more than CDS_MAX_CONNECTIONS at once (real sockets against the served app)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from cds import Settings
from demo_ehr import LoopbackServer
from testkit.helpers import serve_cds


@pytest.fixture
def guarded(tmp_path) -> Iterator[LoopbackServer]:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        header_timeout_s=0.5,
        keep_alive_s=1,
        max_connections=4,
    )
    with serve_cds(settings) as server:
        yield server


def _connect(server: LoopbackServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (recv gives b"" or a reset), else None."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None


def _response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_connection_that_never_sends_a_request_is_closed(guarded: LoopbackServer) -> None:
    with _connect(guarded) as idle:
        assert _closed_within(idle, 5.0) is not None


def test_headers_dripped_a_byte_at_a_time_are_cut_off(guarded: LoopbackServer) -> None:
    with _connect(guarded) as slow:
        start = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - start > 4:
                break
        assert closed or _closed_within(slow, 2.0) is not None
        assert time.monotonic() - start < 4


def test_a_kept_alive_connection_is_closed_when_idle_and_served_while_used(guarded: LoopbackServer) -> None:
    with _connect(guarded) as conn:
        for _ in range(3):
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(conn).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)  # shorter than both timeouts: the connection stays usable
        assert _closed_within(conn, 5.0) is not None


def test_connections_beyond_the_limit_are_refused_and_the_service_stays_reachable(
    guarded: LoopbackServer,
) -> None:
    held = [_connect(guarded) for _ in range(4)]
    try:
        time.sleep(0.1)
        extra = _connect(guarded)  # the kernel accepts; the server closes it at once
        assert _closed_within(extra, 2.0) is not None
        extra.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.1)
    assert httpx.get(f"{guarded.url}/healthz", timeout=5).status_code == 200  # the slots came back
