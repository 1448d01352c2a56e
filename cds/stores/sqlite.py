"""The embedded record store: one SQLite file, safe for several processes on one machine.

Durable for acknowledged writes: WAL with `synchronous=FULL` syncs the log at every commit, so a
card or feedback the server has answered for survives kill -9 and power loss (NORMAL would only
survive the former). Calls run in a thread so the event loop never waits on the disk.

Cards are group-committed: the cards of hook calls that arrive while a commit is under way wait
in a bounded queue and go in the next transaction together (one sync for all of them, at most
`CARD_BATCH` each); `put_card` returns only once its card's transaction has committed, so an
answered card is as durable as before. A full queue holds new callers back (each caller's own
deadline bounds the wait) instead of growing. `put_cards` (the census sweep) writes a batch it
already holds in one transaction: all of it or, with StoreError, none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreError
from .anchors import AnchorLog
from .migrations import migrate_sqlite
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
    feedback_outcome,
)

__all__ = ["SQLiteStore", "connect_durable"]

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
CARD_BATCH = 64  # cards per group commit
CARD_QUEUE = 256  # cards waiting for a commit; beyond it put_card waits for room
CARD_MARKS = ", ".join("?" * len(CARD_COLUMNS.split(",")))
PATIENT_OF = "json_extract(resource, '$.subject.identifier.value')"


def cards_by_uuid(db: sqlite3.Connection, table: str, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
    """The cards of `table` (`card`, or the spool's `spooled_card`) with these uuids."""
    if not card_uuids:
        return {}
    marks = ",".join("?" * len(card_uuids))
    rows = db.execute(
        f"SELECT {CARD_COLUMNS} FROM {table} WHERE card_uuid IN ({marks})", list(card_uuids)
    ).fetchall()
    return {row[0]: card_from_row(row) for row in rows}


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def connect_durable(path: Path) -> sqlite3.Connection:
    """An autocommit connection in WAL mode that syncs every commit and waits for other writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class SQLiteFile:
    """One connection, used by one thread at a time; errors become StoreError without details."""

    what = "record store"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect_durable(self.path)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn(*args)
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.what} failed ({type(exc).__name__})") from exc

        return await asyncio.to_thread(locked)

    def _transaction(self, fn: Callable[[], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class SQLiteStore(SQLiteFile):
    def __init__(self, path: Path | str, *, anchors: AnchorLog | None = None) -> None:
        super().__init__(path)
        self.anchors = anchors or AnchorLog(None)
        self._pending_anchor: tuple[int, str] | None = None  # the head the open transaction appended
        # Group commit of cards: (record, future) waiting, the task committing them, its loop.
        self._cards: list[tuple[CardRecord, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None
        try:
            self.schema_version = migrate_sqlite(self._db)
        except BaseException:
            self._db.close()
            raise

    def _write_card(self, record: CardRecord) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO card ({CARD_COLUMNS}) VALUES ({CARD_MARKS})", card_row(record)
        )
        if record.audit is not None:
            self._append_audit("card-scored", record.audit)

    def _write_cards(self, records: Sequence[CardRecord]) -> None:
        for record in records:
            self._write_card(record)

    async def put_card(self, record: CardRecord) -> None:
        """The card and its `card-scored` audit entry, committed (with the cards of concurrent
        calls, in one transaction) when this returns; StoreError when its transaction failed."""
        loop = asyncio.get_running_loop()
        committer = self._committer
        if committer is not None and not committer.done() and committer.get_loop() is not loop:
            await self._run(self._transaction, partial(self._write_cards, [record]))  # another loop's batch
            return
        while len(self._cards) >= CARD_QUEUE:  # back-pressure: wait for the committer to take some
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieve)  # read even when its caller has given up (no stray warning)
        self._cards.append((record, done))
        if self._committer is None or self._committer.done():
            self._room = None  # nobody waits for room while no commit runs; a new one is of this loop
            self._committer = loop.create_task(self._commit_cards())
        await asyncio.shield(done)  # a caller that gives up does not withdraw its card

    async def put_cards(self, records: Sequence[CardRecord]) -> None:
        """Many cards (a census sweep's) and their audit entries in one transaction: all of them
        committed when this returns, or none of them and StoreError."""
        if records:
            await self._run(self._transaction, partial(self._write_cards, list(records)))

    async def _commit_cards(self) -> None:
        """Commit what is queued, batch after batch, until the queue is empty."""
        while self._cards:
            batch, self._cards = self._cards[:CARD_BATCH], self._cards[CARD_BATCH:]
            if self._room is not None:
                self._room.set()
            records = [record for record, _ in batch]
            try:
                await self._run(self._transaction, partial(self._write_cards, records))
            except asyncio.CancelledError:  # shut down mid-commit: nobody is told their card is in
                for _, done in batch:
                    if not done.done():
                        done.set_exception(StoreError("record store closed before the card was committed"))
                raise
            except Exception:  # noqa: BLE001 - one card's failure must not fail the others
                for record, done in batch:
                    try:
                        await self._run(self._transaction, partial(self._write_cards, [record]))
                    except Exception as exc:  # noqa: BLE001 - that caller's own answer
                        if not done.done():
                            done.set_exception(exc)
                    else:
                        if not done.done():
                            done.set_result(None)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
        return await self._run(lambda: cards_by_uuid(self._db, "card", card_uuids))

    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]:
        def write_all() -> list[WriteResult]:
            results: list[WriteResult] = []
            for rec in records:
                text = feedback_json(rec)
                stored = self._db.execute(
                    "SELECT recorded, resource FROM feedback WHERE provenance_id = ?", (rec.provenance_id,)
                ).fetchone()
                outcome = feedback_outcome(stored, rec.recorded, text)
                if outcome == "created":
                    self._db.execute(
                        "INSERT INTO feedback (provenance_id, card_uuid, resource, recorded)"
                        " VALUES (?, ?, ?, ?)",
                        (rec.provenance_id, rec.card_uuid, text, rec.recorded),
                    )
                elif outcome == "updated":
                    self._db.execute(
                        "UPDATE feedback SET resource = ?, recorded = ? WHERE provenance_id = ?",
                        (text, rec.recorded, rec.provenance_id),
                    )
                if outcome != "unchanged" and rec.audit is not None:
                    self._append_audit("feedback-recorded", {**rec.audit, "write": outcome})
                results.append(outcome)
            return results

        return await self._run(self._transaction, write_all)

    async def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]:
        query = {
            "RiskAssessment": "SELECT resource FROM card ORDER BY created, card_uuid",
            "Provenance": "SELECT resource FROM feedback ORDER BY recorded, provenance_id",
        }[resource_type]
        rows = await self._run(lambda: self._db.execute(query).fetchall())
        for (text,) in rows:
            yield json.loads(text)

    async def append_audit(self, kind: str, details: Mapping[str, Any]) -> int:
        return await self._run(self._transaction, lambda: self._append_audit(kind, details))

    def _append_audit(self, kind: str, details: Mapping[str, Any]) -> int:
        """Inside a write transaction (BEGIN IMMEDIATE: one writer across processes), so the head
        read here is still the head when this entry commits: one chain, whoever writes."""
        row = self._db.execute("SELECT hash FROM audit_event ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row and row[0] else GENESIS
        at, text = time.time(), audit_json(details)
        digest = entry_hash(prev, at, kind, text)
        cursor = self._db.execute(
            "INSERT INTO audit_event (at, kind, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
            (at, kind, text, prev, digest),
        )
        seq = int(cursor.lastrowid or 0)
        self._pending_anchor = (seq, digest)
        return seq

    def _transaction(self, fn: Callable[[], T]) -> T:
        self._pending_anchor = None
        result = super()._transaction(fn)
        if self._pending_anchor is not None:  # committed: the new head may be anchored
            self.anchors.note(*self._pending_anchor)
            self._pending_anchor = None
        return result

    def _audit_page(self, after: int) -> list[Any]:
        return self._db.execute(
            "SELECT seq, at, kind, details, prev_hash, hash FROM audit_event WHERE seq > ? ORDER BY seq "
            "LIMIT 500",
            (after,),
        ).fetchall()

    async def iter_audit(self, after: int = 0) -> AsyncIterator[AuditEvent]:
        while True:
            rows = await self._run(self._audit_page, after)
            if not rows:
                return
            for seq, at, kind, details, prev_hash, digest in rows:
                yield AuditEvent(seq, at, kind, json.loads(details), prev_hash, digest)
            after = rows[-1][0]

    async def _erasing(
        self, where: str, args: Sequence[Any], kind: str, tombstone: Mapping[str, Any]
    ) -> Erasure:
        """`_erase` with SQLite's secure delete on, then a checkpoint: the removed rows are
        overwritten in the file, and no copy of them stays in the write-ahead log."""

        def run() -> Erasure:
            self._db.execute("PRAGMA secure_delete = ON")
            try:
                erased = self._transaction(lambda: self._erase(where, args, kind, tombstone))
            finally:
                self._db.execute("PRAGMA secure_delete = OFF")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return erased

        return await self._run(run)

    def _erase(self, where: str, args: Sequence[Any], kind: str, tombstone: Mapping[str, Any]) -> Erasure:
        """Delete the cards `where` selects and their feedback, and append the tombstone (counts)."""
        uuids = [
            r[0] for r in self._db.execute(f"SELECT card_uuid FROM card WHERE {where}", list(args)).fetchall()
        ]
        feedback = 0
        for start in range(0, len(uuids), 500):
            chunk = uuids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            feedback += self._db.execute(f"DELETE FROM feedback WHERE card_uuid IN ({marks})", chunk).rowcount
            self._db.execute(f"DELETE FROM card WHERE card_uuid IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM model_score WHERE card_uuid IN ({marks})", chunk)
        seq = self._append_audit(kind, {**tombstone, "cards": len(uuids), "feedback": feedback})
        return Erasure(len(uuids), feedback, seq)

    async def forget(self, patient_pseudonyms: Sequence[str], tombstone: Mapping[str, Any]) -> Erasure:
        """Every card of these patients and its feedback; a `patient-forgotten` tombstone."""
        marks = ",".join("?" * len(patient_pseudonyms)) or "NULL"
        where = f"{PATIENT_OF} IN ({marks})"
        return await self._erasing(where, list(patient_pseudonyms), "patient-forgotten", tombstone)

    async def purge(self, before: float, tombstone: Mapping[str, Any]) -> Erasure:
        """Cards created before `before` (epoch s) and their feedback; a `records-purged` tombstone."""
        return await self._erasing("created < ?", [before], "records-purged", {**tombstone, "before": before})

    async def active_versions(self) -> dict[str, str]:
        rows = await self._run(
            lambda: self._db.execute("SELECT model, version FROM registry_state").fetchall()
        )
        return {model: version for model, version in rows}

    async def set_active_version(self, model: str, version: str) -> str | None:
        """Set the served version and record a `model-activated` audit event, in one transaction."""

        def write() -> str | None:
            previous = self._make_active(model, version)
            self._append_audit("model-activated", {"model": model, "version": version, "previous": previous})
            return previous

        return await self._run(self._transaction, write)

    def _make_active(self, model: str, version: str) -> str | None:
        """Inside a transaction: `version` becomes the champion, the former one is retired."""
        row = self._db.execute("SELECT version FROM registry_state WHERE model = ?", (model,)).fetchone()
        previous = row[0] if row else None
        now = time.time()
        before = self._previous_of(model) if previous == version else previous  # re-activation keeps it
        self._db.execute(
            "INSERT INTO registry_state (model, version, updated_at, previous) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (model) DO UPDATE SET version = excluded.version,"
            " updated_at = excluded.updated_at, previous = excluded.previous",
            (model, version, now, before),
        )
        if previous is not None and previous != version:
            self._set_status(model, previous, "retired", 0.0, now)
        self._set_status(model, version, "active", 0.0, now)
        return previous

    def _previous_of(self, model: str) -> str | None:
        row = self._db.execute("SELECT previous FROM registry_state WHERE model = ?", (model,)).fetchone()
        return row[0] if row else None

    def _set_status(self, model: str, version: str, status: str, share: float, now: float) -> None:
        self._db.execute(
            "INSERT INTO model_version (model, version, status, share, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (model, version) DO UPDATE SET status = excluded.status,"
            " share = excluded.share, updated_at = excluded.updated_at",
            (model, version, status, share, now),
        )

    async def version_states(self) -> list[VersionState]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT model, version, status, share, updated_at FROM model_version ORDER BY model, version"
            ).fetchall()
        )
        return [VersionState(m, v, st, float(sh), float(at)) for m, v, st, sh, at in rows]

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

        def write() -> StatusChange | None:
            row = self._db.execute(
                "SELECT status FROM model_version WHERE model = ? AND version = ?", (model, version)
            ).fetchone()
            current = row[0] if row else "candidate"
            if expect is not None and current != expect:
                return None
            now = time.time()
            displaced: tuple[str, ...] = ()
            if status == "active":
                previous = self._make_active(model, version)
                displaced = (previous,) if previous and previous != version else ()
            else:
                if status in ("shadow", "canary"):
                    others = self._db.execute(
                        "SELECT version FROM model_version WHERE model = ? AND status = ? AND version != ?",
                        (model, status, version),
                    ).fetchall()
                    displaced = tuple(r[0] for r in others)
                    for other in displaced:
                        self._set_status(model, other, "candidate", 0.0, now)
                self._set_status(model, version, status, share, now)
            details = {
                **audit,
                "model": model,
                "version": version,
                "status": status,
                "previous_status": current,
                "displaced": list(displaced),
                **({"share": share} if status == "canary" else {}),
            }
            seq = self._append_audit("model-status", details)
            return StatusChange(current, displaced, seq)

        return await self._run(self._transaction, write)

    async def previous_active(self, model: str) -> str | None:
        return await self._run(lambda: self._previous_of(model))

    async def put_model_scores(self, scores: Sequence[ModelScore]) -> None:
        rows = [s.row() for s in scores]

        def write() -> None:
            self._db.executemany(
                "INSERT OR IGNORE INTO model_score (card_uuid, version, model, service_id, role,"
                " probability, band, patient, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._run(self._transaction, write)

    async def model_scores(self, model: str, since: float = 0.0) -> list[ModelScore]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT card_uuid, model, version, service_id, role, probability, band, patient, created"
                " FROM model_score WHERE model = ? AND created >= ? ORDER BY created, card_uuid, version",
                (model, since),
            ).fetchall()
        )
        return [ModelScore(*row) for row in rows]

    async def ping(self) -> bool:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())
        return True

    def health(self) -> StoreHealth:
        return StoreHealth("sqlite")

    async def close(self) -> None:
        committer = self._committer
        if committer is not None and not committer.done():
            with contextlib.suppress(Exception):
                if committer.get_loop() is asyncio.get_running_loop():
                    await committer  # the cards already queued are committed before the file closes
        self.anchors.write()
        await super().close()
