"""The jti replay store and the JWKS cache, against the embedded backends and the real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cds import (
    JwksCache,
    MemoryJwksBackend,
    RedisJwksBackend,
    RedisReplayStore,
    ReplayStore,
    SQLiteReplayStore,
    replay_key,
)
from demo_ehr import EhrIdentity


@pytest.fixture(params=["sqlite", "redis"])
def make_replay(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ReplayStore]:
    if request.param == "sqlite":
        return lambda: SQLiteReplayStore(tmp_path / "cds.sqlite3")
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return lambda: RedisReplayStore(url, prefix=prefix)


def test_a_jti_is_accepted_once_per_issuer_until_it_expires(make_replay: Callable[[], ReplayStore]) -> None:
    async def scenario() -> list[bool]:
        a, b = make_replay(), make_replay()  # two workers sharing one store
        try:
            key = replay_key("https://ehr.example.org", "jti-1")
            other_issuer = replay_key("https://other.example.org", "jti-1")
            soon = time.time() + 0.3
            results = [
                await a.first_use(key, soon),
                await b.first_use(key, soon),
                await a.first_use(other_issuer, soon),
            ]
            # Concurrent first uses of a fresh jti: exactly one wins.
            fresh = replay_key("https://ehr.example.org", "jti-2")
            racing = await asyncio.gather(*(s.first_use(fresh, soon) for s in (a, b, a, b)))
            results.append(sum(racing) == 1)
            await asyncio.sleep(0.45)
            results.append(await b.first_use(key, time.time() + 60))  # expired entries do not block
            return results
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == [True, False, True, True, True]


def test_the_replay_key_never_holds_the_jti_in_clear() -> None:
    assert "jti-1" not in replay_key("https://ehr.example.org", "jti-1")


@pytest.fixture(params=["memory", "redis"])
def make_backend(request: pytest.FixtureRequest) -> Callable[[], object]:
    if request.param == "memory":
        shared = MemoryJwksBackend()
        return lambda: shared
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return lambda: RedisJwksBackend(url, prefix=prefix)


def test_jwks_is_cached_shared_and_refetched_at_most_once_per_interval(
    ehr_identity: EhrIdentity, make_backend
) -> None:
    url = ehr_identity.jwks_url
    kid = ehr_identity.keys["ES384"].kid

    async def scenario() -> list[object]:
        async with httpx.AsyncClient() as http:
            worker_a = JwksCache(http, {url}, backend=make_backend(), min_refresh_s=60)
            worker_b = JwksCache(http, {url}, backend=make_backend(), min_refresh_s=60)
            out: list[object] = []
            out.append((await worker_a.key(url, kid)).kid)
            out.append((await worker_b.key(url, kid)).kid)  # from the shared cache
            out.append(ehr_identity.jwks_requests)
            ehr_identity.rotate()
            new_kid = ehr_identity.keys["ES384"].kid
            out.append((await worker_a.key(url, new_kid)).kid)  # unknown kid: one refetch
            out.append((await worker_b.key(url, new_kid)).kid)  # sees worker A's refetch, fetches nothing
            for _ in range(3):
                out.append(await worker_b.key(url, "forged"))
            out.append(ehr_identity.jwks_requests)
            with pytest.raises(Exception, match="allow-list"):
                await worker_a.key("http://127.0.0.1:9/other.json", kid)
            await worker_a.close()
            await worker_b.close()
            return out

    result = asyncio.run(scenario())
    expected_fetches = 2
    assert result[0] == result[1] == kid
    assert result[2] == 1
    assert result[3] == result[4] != kid
    assert result[5:8] == [None, None, None]
    assert result[8] == expected_fetches
