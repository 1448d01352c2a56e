"""The production record store: PostgreSQL, shared by every worker on every machine.

Each operation runs in a task of its own and is waited for at most `timeout_s` (pool acquire,
connection check, statements; the server also enforces `statement_timeout`). A late task is left
to finish, not cancelled: psycopg's cancellation waits for the server, which is exactly what a
frozen server never answers. So a down or frozen database costs a hook at most `timeout_s`, once;
after that the store is *degraded* and answers without trying:

- `put_card` writes to the local card spool (`CardSpool`) and returns: the card is not lost.
- `put_feedback`, `get_cards` and the rest raise `StoreUnavailable` (HTTP 503, retry later):
  feedback is only acknowledged once it is in PostgreSQL.

A background task probes the database while degraded and drains the spool into PostgreSQL
(idempotent insert, spool row deleted after commit). Feedback on a card still in the spool moves
that card into PostgreSQL in the feedback's own transaction. Resources are kept as text, not
jsonb: the canonical JSON bytes we wrote (identical repeats compare equal byte for byte, both
stores export the same NDJSON, a later audit hash chain hashes exactly what is stored, and no
`\\u0000` in a comment can make a write fail); cast with `resource::jsonb` to query.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..errors import StoreError, StoreUnavailable
from .anchors import AnchorLog
from .migrations import migrate_postgres
from .records import (
    CARD_COLUMNS,
    GENESIS,
    AuditEvent,
    CardRecord,
    Erasure,
    FeedbackRecord,
    ModelScore,
    StatusChange,
    StoreHealth,
    VersionState,
    WriteResult,
    audit_json,
    card_from_row,
    card_row,
    entry_hash,
    feedback_json,
)
from .spool import CardSpool

__all__ = ["PostgresStore"]

log = logging.getLogger("cds.stores")
# The pool logs every failed reconnection attempt (with host and port); the store logs the
# transition to and from degraded once instead.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]

# pg_advisory_xact_lock key serialising audit appends, so seq order is commit order ("cds" + 2).
AUDIT_LOCK = 0x636473_02
PAGE = 500
DRAIN_BATCH = 200

# Failures that mean "the database is not reachable or not answering", as opposed to a bug.
_OUTAGE = (TimeoutError, OSError, psycopg.OperationalError, psycopg.InterfaceError)

_CARD_COLUMNS = CARD_COLUMNS
_INSERT_CARD = f"INSERT INTO card ({CARD_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
_UPSERT_CARD = (
    _INSERT_CARD + " ON CONFLICT (card_uuid) DO UPDATE SET service_id = excluded.service_id,"
    " user_pseudonym = excluded.user_pseudonym, resource = excluded.resource,"
    " created = excluded.created, suggestions = excluded.suggestions,"
    " identity_hashes = excluded.identity_hashes"
)
# A batch of cards (`put_cards`) may take this much longer than one, per card, before the store
# counts PostgreSQL as unavailable (a 200-card batch: timeout_s + 2 s).
PER_CARD_S = 0.01
_PATIENT_OF = "(resource::jsonb #>> '{subject,identifier,value}')"
_UPSERT_FEEDBACK = """
INSERT INTO feedback AS f (provenance_id, card_uuid, resource, recorded) VALUES (%s, %s, %s, %s)
ON CONFLICT (provenance_id) DO UPDATE SET resource = excluded.resource, recorded = excluded.recorded
WHERE excluded.recorded > f.recorded OR (excluded.recorded = f.recorded AND excluded.resource <> f.resource)
RETURNING (xmax = 0)
"""  # no row back: unchanged; true: created; false: updated (the ordering rule of records.feedback_outcome)


class PostgresStore:
    def __init__(
        self,
        url: str,
        spool: CardSpool,
        *,
        timeout_s: float = 1.0,
        pool_size: int = 8,
        retry_s: float = 0.5,
        idle_check_s: float = 2.0,
        anchors: AnchorLog | None = None,
    ) -> None:
        self.anchors = anchors or AnchorLog(None)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.idle_check_s = idle_check_s
        self.spool = spool
        ms = max(1, int(timeout_s * 1000))

        async def configure(conn: Conn) -> None:
            await conn.execute(f"SET statement_timeout = {ms:d}")
            await conn.execute(f"SET lock_timeout = {ms:d}")
            await conn.execute("SET idle_in_transaction_session_timeout = 60000")

        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            open=False,
            min_size=1,
            max_size=pool_size,
            timeout=timeout_s,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, math.ceil(timeout_s)),
                "application_name": "cds",
            },
            configure=configure,
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=max(2.0, 4 * timeout_s),  # short back-off: reconnect soon after an outage
            name="cds-records",
        )
        self._degraded = False
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._spool_backlog = 0
        self._spooled_total = 0
        self._drained_total = 0

    @classmethod
    async def open(
        cls, url: str, *, spool_path: Path | str, timeout_s: float = 1.0, **options: Any
    ) -> PostgresStore:
        """Open the pool, upgrade the schema and start draining the spool. A database that is down
        now does not stop the server: the store starts degraded and upgrades once it is back."""
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreError("CDS_DATABASE_URL is not a valid PostgreSQL connection string") from exc
        store = cls(url, CardSpool(spool_path), timeout_s=timeout_s, **options)
        await store._pool.open(wait=False)
        try:
            await store._ensure_schema()
        except StoreUnavailable:
            pass  # logged as degraded; the drainer retries
        except BaseException:
            await store.close()
            raise
        store._spool_backlog = await store.spool.count()
        store._drainer = asyncio.create_task(store._drain_forever(), name="cds-spool-drainer")
        return store

    # --- running one operation, bounded ---------------------------------------------------

    def _track(self, future: asyncio.Future[T]) -> asyncio.Future[T]:
        self._tasks.add(future)
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self._tasks.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a late failure was already answered for

    async def _op(self, work: Callable[[Conn], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        async def on_connection() -> T:
            async with self._pool.connection(timeout=self.timeout_s) as conn:
                return await work(conn)

        task = self._track(asyncio.ensure_future(on_connection()))
        done, _ = await asyncio.wait({task}, timeout=timeout_s or self.timeout_s)
        if not done:
            raise self._unavailable(TimeoutError())
        try:
            result = task.result()
        except _OUTAGE as exc:
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            raise StoreError(f"record store failed ({type(exc).__name__})") from exc
        self._recovered()
        return result

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                await self._op(migrate_postgres, timeout_s=max(10.0, 5 * self.timeout_s))
                self._schema_ready = True

    async def _db(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """An operation that needs PostgreSQL: refused at once while degraded."""
        if self._degraded:
            raise self._refusal()
        await self._ensure_schema()
        return await self._op(work)

    def _refusal(self) -> StoreUnavailable:
        return StoreUnavailable("record store unavailable (PostgreSQL unreachable)", retry_after_s=5.0)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if not self._degraded:
            self._degraded = True
            log.warning(
                "record store degraded: PostgreSQL unavailable; cards go to the spool, feedback is refused",
                extra={"event": {"store": "postgres", "state": "degraded", "cause": type(exc).__name__}},
            )
        return StoreUnavailable(f"record store unavailable ({type(exc).__name__})", retry_after_s=5.0)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            log.warning(
                "record store recovered: PostgreSQL reachable again; draining the spool",
                extra={"event": {"store": "postgres", "state": "ok", "spooled": self._spool_backlog}},
            )
            self._wake.set()

    # --- cards -------------------------------------------------------------------------------

    async def put_card(self, record: CardRecord) -> None:
        # Shielded: a hook that runs out of budget still gets its card recorded.
        await asyncio.shield(self._track(asyncio.ensure_future(self._record_card(record))))

    async def _record_card(self, record: CardRecord) -> None:
        if not self._degraded:

            async def insert(conn: Conn) -> tuple[int, str] | None:
                async with conn.transaction():
                    await conn.execute(_UPSERT_CARD, card_row(record))
                    if record.audit is None:
                        return None
                    return await self._append(conn, "card-scored", record.audit)

            try:
                await self._ensure_schema()
                self._anchor(await self._op(insert))
                return
            except StoreUnavailable:
                pass
        await self.spool.put(record)
        self._spooled_total += 1
        self._spool_backlog += 1

    async def put_cards(self, records: Sequence[CardRecord]) -> None:
        """Many cards (a census sweep's) and their audit entries in one transaction; while
        PostgreSQL is unavailable, all of them into the spool in one (none is lost either way)."""
        if records:
            batch = list(records)
            await asyncio.shield(self._track(asyncio.ensure_future(self._record_cards(batch))))

    async def _record_cards(self, records: list[CardRecord]) -> None:
        if not self._degraded:
            rows = [card_row(r) for r in records]
            audits = [r.audit for r in records if r.audit is not None]

            async def insert(conn: Conn) -> tuple[int, str] | None:
                async with conn.transaction():
                    async with conn.cursor() as cursor:
                        await cursor.executemany(_UPSERT_CARD, rows)
                    return await self._append_many(conn, "card-scored", audits)

            try:
                await self._ensure_schema()
                self._anchor(await self._op(insert, timeout_s=self.timeout_s + PER_CARD_S * len(records)))
                return
            except StoreUnavailable:
                pass
        await self.spool.put_many(records)
        self._spooled_total += len(records)
        self._spool_backlog += len(records)

    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
        if not card_uuids:
            return {}
        uuids = list(card_uuids)

        async def read(conn: Conn) -> dict[str, CardRecord]:
            cursor = await conn.execute(
                f"SELECT {_CARD_COLUMNS} FROM card WHERE card_uuid = ANY(%s)", (uuids,)
            )
            return {row[0]: card_from_row(row) for row in await cursor.fetchall()}

        found = await self._db(read)
        missing = [u for u in uuids if u not in found]
        if missing:  # answered during an outage, not drained yet
            found |= await self.spool.get(missing)
        return found

    # --- feedback ----------------------------------------------------------------------------

    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]:
        if not records:
            return []
        texts = [feedback_json(r) for r in records]  # before any write: a bad record writes nothing
        if self._degraded:
            raise self._refusal()
        spooled = await self.spool.get(list(dict.fromkeys(r.card_uuid for r in records)))

        async def write(conn: Conn) -> tuple[list[WriteResult], tuple[int, str] | None]:
            results: list[WriteResult] = []
            head = None
            async with conn.transaction():
                # the cards must be in PostgreSQL before feedback can reference them
                head = await self._insert_spooled(conn, list(spooled.values()))
                async with conn.cursor() as cursor:
                    for rec, text in zip(records, texts, strict=True):
                        await cursor.execute(
                            _UPSERT_FEEDBACK, (rec.provenance_id, rec.card_uuid, text, rec.recorded)
                        )
                        row = await cursor.fetchone()
                        outcome: WriteResult = (
                            "unchanged" if row is None else "created" if row[0] else "updated"
                        )
                        if outcome != "unchanged" and rec.audit is not None:
                            head = await self._append(
                                conn, "feedback-recorded", {**rec.audit, "write": outcome}
                            )
                        results.append(outcome)
            return results, head

        results, head = await self._db(write)
        self._anchor(head)
        return results

    async def _insert_spooled(self, conn: Conn, cards: Sequence[CardRecord]) -> tuple[int, str] | None:
        """Spooled cards into PostgreSQL (inside a transaction), each new one with its audit entry."""
        head = None
        for card in cards:
            cursor = await conn.execute(
                _INSERT_CARD + " ON CONFLICT (card_uuid) DO NOTHING RETURNING card_uuid", card_row(card)
            )
            if await cursor.fetchone() is not None and card.audit is not None:
                head = await self._append(conn, "card-scored", {**card.audit, "spooled": True})
        return head

    def _anchor(self, head: tuple[int, str] | None) -> None:
        if head is not None:
            self.anchors.note(*head)

    # --- export ------------------------------------------------------------------------------

    async def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]:
        """Pages in (time, id) order; RiskAssessments still in the spool come last. The spool is
        read first, and only the spooled cards that PostgreSQL did not yield are added, so a card
        drained during the export appears exactly once."""
        table, order = {
            "RiskAssessment": ("card", "created, card_uuid"),
            "Provenance": ("feedback", "recorded, provenance_id"),
        }[resource_type]
        spooled = {c.card_uuid: c for c in await self.spool.oldest()} if table == "card" else {}
        if table == "card":
            self._spool_backlog = len(spooled)
        seen: set[str] = set()
        last: tuple[float, str] | None = None
        while True:
            after = "" if last is None else f"WHERE ({order}) > (%s, %s)"

            async def page(
                conn: Conn, after: str = after, last: tuple[float, str] | None = last
            ) -> list[Any]:
                cursor = await conn.execute(
                    f"SELECT {order}, resource FROM {table} {after} ORDER BY {order} LIMIT {PAGE}",
                    last or (),
                )
                return await cursor.fetchall()

            rows = await self._db(page)
            for _, key, text in rows:
                if key in spooled:
                    seen.add(key)
                yield json.loads(text)
            if len(rows) < PAGE:
                break
            last = (rows[-1][0], rows[-1][1])
        for uuid, card in spooled.items():
            if uuid not in seen:
                yield card.risk_assessment

    # --- audit events and registry state ------------------------------------------------------

    @staticmethod
    async def _append(conn: Conn, kind: str, details: Mapping[str, Any]) -> tuple[int, str]:
        """Inside a transaction: the lock is held until commit, so no later seq commits first and
        the head read here is still the head at commit (one chain, every worker, every machine)."""
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
        cursor = await conn.execute("SELECT hash FROM audit_event ORDER BY seq DESC LIMIT 1")
        last = await cursor.fetchone()
        prev = last[0] if last and last[0] else GENESIS
        at, text = time.time(), audit_json(details)
        digest = entry_hash(prev, at, kind, text)
        cursor = await conn.execute(
            "INSERT INTO audit_event (at, kind, details, prev_hash, hash) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING seq",
            (at, kind, text, prev, digest),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0]), digest

    @staticmethod
    async def _append_many(
        conn: Conn, kind: str, entries: Sequence[Mapping[str, Any]]
    ) -> tuple[int, str] | None:
        """Several entries of one kind, chained in order, under one lock and one head read (inside
        a transaction, as `_append`); the new head, or None when there are none."""
        if not entries:
            return None
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
        cursor = await conn.execute("SELECT hash FROM audit_event ORDER BY seq DESC LIMIT 1")
        last = await cursor.fetchone()
        prev = last[0] if last and last[0] else GENESIS
        rows = []
        for details in entries:
            at, text = time.time(), audit_json(details)
            digest = entry_hash(prev, at, kind, text)
            rows.append((at, kind, text, prev, digest))
            prev = digest
        async with conn.cursor() as many:
            await many.executemany(
                "INSERT INTO audit_event (at, kind, details, prev_hash, hash) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
        # Under the lock every append is ours until commit: the newest entry is the last one of these.
        cursor = await conn.execute("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")
        row = await cursor.fetchone()
        assert row is not None and row[1] == prev
        return int(row[0]), prev

    async def append_audit(self, kind: str, details: Mapping[str, Any]) -> int:
        async def write(conn: Conn) -> tuple[int, str]:
            async with conn.transaction():
                return await self._append(conn, kind, details)

        head = await self._db(write)
        self._anchor(head)
        return head[0]

    async def _erase(
        self,
        where: str,
        args: Sequence[Any],
        spool_where: str,
        spool_args: Sequence[Any],
        kind: str,
        tombstone: Mapping[str, Any],
    ) -> Erasure:
        """Delete the cards `where` selects (and `spool_where` in this machine's spool) with their
        feedback, and append the tombstone (counts), in one transaction."""
        spooled = await self.spool.forget(spool_where, spool_args)

        async def write(conn: Conn) -> tuple[Erasure, tuple[int, str]]:
            async with conn.transaction():
                cursor = await conn.execute(f"SELECT card_uuid FROM card WHERE {where}", args)
                uuids = [row[0] for row in await cursor.fetchall()]
                cursor = await conn.execute("DELETE FROM feedback WHERE card_uuid = ANY(%s)", (uuids,))
                feedback = cursor.rowcount
                await conn.execute("DELETE FROM card WHERE card_uuid = ANY(%s)", (uuids,))
                await conn.execute("DELETE FROM model_score WHERE card_uuid = ANY(%s)", (uuids,))
                cards = len(uuids) + spooled
                head = await self._append(conn, kind, {**tombstone, "cards": cards, "feedback": feedback})
                return Erasure(cards, feedback, head[0]), head

        erased, head = await self._db(write)
        self._anchor(head)
        return erased

    async def forget(self, patient_pseudonyms: Sequence[str], tombstone: Mapping[str, Any]) -> Erasure:
        """Every card of these patients (PostgreSQL and this machine's spool) and its feedback."""
        marks = ",".join("?" * len(patient_pseudonyms)) or "NULL"
        spool_where = f"json_extract(resource, '$.subject.identifier.value') IN ({marks})"
        return await self._erase(
            f"{_PATIENT_OF} = ANY(%s)",
            [list(patient_pseudonyms)],
            spool_where,
            list(patient_pseudonyms),
            "patient-forgotten",
            tombstone,
        )

    async def purge(self, before: float, tombstone: Mapping[str, Any]) -> Erasure:
        return await self._erase(
            "created < %s",
            [before],
            "created < ?",
            [before],
            "records-purged",
            {**tombstone, "before": before},
        )

    async def iter_audit(self, after: int = 0) -> AsyncIterator[AuditEvent]:
        while True:

            async def page(conn: Conn, after: int = after) -> list[Any]:
                cursor = await conn.execute(
                    "SELECT seq, at, kind, details, prev_hash, hash FROM audit_event WHERE seq > %s"
                    f" ORDER BY seq LIMIT {PAGE}",
                    (after,),
                )
                return await cursor.fetchall()

            rows = await self._db(page)
            for seq, at, kind, details, prev_hash, digest in rows:
                yield AuditEvent(int(seq), float(at), kind, json.loads(details), prev_hash, digest)
            if len(rows) < PAGE:
                return
            after = int(rows[-1][0])

    async def active_versions(self) -> dict[str, str]:
        async def read(conn: Conn) -> dict[str, str]:
            cursor = await conn.execute("SELECT model, version FROM registry_state")
            return {model: version for model, version in await cursor.fetchall()}

        return await self._db(read)

    async def set_active_version(self, model: str, version: str) -> str | None:
        """Set the served version and record a `model-activated` audit event, in one transaction."""

        async def write(conn: Conn) -> tuple[str | None, tuple[int, str]]:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,)
                )  # activations one at a time
                previous = await self._make_active(conn, model, version)
                head = await self._append(
                    conn, "model-activated", {"model": model, "version": version, "previous": previous}
                )
                return previous, head

        previous, head = await self._db(write)
        self._anchor(head)
        return previous

    @staticmethod
    async def _previous_of(conn: Conn, model: str) -> str | None:
        cursor = await conn.execute("SELECT previous FROM registry_state WHERE model = %s", (model,))
        row = await cursor.fetchone()
        return row[0] if row else None

    async def _make_active(self, conn: Conn, model: str, version: str) -> str | None:
        """Inside a transaction: `version` becomes the champion, the former one is retired."""
        cursor = await conn.execute("SELECT version FROM registry_state WHERE model = %s", (model,))
        row = await cursor.fetchone()
        previous = row[0] if row else None
        now = time.time()
        before = await self._previous_of(conn, model) if previous == version else previous
        await conn.execute(
            "INSERT INTO registry_state (model, version, updated_at, previous) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (model) DO UPDATE SET version = excluded.version,"
            " updated_at = excluded.updated_at, previous = excluded.previous",
            (model, version, now, before),
        )
        if previous is not None and previous != version:
            await self._set_status(conn, model, previous, "retired", 0.0, now)
        await self._set_status(conn, model, version, "active", 0.0, now)
        return previous

    @staticmethod
    async def _set_status(
        conn: Conn, model: str, version: str, status: str, share: float, now: float
    ) -> None:
        await conn.execute(
            "INSERT INTO model_version (model, version, status, share, updated_at)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (model, version) DO UPDATE SET status = excluded.status,"
            " share = excluded.share, updated_at = excluded.updated_at",
            (model, version, status, share, now),
        )

    async def version_states(self) -> list[VersionState]:
        async def read(conn: Conn) -> list[VersionState]:
            cursor = await conn.execute(
                "SELECT model, version, status, share, updated_at FROM model_version ORDER BY model, version"
            )
            return [
                VersionState(m, v, st, float(sh), float(at)) for m, v, st, sh, at in await cursor.fetchall()
            ]

        return await self._db(read)

    async def set_version_status(
        self,
        model: str,
        version: str,
        status: str,
        *,
        share: float = 0.0,
        audit: Mapping[str, Any],
        expect: str | None = None,
    ) -> StatusChange | None:
        """Change one version's status and append a `model-status` audit entry, in one transaction;
        None (nothing written) when `expect` is given and the version's status is not that."""

        async def write(conn: Conn) -> tuple[StatusChange, tuple[int, str]] | None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
                cursor = await conn.execute(
                    "SELECT status FROM model_version WHERE model = %s AND version = %s", (model, version)
                )
                row = await cursor.fetchone()
                current = row[0] if row else "candidate"
                if expect is not None and current != expect:
                    return None
                now = time.time()
                displaced: tuple[str, ...] = ()
                if status == "active":
                    previous = await self._make_active(conn, model, version)
                    displaced = (previous,) if previous and previous != version else ()
                else:
                    if status in ("shadow", "canary"):
                        cursor = await conn.execute(
                            "SELECT version FROM model_version"
                            " WHERE model = %s AND status = %s AND version <> %s",
                            (model, status, version),
                        )
                        displaced = tuple(r[0] for r in await cursor.fetchall())
                        for other in displaced:
                            await self._set_status(conn, model, other, "candidate", 0.0, now)
                    await self._set_status(conn, model, version, status, share, now)
                details = {
                    **audit,
                    "model": model,
                    "version": version,
                    "status": status,
                    "previous_status": current,
                    "displaced": list(displaced),
                    **({"share": share} if status == "canary" else {}),
                }
                head = await self._append(conn, "model-status", details)
                return StatusChange(current, displaced, head[0]), head

        done = await self._db(write)
        if done is None:
            return None
        self._anchor(done[1])
        return done[0]

    async def previous_active(self, model: str) -> str | None:
        return await self._db(lambda conn: self._previous_of(conn, model))

    async def put_model_scores(self, scores: Sequence[ModelScore]) -> None:
        rows = [s.row() for s in scores]

        async def write(conn: Conn) -> None:
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO model_score (card_uuid, version, model, service_id, role, probability, band,"
                    " patient, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (card_uuid, version) DO NOTHING",
                    rows,
                )

        await self._db(write)

    async def model_scores(self, model: str, since: float = 0.0) -> list[ModelScore]:
        async def read(conn: Conn) -> list[ModelScore]:
            cursor = await conn.execute(
                "SELECT card_uuid, model, version, service_id, role, probability, band, patient, created"
                " FROM model_score WHERE model = %s AND created >= %s ORDER BY created, card_uuid, version",
                (model, since),
            )
            return [
                ModelScore(u, m, v, sid, role, float(p), b, pt, float(c))
                for u, m, v, sid, role, p, b, pt, c in await cursor.fetchall()
            ]

        return await self._db(read)

    # --- the spool drainer -----------------------------------------------------------------

    async def drain_spool(self) -> int:
        """Move spooled cards into PostgreSQL until the spool is empty; return how many moved."""
        moved = 0
        while batch := await self.spool.oldest(DRAIN_BATCH):

            async def insert(conn: Conn, batch: list[CardRecord] = batch) -> tuple[int, str] | None:
                async with conn.transaction():
                    return await self._insert_spooled(conn, batch)

            self._anchor(await self._db(insert))
            await self.spool.remove([c.card_uuid for c in batch])  # only after the commit
            moved += len(batch)
            self._drained_total += len(batch)
        self._spool_backlog = 0
        return moved

    async def _probe(self) -> None:
        async def ping(conn: Conn) -> None:
            await conn.execute("SELECT 1")

        await self._ensure_schema()
        await self._op(ping)

    async def _drain_forever(self) -> None:
        """Probe while degraded (every `retry_s`), else look for spooled cards, ours or another
        worker's (every `idle_check_s`), and drain them. Woken early on recovery and on close."""
        while not self._closing.is_set():
            self._wake.clear()
            try:
                if self._degraded or not self._schema_ready:
                    await self._probe()
                self._spool_backlog = await self.spool.count()
                if self._spool_backlog:
                    await self.drain_spool()
            except StoreUnavailable:
                pass  # degraded, logged once; the next round probes again
            except Exception as exc:  # keep draining whatever happens; no details, they may name records
                log.error("spool drainer failed", extra={"event": {"error": type(exc).__name__}})
            try:
                await asyncio.wait_for(
                    self._wake.wait(), self.retry_s if self._degraded else self.idle_check_s
                )
            except TimeoutError:
                pass

    # --- the rest ------------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True while cards can be recorded: in PostgreSQL, or in the spool while degraded (every
        worker is in the same state then, and taking them all out of service would drop the hooks)."""
        if not self._degraded:
            try:
                await self._probe()
            except StoreUnavailable:
                pass
        await self.spool.count()
        return True

    def health(self) -> StoreHealth:
        return StoreHealth(
            "postgres",
            degraded=self._degraded,
            spooled=self._spool_backlog,
            spooled_total=self._spooled_total,
            drained_total=self._drained_total,
        )

    async def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._drainer is not None:
            await asyncio.wait({self._drainer}, timeout=2 * self.timeout_s + 1)
            self._drainer.cancel()  # still probing a frozen server
        pending = [t for t in self._tasks if not t.done()]
        if pending:  # cards being written: let them reach PostgreSQL or the spool
            await asyncio.wait(pending, timeout=2 * self.timeout_s + 1)
        for task in list(self._tasks):
            task.cancel()  # stuck on a frozen server; psycopg cancels the query in the background
        try:
            await asyncio.wait_for(self._pool.close(timeout=self.timeout_s), 2 * self.timeout_s + 1)
        except TimeoutError:
            pass
        self.anchors.write()
        await self.spool.close()
