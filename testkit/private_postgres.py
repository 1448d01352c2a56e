"""Real PostgreSQL for tests: a scratch database on the shared server, or a private server of a
test's own (initdb in a temporary directory, a free port) that it may stop, restart and freeze.
The shared server is never stopped or reconfigured."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from demo_ehr import free_port

__all__ = ["PrivatePostgres", "missing_binaries", "scratch_database"]


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new database with a random name; its connection string; dropped afterwards."""
    name = f"cds_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _bin_dir() -> Path | None:
    if env := os.environ.get("CDS_TEST_PG_BIN"):
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def missing_binaries() -> str | None:
    """Why a private server cannot be started here, or None."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists() or not (bin_dir / "postgres").exists():
        return "PostgreSQL server binaries (initdb, postgres) not found (set CDS_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run a private PostgreSQL server as"
    return None


class PrivatePostgres:
    """initdb + postgres as the `postgres` OS user when we are root (both refuse root)."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="cds-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.dir,
            **self._as,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        assert self.proc is None
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115  # kept open by the server process
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=60",
                "-c",
                "shared_buffers=16MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.dir,
            **self._as,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_tail = (self.dir / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"private PostgreSQL did not start: {log_tail}") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """Immediate shutdown, as a crash would leave it (restart runs recovery)."""
        if self.proc is None:
            return
        self.thaw()
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in self._children():
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def _children(self) -> list[int]:
        """The server's processes (each is a session leader of its own, so no killpg)."""
        assert self.proc is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def freeze(self) -> None:
        """SIGSTOP the server and every backend: connections stay open and nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)  # first: it forks no new backend while we stop the others
        for pid in self._children():
            os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            for pid in self._children():
                os.kill(pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGCONT)
            self.frozen = False

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
