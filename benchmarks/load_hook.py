#!/usr/bin/env python
"""Overload benchmark: how `cds serve` behaves under a fixed offered rate of sepsis-risk hook calls.

Each run starts its own loopback JWKS server (the test EHR's keys) and a FRESH `cds serve`
subprocess (free port, temporary CDS_VAR_DIR, secure mode: every call carries its own pre-signed
ES384 JWT), so runs do not affect each other and the same script measures old and new versions of
the server (`--env KEY=VALUE` passes extra settings). Request bodies are patient-view calls with a
72-hour prefetch of the densest held-out set-A stays (models/sepsis.py development split),
cycled; a synthetic stay when set A is absent.

- `--capacity`: sequential calls for `--capacity-s` seconds: calls/s and p50/p99 (the "1x" rate).
- `--rates R1,R2,...`: open-loop constant rate for `--duration` s each: call i is sent at
  t0 + i/R whatever the answers. Each call has a client deadline of `--budget` s (the server's
  default CDS_HOOK_TIMEOUT_S) counted from its scheduled time; past it the client gives up and
  closes the connection. Every call is classified: card (200 with >= 1 card, within budget),
  empty (200 with `{"cards": []}`), another status, timeout, connection error. Requests are
  pre-serialised HTTP/1.1 bytes sent over raw asyncio streams from a bounded keep-alive pool.
- While loading: server RSS (process tree, /proc, every 100 ms; to protect a shared machine the
  load stops early above `--max-server-rss-mb` and the run ends above 1.5 times it) and
  GET /healthz every 250 ms on its own connection (1 s timeout). After the load: recovery time,
  until /healthz answers in < 100 ms AND a normal call (fresh token) gets 200 with a card within
  the budget (polled every 100 ms, up to 60 s).
- The generator checks itself (achieved send rate, lateness of sends, its own CPU) and says so
  loudly when it fell behind.

Prints a table per rate, a summary table and one JSON object (last, on stdout). Loopback only;
stops by itself (at most duration + 90 s per rate); kills its servers on exit or Ctrl-C. Usage:
    .venv/bin/python -m benchmarks.load_hook --capacity --rates 20,50,200 --duration 60
    .venv/bin/python -m benchmarks.load_hook --rates 5,40 --duration 10 --workers 2 \
        --env CDS_HOOK_TIMEOUT_S=1.5
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.bench_hook import HOURS, percentiles, stay_frame, values_per_patient
from demo_ehr import (
    EhrIdentity,
    free_port,
    icu_start_for_hour,
    patient_view_request,
    serve_in_thread,
    stay_to_fhir,
)
from models import ModelRegistry, development_split

ROOT = Path(__file__).resolve().parents[1]

SERVICE = "/cds-services/sepsis-risk"
HOST = "127.0.0.1"
PSEUDONYM_KEY = "load-bench-key-0123456789abcdef"
WARMUP_CALLS = 5
RSS_EVERY_S = 0.1
PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 1.0
RECOVERY_EVERY_S = 0.1
RECOVERY_HEALTHZ_S = 0.1
RECOVERY_LIMIT_S = 60.0
HARD_CAP_EXTRA_S = 90.0
# The generator is "behind" when it sends below this share of the offered rate or sends late
# (p99, or any send later than a tenth of the budget).
MIN_ACHIEVED_SHARE = 0.98
MAX_LATE_P99_MS = 50.0
MAX_LATE_BUDGET_SHARE = 0.1
# Past --max-server-rss-mb the load stops; past this multiple of it the run ends (server killed).
RSS_KILL_FACTOR = 1.5


def default_data_dir() -> Path:
    if "CDS_DATA_DIR" in os.environ:
        return Path(os.environ["CDS_DATA_DIR"])
    for parent in ROOT.parents:  # ../shared/data from the main checkout, ../../shared/data from a worktree
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return ROOT.parent / "shared" / "data"


# --- workload ------------------------------------------------------------------------------------


@dataclass
class Workload:
    frames: list[pd.DataFrame]
    source: str

    def bodies(self) -> tuple[list[bytes], list[int]]:
        """Request bodies anchored at now (the stay's ICU hour 72 is the current hour), and their
        Observation counts. Rebuilt for each server so a long sweep never drifts past hour 72."""
        now = datetime.now(UTC)
        bodies, observations = [], []
        for frame in self.frames:
            stay = stay_to_fhir(frame, icu_start=icu_start_for_hour(now, HOURS), up_to_hour=HOURS)
            bodies.append(json.dumps(patient_view_request(stay)).encode())
            observations.append(len(stay.observations))
        return bodies, observations


def held_out_stays(data_dir: Path, count: int) -> Workload:
    """The `count` held-out set-A patients with 72 ICU hours and the most values in them."""
    path = data_dir / "physionet2019" / "setA.parquet"
    if not path.exists():
        frame, source = stay_frame(data_dir)
        return Workload([frame], f"{source} ({path} not found)")
    df = pd.read_parquet(path)
    try:
        seed = ModelRegistry().manifest("sepsis").seed
    except Exception:  # noqa: BLE001 - a registry without a sepsis model: the training default
        seed = 2019
    df = df[df["patient"].isin(development_split(df["patient"].to_numpy(), seed)[1])]
    long_enough = df.groupby("patient")["ICULOS"].max() >= HOURS
    df = df[df["patient"].isin(long_enough[long_enough].index) & (df["ICULOS"] <= HOURS)]
    chosen = values_per_patient(df).nlargest(count).index.tolist()
    frames = [df[df["patient"] == p].reset_index(drop=True) for p in chosen]
    return Workload(
        frames, f"{len(frames)} held-out set A stays of {HOURS} h (split seed {seed}), most values first"
    )


def request_head(port: int, token: str, length: int) -> bytes:
    return (
        f"POST {SERVICE} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@dataclass
class Signer:
    identity: EhrIdentity
    aud: str
    port: int
    lifetime_s: int

    def head(self, body: bytes) -> bytes:
        """A request head with a fresh token (new jti)."""
        token = self.identity.token(self.aud, claims={"exp": int(time.time()) + self.lifetime_s})
        return request_head(self.port, token, len(body))

    def presign(self, bodies: list[bytes], n: int) -> list[tuple[bytes, int]]:
        """n (head, body index) pairs, cycling through the bodies."""
        return [(self.head(bodies[i % len(bodies)]), i % len(bodies)) for i in range(n)]


# --- the HTTP/1.1 client -------------------------------------------------------------------------


class BadResponse(Exception):
    pass


class PoolFull(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BadResponse(lines[0][:80])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        body = b"".join(chunks)
    else:
        body, keep = await reader.read(), False
    return int(parts[1]), body, keep


@dataclass(eq=False)
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    uses: int = 0


@dataclass
class Pool:
    """Keep-alive connections: reuse an idle one, else open one, up to `cap` open at once."""

    port: int
    cap: int
    idle: list[Conn] = field(default_factory=list)
    open: int = 0
    opened: int = 0
    peak_open: int = 0
    retries: int = 0

    async def acquire(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            self.discard(conn)
        if self.open >= self.cap:
            raise PoolFull
        self.open += 1
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        except BaseException:
            self.open -= 1
            raise
        self.opened += 1
        self.peak_open = max(self.peak_open, self.open)
        return Conn(reader, writer)

    def release(self, conn: Conn) -> None:
        conn.uses += 1
        self.idle.append(conn)

    def discard(self, conn: Conn) -> None:
        self.open -= 1
        conn.writer.transport.abort()  # drop whatever is unsent: the server sees the client leave

    def close_all(self) -> None:
        while self.idle:
            self.discard(self.idle.pop())

    async def exchange(self, head: bytes, body: bytes, stage: list[str] | None = None) -> tuple[int, bytes]:
        """One request. A reused connection the server closed while idle is retried once on a new one.
        `stage[0]` tells where it is: connect, send (the server reads the body) or answer."""
        stage = stage if stage is not None else [""]
        for attempt in (0, 1):
            stage[0] = "connect"
            conn = await self.acquire()
            try:
                stage[0] = "send"
                conn.writer.write(head)
                conn.writer.write(body)
                await conn.writer.drain()
                stage[0] = "answer"
                status, payload, keep = await read_response(conn.reader)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.discard(conn)
                stale = conn.uses > 0 and not getattr(exc, "partial", b"")
                if attempt == 0 and stale:
                    self.retries += 1
                    continue
                raise
            except BaseException:  # timeout, cancel, bad response: never reuse it
                self.discard(conn)
                raise
            if keep:
                self.release(conn)
            else:
                self.discard(conn)
            return status, payload
        raise AssertionError("unreachable")


def classify(status: int, payload: bytes) -> str:
    if status != 200:
        return f"status-{status}"
    try:
        cards = json.loads(payload)["cards"]
    except (ValueError, KeyError, TypeError):
        return "status-200-not-cds"
    return "card" if cards else "empty"


async def one_call(
    pool: Pool, head: bytes, body: bytes, deadline: float
) -> tuple[str, float | None, str | None]:
    """(outcome, answered-at or None, detail: the error type, or for a timeout the stage it hit);
    `deadline` on the monotonic clock."""
    stage = [""]
    try:
        async with asyncio.timeout_at(deadline):
            status, payload = await pool.exchange(head, body, stage)
    except TimeoutError:  # before OSError: TimeoutError is one
        return "timeout", None, stage[0]
    except PoolFull:
        return "client-pool-full", None, None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadResponse, ValueError) as exc:
        return "connection-error", None, type(exc).__name__
    return classify(status, payload), time.monotonic(), None


async def healthz_once(port: int, timeout_s: float) -> tuple[bool, float]:
    """(200, seconds) of GET /healthz on a new connection."""
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(
                f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            status, _, _ = await read_response(reader)
    except (OSError, asyncio.IncompleteReadError, BadResponse, ValueError):
        return False, time.monotonic() - started
    finally:
        if writer is not None:
            writer.transport.abort()
    return status == 200, time.monotonic() - started


# --- the server under test and what we watch of it ------------------------------------------------


def tree_pids(root: int) -> list[int]:
    """The process and all its descendants (uvicorn --workers N spawns children)."""
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return pids


def rss_mb(root: int) -> float:
    total_kb = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                total_kb += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total_kb / 1024


def cpu_s(root: int) -> float:
    """User + system CPU seconds of the process tree (live processes)."""
    ticks = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


SERVERS: set[CdsServer] = set()


class CdsServer:
    """`python -m cds.cli serve` in its own process group, secure mode, trusting `identity`."""

    def __init__(self, identity: EhrIdentity, var_dir: Path, workers: int, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.aud = self.url + SERVICE
        self.var_dir = var_dir
        self.log_path = var_dir / "server.log"
        # Inherited CDS_* settings are dropped so every run sees the same configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env |= {
            "CDS_VAR_DIR": str(var_dir),
            "CDS_HOST": HOST,
            "CDS_PORT": str(self.port),
            "CDS_PUBLIC_URL": self.url,
            "CDS_PSEUDONYM_KEY": PSEUDONYM_KEY,
            "CDS_LOG_LEVEL": "WARNING",
            "CDS_AUTH_ISSUERS": json.dumps([{"iss": identity.issuer, "jwks_url": identity.jwks_url}]),
        }
        env |= extra_env
        self.env = env
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cds.cli", "serve", "--workers", str(self.workers)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        SERVERS.add(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds from the start of the process until /healthz answered 200."""
        started = self.started
        while time.monotonic() - started < timeout_s:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"cds serve exited before it answered /healthz:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.monotonic() - started
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"cds serve did not answer /healthz in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:  # workers left behind by a killed parent share its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        SERVERS.discard(self)


def stop_all_servers() -> None:
    for server in list(SERVERS):
        server.stop()


class Watchdog(threading.Thread):
    """The hard cap: past the armed deadline the servers are killed and the process exits."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="watchdog")
        self.deadline: float | None = None
        self.what = ""

    def arm(self, seconds: float, what: str) -> float:
        self.deadline, self.what = time.monotonic() + seconds, what
        return self.deadline

    def run(self) -> None:
        while True:
            time.sleep(0.5)
            if self.deadline is not None and time.monotonic() > self.deadline:
                print(
                    f"\n!!! HARD CAP: {self.what} ran past its limit; killing the server and exiting",
                    file=sys.stderr,
                    flush=True,
                )
                stop_all_servers()
                os._exit(124)


class Monitor:
    """Server RSS every 100 ms (its own thread) and, while `probing`, GET /healthz every 250 ms on a
    separate keep-alive connection with a 1 s timeout (another thread, so that the generator's event
    loop never delays a probe)."""

    def __init__(self, pid: int, port: int, rss_limit_mb: float) -> None:
        self.pid, self.port, self.rss_limit_mb = pid, port, rss_limit_mb
        self.rss: list[tuple[float, float]] = []
        self.probes: list[tuple[float, bool, float, bool]] = []  # (t, ok, seconds, timed out)
        self.over_limit = threading.Event()
        self.over_kill_limit = threading.Event()
        self.probing = threading.Event()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._sample, self._probe)]

    def __enter__(self) -> Monitor:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=5)

    def _sample(self) -> None:
        tick = time.monotonic()
        while not self.stopped.is_set():
            value = rss_mb(self.pid)
            self.rss.append((time.monotonic(), value))
            if value > self.rss_limit_mb:
                self.over_limit.set()
            if value > RSS_KILL_FACTOR * self.rss_limit_mb:
                self.over_kill_limit.set()
            tick += RSS_EVERY_S
            self.stopped.wait(max(0.0, tick - time.monotonic()))

    def _probe(self) -> None:
        conn: http.client.HTTPConnection | None = None
        tick = time.monotonic()
        while not self.stopped.is_set():
            if self.probing.is_set():
                started = time.monotonic()
                ok = timed_out = False
                try:
                    conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=PROBE_TIMEOUT_S)
                    conn.request("GET", "/healthz")
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException) as exc:
                    timed_out = isinstance(exc, TimeoutError)
                    if conn is not None:
                        conn.close()
                    conn = None
                elapsed = time.monotonic() - started
                timed_out = timed_out or elapsed > PROBE_TIMEOUT_S
                self.probes.append((started, ok and not timed_out, elapsed, timed_out))
            tick += PROBE_EVERY_S
            while tick < time.monotonic():  # skip the ticks a slow probe used up
                tick += PROBE_EVERY_S
            self.stopped.wait(max(0.0, tick - time.monotonic()))
        if conn is not None:
            conn.close()

    def rss_between(self, start: float, end: float) -> list[float]:
        return [v for t, v in self.rss if start <= t <= end]

    def rss_before(self, when: float) -> float | None:
        before = [v for t, v in self.rss if t <= when]
        return round(before[-1], 1) if before else None


# --- phases --------------------------------------------------------------------------------------


def latency_stats(samples: list[float]) -> dict[str, float]:
    return percentiles(samples, digits=1, points=(50, 95, 99), with_max=True) if samples else {"n": 0}


async def warm_up(server: CdsServer, signer: Signer, bodies: list[bytes]) -> list[float]:
    """A few sequential calls; each must get a card (else the setup is wrong: stop here)."""
    pool = Pool(server.port, 1)
    took = []
    try:
        for i in range(WARMUP_CALLS):
            body = bodies[i % len(bodies)]
            head = signer.head(body)
            started = time.monotonic()
            async with asyncio.timeout(30):
                status, payload = await pool.exchange(head, body)
            if classify(status, payload) != "card":
                raise RuntimeError(f"warm-up call got {status}: {payload[:300]!r}\n{server.log_tail()}")
            took.append(round(1000 * (time.monotonic() - started), 1))
    finally:
        pool.close_all()
    return took


async def capacity_phase(
    server: CdsServer, signer: Signer, bodies: list[bytes], seconds: float
) -> dict[str, Any]:
    warm = await warm_up(server, signer, bodies)
    heads = signer.presign(bodies, 2000)
    pool = Pool(server.port, 1)
    samples, outcomes = [], Counter()
    started = time.monotonic()
    try:
        i = 0
        while time.monotonic() - started < seconds:
            head, b = heads[i] if i < len(heads) else (signer.head(bodies[i % len(bodies)]), i % len(bodies))
            t = time.monotonic()
            outcome, answered, _ = await one_call(pool, head, bodies[b], t + 30)
            outcomes[outcome] += 1
            if answered is not None:
                samples.append(answered - t)
            i += 1
    finally:
        pool.close_all()
    elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 2),
        "calls": sum(outcomes.values()),
        "calls_per_s": round(sum(outcomes.values()) / elapsed, 2),
        "outcomes": dict(outcomes),
        "latency_ms": latency_stats(samples),
        "warmup_ms": warm,
    }


async def recovery_phase(
    server: CdsServer,
    signer: Signer,
    body: bytes,
    budget_s: float,
    end: float,
    limit_s: float,
    monitor: Monitor,
) -> dict[str, Any]:
    """From `end` (the load stopped) until /healthz < 100 ms AND a normal call gets a card within budget."""
    attempts, tick = 0, time.monotonic()
    last = ""
    while time.monotonic() - end < limit_s:
        if monitor.over_kill_limit.is_set():
            last = (
                f"server RSS over {RSS_KILL_FACTOR * monitor.rss_limit_mb:.0f} MB: run ended, server killed"
            )
            break
        attempts += 1
        ok, took = await healthz_once(server.port, 1.0)
        if not ok or took >= RECOVERY_HEALTHZ_S:
            last = f"healthz {'ok' if ok else 'failed'} in {1000 * took:.0f} ms"
        else:
            pool = Pool(server.port, 1)
            outcome, answered, _ = await one_call(pool, signer.head(body), body, time.monotonic() + budget_s)
            pool.close_all()
            if outcome == "card" and answered is not None:
                return {"recovered": True, "seconds": round(answered - end, 2), "attempts": attempts}
            last = f"healthz ok, hook call: {outcome}"
        tick += RECOVERY_EVERY_S
        while tick < time.monotonic():
            tick += RECOVERY_EVERY_S
        await asyncio.sleep(tick - time.monotonic())
    return {
        "recovered": False,
        "seconds": None,
        "limit_s": round(limit_s, 1),
        "attempts": attempts,
        "last": last,
    }


@dataclass
class Sent:
    started: float  # when the call's task started (monotonic clock)
    late: float  # started minus its scheduled time
    outcome: str = "pending"
    latency: float | None = None  # answered at minus scheduled time


async def load_phase(
    server: CdsServer,
    signer: Signer,
    bodies: list[bytes],
    requests: list[tuple[bytes, int]],
    monitor: Monitor,
    args: argparse.Namespace,
    rate: float,
    hard_deadline: float,
) -> dict[str, Any]:
    warm = await warm_up(server, signer, bodies)
    pool = Pool(server.port, args.max_connections)
    sent: list[Sent] = []
    errors: Counter[str] = Counter()
    timeout_stages: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def call(i: int, scheduled: float) -> None:
        started = time.monotonic()
        record = Sent(started, started - scheduled)
        sent.append(record)
        head, b = requests[i]
        outcome, answered, error = await one_call(pool, head, bodies[b], scheduled + args.budget)
        record.outcome = outcome
        if answered is not None:
            record.latency = answered - scheduled
        if outcome == "timeout":
            timeout_stages[error or "connect"] += 1
        elif error:
            errors[error] += 1

    gc.collect()
    gc.freeze()  # what exists now (tokens, bodies) is never scanned again: shorter collector pauses
    cpu_client, cpu_server = time.process_time(), cpu_s(server.pid)
    monitor.probing.set()
    t0 = time.monotonic() + 0.05
    aborted = None
    for i in range(len(requests)):
        scheduled = t0 + i / rate
        delay = scheduled - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
        if monitor.over_limit.is_set():
            when = time.monotonic() - t0
            aborted = f"server RSS over {args.max_server_rss_mb:.0f} MB after {when:.1f} s: load stopped"
            break
        task = asyncio.create_task(call(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    end = time.monotonic() if aborted else t0 + len(requests) / rate
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    monitor.probing.clear()
    load_cpu_client = time.process_time() - cpu_client
    load_cpu_server = cpu_s(server.pid) - cpu_server

    limit = max(5.0, min(RECOVERY_LIMIT_S, hard_deadline - time.monotonic() - 15))
    recovery = await recovery_phase(server, signer, bodies[0], args.budget, end, limit, monitor)
    if tasks:
        await asyncio.wait(tasks, timeout=args.budget + 5)
    pool.close_all()
    gc.unfreeze()
    rss_end = monitor.rss[-1][1] if monitor.rss else None
    return {
        "warm": warm,
        "sent": sent,
        "errors": errors,
        "timeout_stages": timeout_stages,
        "pool": pool,
        "t0": t0,
        "end": end,
        "aborted": aborted,
        "recovery": recovery,
        "cpu_client": load_cpu_client,
        "cpu_server": load_cpu_server,
        "rss_end": rss_end,
    }


def summarise_load(
    rate: float,
    duration: float,
    offered: int,
    raw: dict[str, Any],
    monitor: Monitor,
    budget: float,
    request_bytes: list[int],
) -> dict[str, Any]:
    sent: list[Sent] = raw["sent"]
    t0, end = raw["t0"], raw["end"]
    outcomes = Counter(s.outcome for s in sent)
    n = len(sent)
    answered = [s.latency for s in sent if s.latency is not None]
    cards = [s.latency for s in sent if s.outcome == "card" and s.latency is not None]
    late = [s.late for s in sent]
    starts = [s.started for s in sent]
    achieved = (n - 1) / (max(starts) - min(starts)) if n > 1 and max(starts) > min(starts) else 0.0
    late_stats = latency_stats(late)
    warnings = []
    if n < offered and not raw["aborted"]:
        warnings.append(f"only {n} of {offered} calls were sent")
    if n and achieved < MIN_ACHIEVED_SHARE * rate:
        warnings.append(
            f"achieved send rate {achieved:.1f}/s is below {MIN_ACHIEVED_SHARE:.0%} of {rate:g}/s"
        )
    too_late = late_stats.get("max_ms", 0) > MAX_LATE_BUDGET_SHARE * budget * 1000
    if n and (late_stats.get("p99_ms", 0) > MAX_LATE_P99_MS or too_late):
        warnings.append(f"sends were late: p99 {late_stats['p99_ms']} ms, max {late_stats['max_ms']} ms")
    client_cpu = raw["cpu_client"] / max(1e-9, end - t0)
    if client_cpu > 0.9:
        warnings.append(f"the generator used {client_cpu:.0%} of a core")
    if outcomes.get("client-pool-full"):
        warnings.append(f"{outcomes['client-pool-full']} calls found the client's connection pool full")
    probes = [p for p in monitor.probes if t0 <= p[0] <= end]
    peak = monitor.rss_between(t0, time.monotonic())
    timeline = []
    for second in range(int((time.monotonic() - t0) // 1) + 1):
        values = monitor.rss_between(t0 + second, t0 + second + 1)
        if values:
            timeline.append(round(max(values)))
    status = {k.removeprefix("status-"): v for k, v in sorted(outcomes.items()) if k.startswith("status-")}
    return {
        "rate_per_s": rate,
        "duration_s": duration,
        "budget_s": budget,
        "offered": offered,
        "sent": n,
        "aborted": raw["aborted"],
        "generator": {
            "achieved_rate_per_s": round(achieved, 2),
            "send_late_ms": late_stats,
            "client_cpu_share_of_core": round(client_cpu, 3),
            "sent_mb_per_s": round(
                sum(request_bytes[i % len(request_bytes)] for i in range(n)) / max(1e-9, end - t0) / 1e6, 1
            ),
            "connections_opened": raw["pool"].opened,
            "peak_open_connections": raw["pool"].peak_open,
            "stale_keepalive_retries": raw["pool"].retries,
            "behind": bool(warnings),
            "warnings": warnings,
        },
        "outcomes": {
            "card_within_budget": outcomes.get("card", 0),
            "empty_within_budget": outcomes.get("empty", 0),
            "other_status_within_budget": status,
            "timeout": outcomes.get("timeout", 0),
            "connection_error": outcomes.get("connection-error", 0),
            "client_pool_full": outcomes.get("client-pool-full", 0),
            "pending_at_exit": outcomes.get("pending", 0),
        },
        "card_within_budget_share": round(outcomes.get("card", 0) / n, 4) if n else None,
        # Where the timed-out calls were when the deadline hit: connect (not accepted), send (the
        # body did not fit in the socket buffers: the server was not reading it), answer (the whole
        # request was written to the socket, no answer came).
        "timeout_stage": {k: raw["timeout_stages"].get(k, 0) for k in ("connect", "send", "answer")},
        "connection_errors": dict(raw["errors"]),
        "latency_answered_ms": latency_stats(answered),
        "latency_card_ms": latency_stats(cards),
        "healthz": {
            "probes": len(probes),
            "failed_or_timed_out": sum(not ok for _, ok, _, _ in probes),
            "timed_out": sum(timed_out for *_, timed_out in probes),
            "latency_ms": latency_stats([took for _, _, took, _ in probes]),
        },
        "server_rss_mb": {
            "before_load": monitor.rss_before(t0),
            "peak": round(max(peak), 1) if peak else None,
            "after_recovery": round(raw["rss_end"], 1) if raw["rss_end"] is not None else None,
            "peak_per_second_from_load_start": timeline,
        },
        "server_cpu_s_during_load": round(raw["cpu_server"], 2),
        "recovery": raw["recovery"],
        "warmup_ms": raw["warm"],
    }


# --- runs ----------------------------------------------------------------------------------------


def with_server(
    identity: EhrIdentity, args: argparse.Namespace, cap_s: float, what: str, watchdog: Watchdog, work: Any
) -> dict[str, Any]:
    """A fresh server (work(server, deadline) starts it); always stopped after."""
    deadline = watchdog.arm(cap_s, what)
    with tempfile.TemporaryDirectory(prefix="cds-load-") as var:
        server = CdsServer(identity, Path(var), args.workers, args.env)
        try:
            return work(server, deadline)
        finally:
            server.stop()
            watchdog.deadline = None


def run_capacity(
    identity: EhrIdentity, workload: Workload, args: argparse.Namespace, watchdog: Watchdog
) -> dict[str, Any]:
    def work(server: CdsServer, deadline: float) -> dict[str, Any]:
        bodies, _ = workload.bodies()
        signer = Signer(identity, server.aud, server.port, args.token_lifetime)
        server.start()
        startup = server.wait_ready()
        result = asyncio.run(capacity_phase(server, signer, bodies, args.capacity_s))
        return {"server_startup_s": round(startup, 2), **result}

    return with_server(identity, args, args.capacity_s + HARD_CAP_EXTRA_S, "the capacity run", watchdog, work)


def run_rate(
    identity: EhrIdentity, workload: Workload, args: argparse.Namespace, rate: float, watchdog: Watchdog
) -> dict[str, Any]:
    def work(server: CdsServer, deadline: float) -> dict[str, Any]:
        bodies, _ = workload.bodies()
        signer = Signer(identity, server.aud, server.port, args.token_lifetime)
        offered = round(rate * args.duration)
        signing = time.monotonic()
        requests = signer.presign(bodies, offered)  # before the server starts: its port is known
        signing = time.monotonic() - signing
        server.start()
        startup = server.wait_ready()
        with Monitor(server.pid, server.port, args.max_server_rss_mb) as monitor:
            raw = asyncio.run(load_phase(server, signer, bodies, requests, monitor, args, rate, deadline))
        result = summarise_load(
            rate, args.duration, offered, raw, monitor, args.budget, [len(b) for b in bodies]
        )
        return {
            **result,
            "server_startup_s": round(startup, 2),
            "tokens_presigned": offered,
            "signing_s": round(signing, 2),
        }

    return with_server(
        identity, args, args.duration + HARD_CAP_EXTRA_S, f"the {rate:g}/s run", watchdog, work
    )


# --- output --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model
            )
    mem = None
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/meminfo") as f:
            mem = round(int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) / 1024)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mb": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None,
        "working_dir": str(ROOT),
    }


def fmt_ms(stats: dict[str, float], key: str) -> str:
    return f"{stats[key]:.0f}" if key in stats else "-"


def print_rate(r: dict[str, Any]) -> None:
    g, o, h, rss = r["generator"], r["outcomes"], r["healthz"], r["server_rss_mb"]
    n, late, la = max(1, r["sent"]), g["send_late_ms"], r["latency_answered_ms"]
    print(f"\n=== {r['rate_per_s']:g} calls/s for {r['duration_s']:g} s, budget {r['budget_s']:g} s ===")
    if r["aborted"]:
        print(f"  !!! {r['aborted']}")
    print(
        f"  generator: offered {r['offered']}, sent {r['sent']}, "
        f"achieved {g['achieved_rate_per_s']:.2f}/s; sends late "
        f"p50 {late.get('p50_ms', '-')} / p99 {late.get('p99_ms', '-')} / max {late.get('max_ms', '-')} ms"
    )
    print(
        f"  generator: CPU {g['client_cpu_share_of_core']:.0%} of a core, {g['sent_mb_per_s']} MB/s, "
        f"{g['connections_opened']} connections opened (peak {g['peak_open_connections']} open)"
    )
    if g["behind"]:
        print("  " + "!" * 78)
        for w in g["warnings"]:
            print(f"  !!! THE GENERATOR FELL BEHIND: {w}")
        print("  " + "!" * 78)
    rows = [
        ("card (200, >= 1 card)", o["card_within_budget"]),
        ("empty (200, no card)", o["empty_within_budget"]),
    ]
    rows += [(f"status {code}", count) for code, count in o["other_status_within_budget"].items()]
    rows += [(f"timeout (> {r['budget_s']:g} s)", o["timeout"]), ("connection error", o["connection_error"])]
    rows += [
        (label, o[key])
        for label, key in (("client pool full", "client_pool_full"), ("still pending", "pending_at_exit"))
        if o[key]
    ]
    print(f"  {'outcome':<28}{'calls':>8}{'share':>9}")
    for label, count in rows:
        print(f"  {label:<28}{count:>8}{count / n:>9.1%}")
    if o["timeout"]:
        ts = r["timeout_stage"]
        print(
            f"  timeouts hit while connecting {ts['connect']}, sending the body {ts['send']}, "
            f"waiting for the answer (request written) {ts['answer']}"
        )
    if r["connection_errors"]:
        print(f"  connection errors: {r['connection_errors']}")
    answered = "  ".join(f"{k} {fmt_ms(la, k + '_ms')}" for k in ("p50", "p95", "p99", "max"))
    print(f"  answered latency ms (from the scheduled send): {answered}  (n {la['n']})")
    print(
        f"  healthz probes: {h['probes']}, failed/timed out {h['failed_or_timed_out']} "
        f"(timed out {h['timed_out']}), p50 {fmt_ms(h['latency_ms'], 'p50_ms')} "
        f"/ max {fmt_ms(h['latency_ms'], 'max_ms')} ms"
    )
    print(
        f"  server RSS MB: before load {rss['before_load']}, peak {rss['peak']}, "
        f"after recovery {rss['after_recovery']}; server CPU during load {r['server_cpu_s_during_load']} s"
    )
    rec = r["recovery"]
    if rec["recovered"]:
        print(f"  recovery: {rec['seconds']} s after the load stopped")
    else:
        print(f"  recovery: NOT RECOVERED in {rec['limit_s']:g} s ({rec['last']})")


def print_summary(report: dict[str, Any]) -> None:
    cap = report.get("capacity")
    if cap:
        lat = cap["latency_ms"]
        print(
            f"\n=== capacity (sequential, one connection): {cap['calls_per_s']} calls/s "
            f"over {cap['seconds']} s, "
            f"p50 {fmt_ms(lat, 'p50_ms')} ms, p99 {fmt_ms(lat, 'p99_ms')} ms, {cap['outcomes']} ==="
        )
    if not report["runs"]:
        return
    columns = ["rate/s", "sent/s", "card%", "empty%", "other%", "tmout%", "conn%", "p50ms", "p99ms", "maxms"]
    columns += ["hz-fail", "RSS-MB", "recov-s"]
    print("\n" + "".join(f"{c:>8}" for c in columns))
    for r in report["runs"]:
        o, n = r["outcomes"], max(1, r["sent"])
        la, rec = r["latency_answered_ms"], r["recovery"]
        other = sum(o["other_status_within_budget"].values()) + o["client_pool_full"] + o["pending_at_exit"]
        shares = [
            o["card_within_budget"],
            o["empty_within_budget"],
            other,
            o["timeout"],
            o["connection_error"],
        ]
        cells = [f"{r['rate_per_s']:g}", f"{r['generator']['achieved_rate_per_s']:.1f}"]
        cells += [f"{x / n:.1%}" for x in shares]
        cells += [fmt_ms(la, k) for k in ("p50_ms", "p99_ms", "max_ms")]
        cells += [str(r["healthz"]["failed_or_timed_out"]), f"{r['server_rss_mb']['peak'] or 0:.0f}"]
        cells.append(str(rec["seconds"]) if rec["recovered"] else f">{rec['limit_s']:g}")
        flags = ("  GENERATOR BEHIND" if r["generator"]["behind"] else "") + (
            "  ABORTED" if r["aborted"] else ""
        )
        print("".join(f"{c:>8}" for c in cells) + flags)


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, not {item!r}")
        env[key] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--capacity", action="store_true", help="measure sequential capacity first (the 1x rate)"
    )
    parser.add_argument(
        "--capacity-s", type=float, default=10.0, help="seconds of sequential calls (default 10)"
    )
    parser.add_argument(
        "--rate", type=float, action="append", default=[], help="offered calls/s (repeatable)"
    )
    parser.add_argument("--rates", default="", help="comma-separated offered rates, e.g. 20,50,200")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per rate (default 60)")
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="client deadline per call in s (default 2.0, the "
        "server's default CDS_HOOK_TIMEOUT_S; set the server's with --env)",
    )
    parser.add_argument("--workers", type=int, default=1, help="cds serve --workers (default 1)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server environment (repeatable)",
    )
    parser.add_argument(
        "--stays", type=int, default=30, help="distinct held-out stays to cycle through (default 30)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=default_data_dir(), help="holds physionet2019/setA.parquet"
    )
    parser.add_argument(
        "--max-connections", type=int, default=1000, help="client connection cap (default 1000)"
    )
    parser.add_argument(
        "--max-server-rss-mb",
        type=float,
        default=6144.0,
        help="stop offering load when the server's RSS passes this (default 6144)",
    )
    parser.add_argument("--token-lifetime", type=int, default=900, help="JWT exp - iat in s (default 900)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    args.env = parse_env(args.env)
    rates = [*args.rate, *(float(x) for x in args.rates.split(",") if x.strip())]
    if not rates and not args.capacity:
        parser.error("give --capacity and/or --rate/--rates")
    if any(r <= 0 for r in rates) or args.duration <= 0:
        parser.error("rates and duration must be positive")
    if args.token_lifetime < args.duration + HARD_CAP_EXTRA_S:
        parser.error("--token-lifetime must outlast a run (duration + 90 s)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(stop_all_servers)
    watchdog = Watchdog()
    watchdog.start()

    print(f"loading stays from {args.data_dir} ...", file=sys.stderr, flush=True)
    workload = held_out_stays(args.data_dir, args.stays)
    bodies, observations = workload.bodies()
    sizes = [len(b) for b in bodies]
    report: dict[str, Any] = {
        "benchmark": "benchmarks/load_hook.py",
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": {
            **git_commit(),
            "command": "python -m cds.cli serve",
            "workers": args.workers,
            "extra_env": args.env,
            "auth": "signed ES384 JWTs (CDS_AUTH_ISSUERS), one pre-signed token per call",
        },
        "workload": {
            "source": workload.source,
            "stays": len(bodies),
            "hours": HOURS,
            "request_bytes": {"min": min(sizes), "mean": round(sum(sizes) / len(sizes)), "max": max(sizes)},
            "observations": {
                "min": min(observations),
                "mean": round(sum(observations) / len(observations)),
                "max": max(observations),
            },
        },
        "client": {
            "budget_s": args.budget,
            "max_connections": args.max_connections,
            "loop": "asyncio (raw streams)",
            "healthz_probe": f"every {PROBE_EVERY_S} s, {PROBE_TIMEOUT_S} s timeout",
            "recovery": f"healthz < {RECOVERY_HEALTHZ_S * 1000:.0f} ms and a card within budget, "
            f"polled every {RECOVERY_EVERY_S} s, up to {RECOVERY_LIMIT_S:.0f} s",
        },
        "capacity": None,
        "runs": [],
    }
    print(
        f"workload: {workload.source}; request {report['workload']['request_bytes']} bytes, "
        f"{report['workload']['observations']} Observations; server {report['server']['commit']}"
        f"{' (dirty)' if report['server']['dirty'] else ''}, workers {args.workers}",
        flush=True,
    )

    identity = EhrIdentity(issuer="https://ehr.load-bench.example.org/fhir")
    interrupted = False
    try:
        with serve_in_thread(identity.app()) as jwks:
            identity.jwks_url = f"{jwks.url}/.well-known/jwks.json"
            if args.capacity:
                print(
                    f"capacity: sequential calls for {args.capacity_s:g} s ...", file=sys.stderr, flush=True
                )
                report["capacity"] = run_capacity(identity, workload, args, watchdog)
                cap = report["capacity"]
                print(
                    f"capacity: {cap['calls_per_s']} calls/s, p50 {cap['latency_ms'].get('p50_ms')} ms, "
                    f"p99 {cap['latency_ms'].get('p99_ms')} ms",
                    flush=True,
                )
            for rate in rates:
                print(
                    f"rate {rate:g}/s for {args.duration:g} s on a fresh server ...",
                    file=sys.stderr,
                    flush=True,
                )
                result = run_rate(identity, workload, args, rate, watchdog)
                report["runs"].append(result)
                print_rate(result)
                sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: partial report", file=sys.stderr)
    finally:
        stop_all_servers()
    report["interrupted"] = interrupted
    print_summary(report)
    text = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
