"""Admission control: the Lane's bounds (unit, asyncio) and the service under more calls than it
can take (real HTTP): every call answered within its budget, at capacity a fast "no guidance",
feedback 503 with Retry-After, /healthz answering throughout, work dropped when the caller leaves."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cds import Settings
from cds.admission import Deadline, Gate, Lane
from cds.errors import BudgetSpent, Overloaded
from demo_ehr import DemoFhirServer, LoopbackServer, patient_view_request
from testkit.helpers import feedback, serve_cds, synthetic_stay
from testkit.metrics import by_label, metric

SEPSIS = "/cds-services/sepsis-risk"


def test_the_gate_bounds_calls_and_body_bytes_in_flight() -> None:
    gate = Gate(3, max_bytes=100)
    assert gate.try_enter(60) and not gate.try_enter(60)  # 120 bytes would be over
    assert gate.try_enter(40) and gate.try_enter(0) and not gate.try_enter(0)  # 3 calls: full
    gate.leave(60)
    assert gate.try_enter(50) and gate.bytes == 90 and gate.in_flight == 3
    lone = Gate(3, max_bytes=10)
    assert lone.try_enter(500)  # one call is always let in (its body is capped by its own limit)


def test_the_lane_runs_at_most_its_concurrency_and_refuses_beyond_its_queue() -> None:
    lane = Lane(2, max_waiting=3, max_wait_s=5.0)
    running, peak = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def step() -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return 1

    async def scenario() -> list[object]:
        deadline = Deadline.after(10)
        tasks = [asyncio.ensure_future(lane.run(deadline, step)) for _ in range(5)]  # 2 run, 3 wait
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded):
            await lane.run(deadline, step)  # the sixth finds the queue full: refused at once
        assert lane.waiting == 3
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    lane.close()
    assert results == [1, 1, 1, 1, 1] and peak == 2


def test_a_waiter_gives_up_at_its_patience_and_a_late_or_cancelled_step_never_starts() -> None:
    lane = Lane(1, max_waiting=10, max_wait_s=0.2)
    started: list[str] = []
    hold = threading.Event()

    def blocker() -> None:
        started.append("blocker")
        hold.wait(5)

    def later(name: str) -> str:
        started.append(name)
        return name

    async def scenario() -> None:
        first = asyncio.ensure_future(lane.run(Deadline.after(10), blocker))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(Overloaded):
            await lane.run(Deadline.after(10), later, "patient")  # waits max_wait_s, then gives up
        assert 0.15 < time.monotonic() - t0 < 2.0
        cancelled = asyncio.ensure_future(lane.run(Deadline.after(10), later, "cancelled"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        expired = asyncio.ensure_future(lane.run(Deadline.after(0.01), later, "expired"))
        await asyncio.sleep(0.05)
        hold.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        with pytest.raises((BudgetSpent, Overloaded)):
            await expired
        assert await lane.run(Deadline.after(10), later, "after") == "after"

    asyncio.run(scenario())
    lane.close()
    assert started == ["blocker", "after"]


def test_a_call_already_in_progress_is_served_before_new_ones() -> None:
    lane = Lane(1, max_waiting=10, max_wait_s=5.0)
    order: list[str] = []
    hold = threading.Event()

    async def scenario() -> None:
        first = asyncio.ensure_future(lane.run(Deadline.after(10), hold.wait, 5))
        await asyncio.sleep(0.05)
        new = [
            asyncio.ensure_future(lane.run(Deadline.after(10), order.append, f"new-{i}")) for i in range(3)
        ]
        await asyncio.sleep(0.05)
        scoring = asyncio.ensure_future(lane.run(Deadline.after(10), order.append, "in-progress", stage=1))
        await asyncio.sleep(0.05)
        assert lane.expected_wait(stage=1) < lane.expected_wait(stage=0)
        hold.set()
        await asyncio.gather(first, scoring, *new)

    asyncio.run(scenario())
    lane.close()
    assert order == ["in-progress", "new-0", "new-1", "new-2"]


@pytest.fixture
def small(tmp_path) -> LoopbackServer:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        hook_timeout_s=1.5,
        hook_workers=1,
        hook_queue=2,
        hook_queue_wait_s=0.3,
        max_in_flight_hooks=6,
        max_in_flight_feedback=1,
    )
    with serve_cds(settings) as server:
        yield server


def _histogram(metrics: str, service: str = "sepsis-risk") -> dict[str, int]:
    return by_label(metrics, "cds_hook_seconds_bucket", "le", service=service)


def test_more_calls_than_capacity_are_all_answered_within_budget(small: LoopbackServer) -> None:
    body = json.dumps(patient_view_request(synthetic_stay(hours=48))).encode()
    health: list[int] = []
    done = threading.Event()

    def one(_: int) -> tuple[int, bool]:
        response = httpx.post(
            f"{small.url}{SEPSIS}", content=body, headers={"content-type": "application/json"}, timeout=10
        )
        return response.status_code, bool(response.json()["cards"])

    def probe() -> None:
        while not done.is_set():
            health.append(httpx.get(f"{small.url}/healthz", timeout=5).status_code)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(48)))
    done.set()
    prober.join()
    assert all(status == 200 for status, _ in results)
    with_card = sum(card for _, card in results)
    assert 0 < with_card < len(results)  # some served, the rest told "no guidance" at once
    assert health and set(health) == {200}
    metrics = httpx.get(f"{small.url}/metrics").text
    assert 'reason="overloaded"' in metrics
    buckets = _histogram(metrics)
    assert (
        buckets["2.0"] == buckets["+Inf"] == len(results)
    )  # every answer within the 1.5 s budget (server side)
    after = httpx.post(
        f"{small.url}{SEPSIS}", content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert after.status_code == 200 and after.json()["cards"]  # healthy again at once


def test_feedback_beyond_capacity_is_503_with_retry_after(small: LoopbackServer) -> None:
    card = httpx.post(
        f"{small.url}{SEPSIS}", json=patient_view_request(synthetic_stay(hours=8)), timeout=10
    ).json()["cards"][0]
    host, port = small.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        # One feedback call in flight (its body still arriving) fills max_in_flight_feedback=1.
        slow.sendall(
            f"POST {SEPSIS}/feedback HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"
        )
        time.sleep(0.2)
        refused = httpx.post(
            f"{small.url}{SEPSIS}/feedback", json={"feedback": [feedback(card["uuid"])]}, timeout=10
        )
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["resourceType"] == "OperationOutcome"
    time.sleep(0.2)
    accepted = httpx.post(
        f"{small.url}{SEPSIS}/feedback", json={"feedback": [feedback(card["uuid"])]}, timeout=10
    )
    assert accepted.status_code == 200, accepted.text


def test_a_call_whose_caller_left_is_abandoned(
    tmp_path, ehr: DemoFhirServer, ehr_server: LoopbackServer
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        hook_timeout_s=5.0,
        fhir_timeout_s=10,
    )
    ehr.delay_s = 8.0  # the EHR hangs: only the caller leaving can end this call early
    stay = synthetic_stay(hours=8)
    ehr.add(stay.all())
    body = patient_view_request(stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token)
    with serve_cds(settings) as server:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.url}{SEPSIS}", json=body, timeout=0.3)
        deadline = time.monotonic() + 3.0  # well before the 5 s budget would end it
        metrics = ""
        while time.monotonic() < deadline and 'reason="client-gone"' not in metrics:
            time.sleep(0.1)
            metrics = httpx.get(f"{server.url}/metrics").text
    assert metric(metrics, "cds_hook_calls_total", service="sepsis-risk", reason="client-gone") == 1
