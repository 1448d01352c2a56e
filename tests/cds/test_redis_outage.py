"""Redis down or frozen (a private redis-server on its own port; the shared one is never touched):
hooks still answer with cards within their budget, a replayed token is still refused (per worker),
feedback is still recorded, `/metrics` shows the degraded mode, and all of it recovers by itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cds import Settings, TrustedIssuer
from demo_ehr import EhrIdentity, free_port, patient_view_request
from testkit.helpers import feedback, serve_cds, synthetic_stay
from testkit.metrics import by_label
from tests.conftest import IN_CI

SEPSIS = "/cds-services/sepsis-risk"


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if (
                subprocess.run(
                    ["redis-cli", "-p", str(self.port), "ping"], capture_output=True
                ).stdout.strip()
                == b"PONG"
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        if redis.process is not None and redis.process.poll() is None:
            redis.signal(signal.SIGCONT)
            redis.kill()


def _degraded(client: httpx.Client) -> dict[str, int]:
    return by_label(client.get("/metrics").text, "cds_degraded", "component")


def test_hooks_and_feedback_ride_out_a_redis_outage(
    tmp_path: Path, ehr_identity: EhrIdentity, private_redis: PrivateRedis
) -> None:
    issuer = TrustedIssuer(iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url)
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_issuers=(issuer,),
        redis_url=private_redis.url,
        redis_prefix="outage-test:",
        redis_timeout_s=0.2,
        degraded_retry_s=0.3,
    )
    body = patient_view_request(synthetic_stay(hours=8))
    with serve_cds(settings) as server, httpx.Client(base_url=server.url, timeout=10) as client:

        def call(token: str | None = None) -> httpx.Response:
            token = token or ehr_identity.token(server.url + SEPSIS)
            return client.post(SEPSIS, json=body, headers={"Authorization": f"Bearer {token}"})

        def give_feedback(card: str) -> httpx.Response:
            url = f"{server.url}{SEPSIS}/feedback"
            headers = {"Authorization": f"Bearer {ehr_identity.token(url)}"}
            return client.post(f"{SEPSIS}/feedback", json={"feedback": [feedback(card)]}, headers=headers)

        assert call().json()["cards"]
        assert _degraded(client) == {"replay-store": 0, "jwks-cache": 0, "record-store": 0}

        private_redis.kill()
        during = ehr_identity.token(server.url + SEPSIS)
        started = time.monotonic()
        answered = call(during)
        assert answered.status_code == 200 and answered.json()["cards"]
        assert time.monotonic() - started < settings.hook_timeout_s
        assert call(during).status_code == 401  # replayed within this worker: still refused
        assert give_feedback(answered.json()["cards"][0]["uuid"]).status_code == 200  # never an auth failure
        assert _degraded(client)["replay-store"] == 1

        private_redis.start()  # back on the same port
        time.sleep(settings.degraded_retry_s + 0.1)
        assert call().json()["cards"]
        assert _degraded(client)["replay-store"] == 0
        time.sleep(0.2)  # the entries of the outage are handed to Redis in the background
        assert call(during).status_code == 401

        private_redis.signal(signal.SIGSTOP)  # frozen: connections hang instead of failing
        try:
            for _ in range(3):
                started = time.monotonic()
                frozen = call()
                assert frozen.status_code == 200 and frozen.json()["cards"]
                assert time.monotonic() - started < settings.hook_timeout_s
        finally:
            private_redis.signal(signal.SIGCONT)
        time.sleep(settings.degraded_retry_s + 0.1)
        assert call().json()["cards"]
        assert _degraded(client)["replay-store"] == 0
