"""The card spool: cards answered while PostgreSQL was unreachable, kept on this machine until
they are in PostgreSQL.

An SQLite file with the same durability as the embedded store (WAL, `synchronous=FULL`), so a
spooled card is as safe as a committed one. Several worker processes share it: each may drain any
row, the insert into PostgreSQL is idempotent, and a row is deleted only after that insert has
committed, so a crash at any point leaves the card in PostgreSQL, in the spool, or in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .records import CardRecord, card_from_row, card_row
from .sqlite import CARD_COLUMNS, SQLiteFile, cards_by_uuid

__all__ = ["CardSpool"]


class CardSpool(SQLiteFile):
    what = "card spool"

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spooled_card (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL,"
            " user_pseudonym TEXT, resource TEXT NOT NULL, created REAL NOT NULL, suggestions TEXT NOT NULL)"
        )

    async def put(self, record: CardRecord) -> None:
        await self._run(
            lambda: self._db.execute(
                f"INSERT OR REPLACE INTO spooled_card ({CARD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                card_row(record),
            )
        )

    async def get(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]:
        return await self._run(lambda: cards_by_uuid(self._db, "spooled_card", card_uuids))

    async def oldest(self, limit: int = -1) -> list[CardRecord]:
        """In spool order; -1: all of them."""
        rows = await self._run(
            lambda: self._db.execute(
                f"SELECT {CARD_COLUMNS} FROM spooled_card ORDER BY rowid LIMIT ?", (limit,)
            ).fetchall()
        )
        return [card_from_row(row) for row in rows]

    async def remove(self, card_uuids: Sequence[str]) -> None:
        """Only once these cards are committed in PostgreSQL."""

        def delete() -> None:
            self._db.executemany("DELETE FROM spooled_card WHERE card_uuid = ?", [(u,) for u in card_uuids])

        await self._run(self._transaction, delete)

    async def count(self) -> int:
        row = await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM spooled_card").fetchone())
        return int(row[0])
