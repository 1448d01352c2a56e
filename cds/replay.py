"""The `jti` replay store: each EHR token may be used once within its lifetime.

Implementations of one small interface: `SQLiteReplayStore`, the embedded default (a file, so
several workers on one machine share it), and `RedisReplayStore` (`SET NX` with an expiry) when
`CDS_REDIS_URL` is set, wrapped in `FallbackReplayStore`: when Redis is down or frozen each worker
keeps its own window (`MemoryReplayStore`) instead of refusing every caller, and hands those
entries to Redis when it is back. Only a SHA-256 of issuer and jti is kept, never the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from .degraded import Breaker, redis_client
from .errors import StoreError

__all__ = [
    "FallbackReplayStore",
    "MemoryReplayStore",
    "RedisReplayStore",
    "ReplayStore",
    "SQLiteReplayStore",
    "open_replay_store",
    "replay_key",
]


def replay_key(issuer: str, jti: str) -> str:
    return hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()


class ReplayStore(Protocol):
    async def first_use(self, key: str, expires_at: float) -> bool:
        """True the first time `key` is seen before `expires_at` (epoch seconds); False on a replay."""
        ...

    async def close(self) -> None: ...


class SQLiteReplayStore:
    def __init__(self, path: Path | str, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=1.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS jti (key TEXT PRIMARY KEY, expires REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS jti_expires ON jti (expires)")
        self._writes = 0

    def _first_use(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # An expired entry no longer blocks (its token is dead anyway); sweep now and then.
                    self._db.execute("DELETE FROM jti WHERE key = ? AND expires <= ?", (key, now))
                    cursor = self._db.execute("INSERT OR IGNORE INTO jti VALUES (?, ?)", (key, expires_at))
                    self._writes += 1
                    if self._writes % 256 == 0:
                        self._db.execute("DELETE FROM jti WHERE expires <= ?", (now,))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"replay store failed ({type(exc).__name__})") from exc
            return cursor.rowcount == 1

    async def first_use(self, key: str, expires_at: float) -> bool:
        return await asyncio.to_thread(self._first_use, key, expires_at)

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryReplayStore:
    """One process's replay window (the fallback while Redis is unavailable)."""

    def __init__(self, *, clock: Any = time.time) -> None:
        self._clock = clock
        self.entries: dict[str, float] = {}

    async def first_use(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        if len(self.entries) % 1024 == 0:
            self.entries = {k: e for k, e in self.entries.items() if e > now}
        if self.entries.get(key, 0.0) > now:
            return False
        self.entries[key] = expires_at
        return True

    async def close(self) -> None:
        return None


class RedisReplayStore:
    def __init__(
        self, url: str, *, prefix: str = "cds:", timeout_s: float = 0.25, clock: Any = time.time
    ) -> None:
        self.prefix = prefix + "jti:"
        self._clock = clock
        self._redis = redis_client(url, timeout_s=timeout_s)

    async def first_use(self, key: str, expires_at: float) -> bool:
        import redis.exceptions

        ttl_ms = max(1, int(1000 * (expires_at - self._clock())))
        try:
            return bool(await self._redis.set(self.prefix + key, b"1", nx=True, px=ttl_ms))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"replay store failed ({type(exc).__name__})") from exc

    async def close(self) -> None:
        await self._redis.aclose()


class FallbackReplayStore:
    """Redis while it answers; this worker's own window while it does not (see cds/degraded.py)."""

    def __init__(self, primary: ReplayStore, breaker: Breaker, *, clock: Any = time.time) -> None:
        self.primary = primary
        self.breaker = breaker
        self.local = MemoryReplayStore(clock=clock)
        self._clock = clock
        self._handing_over: asyncio.Future[None] | None = None

    async def first_use(self, key: str, expires_at: float) -> bool:
        if self.breaker.available():
            try:
                first = await self.primary.first_use(key, expires_at)
            except StoreError as exc:
                self.breaker.failed(str(exc))
            else:
                if self.breaker.succeeded():
                    self._handing_over = asyncio.ensure_future(self._hand_over())
                return first and self.local.entries.get(key, 0.0) <= self._clock()
        return await self.local.first_use(key, expires_at)

    async def _hand_over(self) -> None:
        """Entries taken during the outage go to Redis, so every worker refuses their replays."""
        now = self._clock()
        for key, expires in list(self.local.entries.items()):
            if expires > now:
                try:
                    await self.primary.first_use(key, expires)
                except StoreError:
                    return  # down again: keep them here
            del self.local.entries[key]

    async def close(self) -> None:
        if self._handing_over is not None:
            self._handing_over.cancel()
        await self.primary.close()


def open_replay_store(
    *,
    redis_url: str | None,
    sqlite_path: Path,
    redis_prefix: str = "cds:",
    redis_timeout_s: float = 0.25,
    breaker: Breaker | None = None,
) -> ReplayStore:
    if redis_url:
        primary = RedisReplayStore(redis_url, prefix=redis_prefix, timeout_s=redis_timeout_s)
        return FallbackReplayStore(primary, breaker or Breaker("replay-store"))
    return SQLiteReplayStore(sqlite_path)
