"""`cds serve --workers 2` on PostgreSQL and Redis: every worker process picks up a shadow
promoted with `cds models promote`, and the workers count a canary's alerts into the same Redis
counters, so its guardrail rolls it back once for all of them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from cds.stores import PostgresStore
from demo_ehr import free_port, wait_until_healthy
from testkit.lifecycle import call_sepsis, copy_version, golden_stays, tmp_registry, wait_for


def test_two_worker_processes_share_the_lineup_and_the_guardrail_counters(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    registry = tmp_registry(tmp_path / "models")
    copy_version(registry, "sepsis", "2", "3")
    copy_version(
        registry, "sepsis", "2", "6", threshold=1e-6, risk_bands={"low": 0.0, "moderate": 5e-7, "high": 1e-6}
    )
    port = free_port()
    env = {
        **os.environ,
        "CDS_MODEL_DIR": str(registry),
        "CDS_VAR_DIR": str(tmp_path / "var"),
        "CDS_DATABASE_URL": postgres_url,
        "CDS_REDIS_URL": redis_url,
        "CDS_REDIS_PREFIX": redis_prefix,
        "CDS_PSEUDONYM_KEY": "workers-test-key-0123456789",
        "CDS_AUTH_DISABLED_FOR_LOCAL_DEMO": "true",
        "CDS_MODEL_POLL_S": "0.3",
        "CDS_CANARY_MIN_CALLS": "8",
        "CDS_CANARY_MAX_LATENCY_RATIO": "1000",
        "CDS_HOOK_TIMEOUT_S": "5",
        "CDS_PORT": str(port),
        "CDS_LOG_LEVEL": "WARNING",
    }

    def cds(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cds.cli", *args], capture_output=True, text=True, timeout=300, env=env
        )

    async def in_store(fn: Any) -> Any:
        store = await PostgresStore.open(postgres_url, spool_path=tmp_path / "test-spool.sqlite3")
        try:
            return await fn(store)
        finally:
            await store.close()

    server = subprocess.Popen(
        [sys.executable, "-m", "cds.cli", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, timeout_s=90)
        done = cds(
            "models", "promote", "sepsis", "3", "--to", "shadow", "--reason", "workers", "--actor", "ci"
        )
        assert done.returncode == 0, done.stderr
        stays = iter(golden_stays("normal", 400, first_patient=300_000))

        def one_call() -> str:
            with httpx.Client(base_url=url, timeout=20, headers={"Connection": "close"}) as client:
                return str(call_sepsis(client, next(stays))["cards"][0]["uuid"])

        def shadowed(uuids: list[str]) -> bool:
            rows = asyncio.run(in_store(lambda s: s.model_scores("sepsis")))
            shadows = {r.card_uuid for r in rows if r.role == "shadow" and r.version == "3"}
            return set(uuids) <= shadows

        # Both workers have the shadow once a run of calls on fresh connections all got one.
        def every_worker_shadows() -> bool:
            uuids = [one_call() for _ in range(12)]
            try:
                wait_for(lambda: shadowed(uuids), timeout_s=5, what="shadow rows")
            except AssertionError:
                return False
            return True

        wait_for(every_worker_shadows, timeout_s=60, what="every worker to score the shadow")

        asyncio.run(
            in_store(
                lambda s: s.set_version_status("sepsis", "6", "canary", share=0.5, audit={"actor": "ci"})
            )
        )

        def rolled_back() -> bool:
            for _ in range(4):
                one_call()
            states = asyncio.run(in_store(lambda s: s.version_states()))
            return any(s.version == "6" and s.status == "retired" for s in states)

        wait_for(rolled_back, timeout_s=90, what="the guardrail rollback")

        async def audit(store: PostgresStore) -> list[dict[str, Any]]:
            return [e.details async for e in store.iter_audit() if e.kind == "model-status"]

        entries = asyncio.run(in_store(audit))
        rollbacks = [e for e in entries if e["version"] == "6" and e["status"] == "retired"]
        assert len(rollbacks) == 1 and rollbacks[0]["actor"] == "guardrail"
        assert rollbacks[0]["canary"]["calls"] >= 8  # judged on the counters in Redis
    finally:
        server.terminate()
        server.wait(timeout=30)
