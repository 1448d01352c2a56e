"""Which record store a server uses: PostgreSQL when `CDS_DATABASE_URL` is set, else the SQLite file.

Redis is never a record store: it keeps nothing on disk by default, and cards and feedback must
outlive a restart. It holds only what may be lost (the replay window, caches).
"""

from __future__ import annotations

from pathlib import Path

from .anchors import AnchorLog
from .postgres import PostgresStore
from .records import RecordStore
from .sqlite import SQLiteStore

__all__ = ["open_store"]


async def open_store(
    *,
    database_url: str | None,
    sqlite_path: Path,
    spool_path: Path,
    timeout_s: float = 1.0,
    anchors: AnchorLog | None = None,
) -> RecordStore:
    """`spool_path`: where PostgreSQL mode keeps cards answered while the database is unreachable;
    `anchors`: where the audit chain's head is anchored (docs/privacy.md)."""
    if database_url:
        return await PostgresStore.open(
            database_url, spool_path=spool_path, timeout_s=timeout_s, anchors=anchors
        )
    return SQLiteStore(sqlite_path, anchors=anchors)
