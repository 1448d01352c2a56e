"""kill -9 durability harness, shared by tests/cds/test_durability.py and benchmarks/durability.py.

Runs `cds serve` as a subprocess, sends hook calls and feedback from a few client threads, kills
the server with SIGKILL mid-stream and restarts it, several times. Every card answered with 200
and every feedback answered with 200 is "acknowledged". After the last restart each acknowledged
feedback is posted again (the restarted server must answer "unchanged": card and decision kept),
then the store is opened directly and every acknowledged card and decision is looked for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cds.stores import open_store
from demo_ehr import free_port, patient_view_request
from testkit.helpers import feedback, synthetic_stay

__all__ = ["DurabilityRun", "run_kill_cycles"]

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "sepsis-risk"


@dataclass
class DurabilityRun:
    store: str
    cycles: int
    cards_acked: set[str] = field(default_factory=set)
    feedback_acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # card uuid -> item
    acked_per_cycle: list[int] = field(default_factory=list)  # cards acknowledged in each cycle
    cut: int = 0  # client calls in flight when the server was killed (connection reset, no answer)
    refused: int = 0  # client calls made while the server was down (connection refused)
    unchanged_after_restart: int = 0
    cards_found: int = 0
    feedback_found: int = 0
    lost_cards: list[str] = field(default_factory=list)
    lost_feedback: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "kill cycles": self.cycles,
            "cards acked": len(self.cards_acked),
            "cards found": self.cards_found,
            "cards lost": len(self.lost_cards),
            "feedback acked": len(self.feedback_acked),
            "feedback found": self.feedback_found,
            "feedback lost": len(self.lost_feedback),
            "calls cut by kill": self.cut,
        }


class _Server:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within_s: float = 120.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cds.cli", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + within_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"cds serve did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


def _client(
    url: str, body: dict[str, Any], run: DurabilityRun, lock: threading.Lock, stop: threading.Event
) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                response = client.post(f"/cds-services/{SERVICE}", json=body)
                if response.status_code != 200 or not response.json()["cards"]:
                    continue
                card = response.json()["cards"][0]
                with lock:
                    run.cards_acked.add(card["uuid"])
                item = feedback(card["uuid"], reason=card["overrideReasons"][len(run.cards_acked) % 2])
                done = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [item]})
                if done.status_code == 200:
                    with lock:
                        run.feedback_acked[card["uuid"]] = item
            except httpx.ConnectError:
                with lock:
                    run.refused += 1
                time.sleep(0.02)
            except httpx.HTTPError:
                with lock:
                    run.cut += 1


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_kill_cycles(
    var_dir: Path,
    *,
    store: str,
    database_url: str | None = None,
    cycles: int = 2,
    segment_s: float = 1.5,
    clients: int = 3,
) -> DurabilityRun:
    """`cycles` times: start the server, let the clients run `segment_s`, kill -9. Then restart and check."""
    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "CDS_AUTH_DISABLED_FOR_LOCAL_DEMO": "true",
        "CDS_VAR_DIR": str(var_dir),
        "CDS_PSEUDONYM_KEY": "durability-key-0123456789abcdef",
        "CDS_PORT": str(port),
        "CDS_LOG_LEVEL": "WARNING",
    }
    env.pop("CDS_DATABASE_URL", None)
    if database_url:
        env["CDS_DATABASE_URL"] = database_url
    server = _Server(env, port, var_dir / "server.log")
    run = DurabilityRun(store, cycles)
    body = patient_view_request(synthetic_stay(hours=20))
    lock, stop = threading.Lock(), threading.Event()
    threads = [
        threading.Thread(target=_client, args=(server.url, body, run, lock, stop)) for _ in range(clients)
    ]
    try:
        for cycle in range(cycles):
            server.start()
            if cycle == 0:
                for t in threads:
                    t.start()
            before = len(run.cards_acked)
            time.sleep(segment_s)
            server.kill9()  # while the clients are sending
            with lock:
                run.acked_per_cycle.append(len(run.cards_acked) - before)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.start()  # after the last kill: the restarted server must know every acknowledged record
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for batch in _chunks(list(run.feedback_acked.values()), 100):
                again = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": batch})
                if again.status_code == 200:
                    results = again.json()["results"]
                    run.unchanged_after_restart += sum(r["status"] == "unchanged" for r in results)
    finally:
        stop.set()
        server.stop()
    asyncio.run(_look_in_store(run, var_dir, database_url))
    return run


async def _look_in_store(run: DurabilityRun, var_dir: Path, database_url: str | None) -> None:
    store = await open_store(
        database_url=database_url, sqlite_path=var_dir / "cds.sqlite3", spool_path=var_dir / "spool.sqlite3"
    )
    try:
        found: set[str] = set()
        for batch in _chunks(sorted(run.cards_acked), 500):
            found |= set(await store.get_cards(batch))
        stored = {}
        async for provenance in store.iter_resources("Provenance"):
            stored[provenance["target"][0]["reference"].removeprefix("RiskAssessment/")] = provenance
    finally:
        await store.close()
    run.cards_found = len(found & run.cards_acked)
    run.lost_cards = sorted(run.cards_acked - found)
    for uuid, item in run.feedback_acked.items():
        provenance = stored.get(uuid)
        reason = provenance and provenance.get("reason", [{}])[0].get("coding", [{}])[0].get("code")
        if provenance is None or reason != item["overrideReason"]["reason"]["code"]:
            run.lost_feedback.append(uuid)
        else:
            run.feedback_found += 1
