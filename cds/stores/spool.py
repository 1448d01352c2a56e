"""The card spool: cards answered while PostgreSQL was unreachable, kept on this machine until
they are in PostgreSQL.

An SQLite file with the same durability as the embedded store (WAL, `synchronous=FULL`), so a
spooled card is as safe as a committed one. Several worker processes share it: each may drain any
row, the insert into PostgreSQL is idempotent, and a row is deleted only after that insert has
committed, so a crash at any point leaves the card in PostgreSQL, in the spool, or in both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .records import CARD_COLUMNS, CardRecord, card_from_row, card_row
from .sqlite import SQLiteFile, cards_by_uuid

__all__ = ["CardSpool"]


class CardSpool(SQLiteFile):
    what = "card spool"

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spooled_card (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL,"
            " user_pseudonym TEXT, resource TEXT NOT NULL, created REAL NOT NULL, suggestions TEXT NOT NULL,"
            " identity_hashes TEXT NOT NULL DEFAULT '[]', audit TEXT)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(spooled_card)")}
        if "identity_hashes" not in columns:  # a spool written by an earlier release
            self._db.execute("ALTER TABLE spooled_card ADD COLUMN identity_hashes TEXT NOT NULL DEFAULT '[]'")
        if "audit" not in columns:
            self._db.execute("ALTER TABLE spooled_card ADD COLUMN audit TEXT")

    async def put(self, record: CardRecord) -> None:
        """With its `card-scored` audit entry, appended to the chain when the card is drained."""
        audit = json.dumps(dict(record.audit)) if record.audit is not None else None
        await self._run(
            lambda: self._db.execute(
                f"INSERT OR REPLACE INTO spooled_card ({CARD_COLUMNS}, audit) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "?)",
                (*card_row(record), audit),
            )
        )

    async def put_many(self, records: Sequence[CardRecord]) -> None:
        """Several cards in one transaction (all or none), each with its audit entry."""
        rows = [(*card_row(r), json.dumps(dict(r.audit)) if r.audit is not None else None) for r in records]

        def insert() -> None:
            marks = ", ".join("?" * 8)
            self._db.executemany(
                f"INSERT OR REPLACE INTO spooled_card ({CARD_COLUMNS}, audit) VALUES ({marks})", rows
            )

        await self._run(self._transaction, insert)

    async def get(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
        return await self._run(lambda: cards_by_uuid(self._db, "spooled_card", card_uuids))

    async def oldest(self, limit: int = -1) -> list[CardRecord]:
        """In spool order; -1: all of them."""
        rows = await self._run(
            lambda: self._db.execute(
                f"SELECT {CARD_COLUMNS}, audit FROM spooled_card ORDER BY rowid LIMIT ?", (limit,)
            ).fetchall()
        )
        return [replace(card_from_row(row), audit=json.loads(row[-1]) if row[-1] else None) for row in rows]

    async def forget(self, card_filter: str, args: Sequence[object]) -> int:
        """Remove spooled cards `card_filter` (an SQL condition) selects; how many."""

        def delete() -> int:
            self._db.execute("PRAGMA secure_delete = ON")
            try:
                return int(
                    self._db.execute(f"DELETE FROM spooled_card WHERE {card_filter}", list(args)).rowcount
                )
            finally:
                self._db.execute("PRAGMA secure_delete = OFF")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        return await self._run(delete)

    async def remove(self, card_uuids: Sequence[str]) -> None:
        """Only once these cards are committed in PostgreSQL."""

        def delete() -> None:
            self._db.executemany("DELETE FROM spooled_card WHERE card_uuid = ?", [(u,) for u in card_uuids])

        await self._run(self._transaction, delete)

    async def count(self) -> int:
        row = await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM spooled_card").fetchone())
        return int(row[0])
