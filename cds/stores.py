"""Durable records: each scored card (a RiskAssessment) and each feedback (a Provenance).

Two implementations of one small interface: `SQLiteStore`, the embedded default (a file, safe
for several processes on one machine), and `RedisStore` when `CDS_REDIS_URL` is set. Feedback
for a card is kept once: an identical repeat changes nothing, a later decision (newer
outcomeTimestamp) replaces an earlier one, and a batch is written all or nothing.
Only de-identified resources are stored: pseudonymous subjects and agents.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from .errors import StoreError

__all__ = ["CardRecord", "FeedbackRecord", "RecordStore", "RedisStore", "SQLiteStore", "open_store"]

WriteResult = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class CardRecord:
    card_uuid: str
    service_id: str
    user_pseudonym: str | None
    risk_assessment: dict[str, Any]
    created: float  # epoch seconds
    suggestion_uuids: tuple[str, ...] = ()  # what the card offered: feedback may accept only these


@dataclass(frozen=True)
class FeedbackRecord:
    card_uuid: str
    provenance: dict[str, Any]
    recorded: float  # epoch seconds of outcomeTimestamp

    @property
    def provenance_id(self) -> str:
        return str(self.provenance["id"])


class RecordStore(Protocol):
    async def put_card(self, record: CardRecord) -> None: ...
    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]: ...
    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]: ...
    def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


# --- SQLite (embedded default) -------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS card (
    card_uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    user_pseudonym TEXT,
    resource TEXT NOT NULL,
    created REAL NOT NULL,
    suggestions TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS feedback (
    provenance_id TEXT PRIMARY KEY,
    card_uuid TEXT NOT NULL REFERENCES card(card_uuid),
    resource TEXT NOT NULL,
    recorded REAL NOT NULL
);
"""


class SQLiteStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(card)")}
        if "suggestions" not in columns:  # a file written before cards kept their suggestions
            self._db.execute("ALTER TABLE card ADD COLUMN suggestions TEXT NOT NULL DEFAULT '[]'")

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                try:
                    return fn(*args)
                except sqlite3.Error as exc:
                    raise StoreError(f"record store failed ({type(exc).__name__})") from exc

        return await asyncio.to_thread(locked)

    async def put_card(self, record: CardRecord) -> None:
        def write() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO card (card_uuid, service_id, user_pseudonym, resource, created, suggestions)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.card_uuid,
                    record.service_id,
                    record.user_pseudonym,
                    json.dumps(record.risk_assessment),
                    record.created,
                    json.dumps(list(record.suggestion_uuids)),
                ),
            )

        await self._run(write)

    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
        def read() -> dict[str, CardRecord]:
            if not card_uuids:
                return {}
            marks = ",".join("?" * len(card_uuids))
            rows = self._db.execute(
                "SELECT card_uuid, service_id, user_pseudonym, resource, created, suggestions"
                f" FROM card WHERE card_uuid IN ({marks})",
                list(card_uuids),
            ).fetchall()
            return {r[0]: CardRecord(r[0], r[1], r[2], json.loads(r[3]), r[4], tuple(json.loads(r[5]))) for r in rows}

        result: dict[str, CardRecord] = await self._run(read)
        return result

    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]:
        def write() -> list[WriteResult]:
            results: list[WriteResult] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for rec in records:
                    row = self._db.execute(
                        "SELECT recorded, resource FROM feedback WHERE provenance_id = ?", (rec.provenance_id,)
                    ).fetchone()
                    text = json.dumps(rec.provenance, sort_keys=True)
                    if row is None:
                        self._db.execute(
                            "INSERT INTO feedback VALUES (?, ?, ?, ?)", (rec.provenance_id, rec.card_uuid, text, rec.recorded)
                        )
                        results.append("created")
                    elif rec.recorded > row[0]:
                        self._db.execute(
                            "UPDATE feedback SET resource = ?, recorded = ? WHERE provenance_id = ?",
                            (text, rec.recorded, rec.provenance_id),
                        )
                        results.append("updated")
                    else:
                        results.append("unchanged")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return results

        result: list[WriteResult] = await self._run(write)
        return result

    async def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]:
        query = {
            "RiskAssessment": "SELECT resource FROM card ORDER BY created, card_uuid",
            "Provenance": "SELECT resource FROM feedback ORDER BY recorded, provenance_id",
        }[resource_type]
        rows = await self._run(lambda: self._db.execute(query).fetchall())
        for (text,) in rows:
            yield json.loads(text)

    async def ping(self) -> bool:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())
        return True

    async def close(self) -> None:
        with self._lock:
            self._db.close()


# --- Redis (shared between workers) --------------------------------------------------------

# KEYS: provenance hash keys; ARGV: index key, then (resource json, recorded, card uuid) per key.
_PUT_FEEDBACK = """
local index = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local resource = ARGV[3 * i - 1]
  local recorded = tonumber(ARGV[3 * i])
  local card = ARGV[3 * i + 1]
  local current = redis.call('HGET', key, 'recorded')
  if not current then
    redis.call('HSET', key, 'resource', resource, 'recorded', ARGV[3 * i], 'card', card)
    redis.call('ZADD', index, recorded, key)
    out[i] = 'created'
  elseif recorded > tonumber(current) then
    redis.call('HSET', key, 'resource', resource, 'recorded', ARGV[3 * i])
    redis.call('ZADD', index, recorded, key)
    out[i] = 'updated'
  else
    out[i] = 'unchanged'
  end
end
return out
"""


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "cds:", timeout_s: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True)
        self._put_feedback = self._redis.register_script(_PUT_FEEDBACK)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, coro: Any) -> Any:
        import redis.exceptions

        try:
            return await coro
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"record store failed ({type(exc).__name__})") from exc

    async def put_card(self, record: CardRecord) -> None:
        payload = {
            "service_id": record.service_id,
            "user_pseudonym": record.user_pseudonym or "",
            "resource": json.dumps(record.risk_assessment),
            "created": repr(record.created),
            "suggestions": json.dumps(list(record.suggestion_uuids)),
        }
        key = self._key("card", record.card_uuid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=payload)
            pipe.zadd(self._key("index", "RiskAssessment"), {key: record.created})
            await self._call(pipe.execute())

    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for uuid in card_uuids:
                pipe.hgetall(self._key("card", uuid))
            rows = await self._call(pipe.execute())
        found = {}
        for uuid, row in zip(card_uuids, rows, strict=True):
            if row:
                found[uuid] = CardRecord(
                    uuid,
                    row["service_id"],
                    row["user_pseudonym"] or None,
                    json.loads(row["resource"]),
                    float(row["created"]),
                    tuple(json.loads(row.get("suggestions", "[]"))),
                )
        return found

    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]:
        if not records:
            return []
        keys = [self._key("feedback", r.provenance_id) for r in records]
        args: list[str] = [self._key("index", "Provenance")]
        for r in records:
            args += [json.dumps(r.provenance, sort_keys=True), repr(r.recorded), r.card_uuid]
        result: list[WriteResult] = await self._call(self._put_feedback(keys=keys, args=args))
        return result

    async def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]:
        index = self._key("index", resource_type)
        start = 0
        while True:
            keys = await self._call(self._redis.zrange(index, start, start + 499))
            if not keys:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "resource")
                texts = await self._call(pipe.execute())
            for text in texts:
                if text:
                    yield json.loads(text)
            start += len(keys)

    async def ping(self) -> bool:
        return bool(await self._call(self._redis.ping()))

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(*, redis_url: str | None, sqlite_path: Path, redis_prefix: str = "cds:") -> RecordStore:
    if redis_url:
        return RedisStore(redis_url, prefix=redis_prefix)
    return SQLiteStore(sqlite_path)
