"""Schema versions of the record stores, applied in order when a store opens.

SQLite keeps its version in `PRAGMA user_version`; files written before versions were kept
(user_version 0) hold version 1's tables, possibly without `card.suggestions`, and are upgraded
in place. PostgreSQL keeps one row per applied version in `schema_migrations`; the whole upgrade
runs in one transaction under an advisory lock, so workers starting together apply each version
exactly once and the others then find nothing to do. A store newer than this code is refused:
an old release must not write rows a newer schema does not expect.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from .records import GENESIS, audit_json, entry_hash

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["Migration", "POSTGRES_MIGRATIONS", "SQLITE_MIGRATIONS", "migrate_postgres", "migrate_sqlite"]

# pg_advisory_xact_lock key of the schema upgrade ("cds" + 1).
MIGRATION_LOCK = 0x636473_01


@dataclass(frozen=True)
class Migration:
    """`statements`, then `backfill` (a function of the connection: sync for SQLite, async for
    PostgreSQL), then `after`, in the same transaction."""

    version: int
    name: str
    statements: tuple[str, ...]
    backfill: Callable[[Any], Any] | None = None
    after: tuple[str, ...] = ()


def _chain_sqlite(db: sqlite3.Connection) -> None:
    """Version 3: hash-chain the audit entries written before the chain existed, in seq order."""
    prev = GENESIS
    for seq, at, kind, details in db.execute(
        "SELECT seq, at, kind, details FROM audit_event ORDER BY seq"
    ).fetchall():
        digest = entry_hash(prev, at, kind, audit_json(json.loads(details)))  # as verify reads it
        db.execute("UPDATE audit_event SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = digest


async def _chain_postgres(conn: Any) -> None:
    cursor = await conn.execute("SELECT seq, at, kind, details FROM audit_event ORDER BY seq")
    prev = GENESIS
    for seq, at, kind, details in await cursor.fetchall():
        digest = entry_hash(prev, float(at), kind, audit_json(json.loads(details)))
        await conn.execute(
            "UPDATE audit_event SET prev_hash = %s, hash = %s WHERE seq = %s", (prev, digest, seq)
        )
        prev = digest


def _no_update(table: str, dialect: str) -> tuple[str, ...]:
    """Triggers that make `table` append-only: an audit trail nobody can rewrite through SQL."""
    if dialect == "sqlite":
        return tuple(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            for op in ("UPDATE", "DELETE")
        )
    return (
        f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN RAISE EXCEPTION '{table} is append-only'; END $$",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()",
    )


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "cards and feedback",
        (
            "CREATE TABLE IF NOT EXISTS card (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL,"
            " user_pseudonym TEXT, resource TEXT NOT NULL, created REAL NOT NULL,"
            " suggestions TEXT NOT NULL DEFAULT '[]')",
            "CREATE TABLE IF NOT EXISTS feedback (provenance_id TEXT PRIMARY KEY,"
            " card_uuid TEXT NOT NULL REFERENCES card(card_uuid), resource TEXT NOT NULL,"
            " recorded REAL NOT NULL)",
        ),
    ),
    Migration(
        2,
        "audit events and registry state",
        (
            "CREATE TABLE audit_event (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
            " kind TEXT NOT NULL, details TEXT NOT NULL)",
            *_no_update("audit_event", "sqlite"),
            "CREATE TABLE registry_state (model TEXT PRIMARY KEY, version TEXT NOT NULL,"
            " updated_at REAL NOT NULL)",
        ),
    ),
    Migration(
        3,
        "audit hash chain; identity hashes of cards",
        (
            "ALTER TABLE card ADD COLUMN identity_hashes TEXT NOT NULL DEFAULT '[]'",
            "DROP TRIGGER IF EXISTS audit_event_no_update",
            "DROP TRIGGER IF EXISTS audit_event_no_delete",
            "ALTER TABLE audit_event ADD COLUMN prev_hash TEXT",
            "ALTER TABLE audit_event ADD COLUMN hash TEXT",
        ),
        backfill=_chain_sqlite,
        after=_no_update("audit_event", "sqlite"),
    ),
    Migration(
        4,
        "model version statuses (shadow, canary) and challenger scores",
        (
            "CREATE TABLE model_version (model TEXT NOT NULL, version TEXT NOT NULL, status TEXT NOT NULL,"
            " share REAL NOT NULL DEFAULT 0, updated_at REAL NOT NULL, PRIMARY KEY (model, version))",
            "INSERT INTO model_version (model, version, status, share, updated_at)"
            " SELECT model, version, 'active', 0, updated_at FROM registry_state",
            "ALTER TABLE registry_state ADD COLUMN previous TEXT",
            "CREATE TABLE model_score (card_uuid TEXT NOT NULL, version TEXT NOT NULL, model TEXT NOT NULL,"
            " service_id TEXT NOT NULL, role TEXT NOT NULL, probability REAL NOT NULL, band TEXT NOT NULL,"
            " patient TEXT, created REAL NOT NULL, PRIMARY KEY (card_uuid, version))",
            "CREATE INDEX model_score_created ON model_score (model, created)",
        ),
    ),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "cards and feedback",
        (
            "CREATE TABLE card (card_uuid text PRIMARY KEY, service_id text NOT NULL, user_pseudonym text,"
            " resource text NOT NULL, created double precision NOT NULL,"
            " suggestions text NOT NULL DEFAULT '[]')",
            "CREATE INDEX card_created ON card (created, card_uuid)",
            "CREATE TABLE feedback (provenance_id text PRIMARY KEY,"
            " card_uuid text NOT NULL REFERENCES card (card_uuid), resource text NOT NULL,"
            " recorded double precision NOT NULL)",
            "CREATE INDEX feedback_recorded ON feedback (recorded, provenance_id)",
        ),
    ),
    Migration(
        2,
        "audit events and registry state",
        (
            "CREATE TABLE audit_event (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " at double precision NOT NULL, kind text NOT NULL, details text NOT NULL)",
            *_no_update("audit_event", "postgres"),
            "CREATE TABLE registry_state (model text PRIMARY KEY, version text NOT NULL,"
            " updated_at double precision NOT NULL)",
        ),
    ),
    Migration(
        3,
        "audit hash chain; identity hashes of cards",
        (
            "ALTER TABLE card ADD COLUMN identity_hashes text NOT NULL DEFAULT '[]'",
            "ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only",
            "ALTER TABLE audit_event ADD COLUMN prev_hash text",
            "ALTER TABLE audit_event ADD COLUMN hash text",
        ),
        backfill=_chain_postgres,
        after=("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only",),
    ),
    Migration(
        4,
        "model version statuses (shadow, canary) and challenger scores",
        (
            "CREATE TABLE model_version (model text NOT NULL, version text NOT NULL, status text NOT NULL,"
            " share double precision NOT NULL DEFAULT 0, updated_at double precision NOT NULL,"
            " PRIMARY KEY (model, version))",
            "INSERT INTO model_version (model, version, status, share, updated_at)"
            " SELECT model, version, 'active', 0, updated_at FROM registry_state",
            "ALTER TABLE registry_state ADD COLUMN previous text",
            "CREATE TABLE model_score (card_uuid text NOT NULL, version text NOT NULL, model text NOT NULL,"
            " service_id text NOT NULL, role text NOT NULL, probability double precision NOT NULL,"
            " band text NOT NULL, patient text, created double precision NOT NULL,"
            " PRIMARY KEY (card_uuid, version))",
            "CREATE INDEX model_score_created ON model_score (model, created)",
        ),
    ),
)


def _sqlite_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def _newer(version: int, known: int) -> StoreError:
    return StoreError(f"record store schema version {version} is newer than this release knows ({known})")


def migrate_sqlite(db: sqlite3.Connection, migrations: tuple[Migration, ...] = SQLITE_MIGRATIONS) -> int:
    """Bring an SQLite file (autocommit connection) to the latest version; return it."""
    latest = migrations[-1].version
    if (current := _sqlite_version(db)) == latest:
        return latest
    for migration in migrations:
        db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        try:
            current = _sqlite_version(db)
            if current > latest:
                raise _newer(current, latest)
            if current < migration.version:
                for statement in migration.statements:
                    db.execute(statement)
                if migration.backfill is not None:
                    migration.backfill(db)
                for statement in migration.after:
                    db.execute(statement)
                if migration.version == 1:
                    columns = {row[1] for row in db.execute("PRAGMA table_info(card)")}
                    if "suggestions" not in columns:  # a file written before cards kept their suggestions
                        db.execute("ALTER TABLE card ADD COLUMN suggestions TEXT NOT NULL DEFAULT '[]'")
                db.execute(f"PRAGMA user_version = {migration.version:d}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return latest


async def migrate_postgres(
    conn: AsyncConnection[Any], migrations: tuple[Migration, ...] = POSTGRES_MIGRATIONS
) -> list[int]:
    """Apply what `schema_migrations` lacks, in one transaction; return the versions applied now."""
    latest = migrations[-1].version
    applied_now = []
    async with conn.transaction():
        # A waiting worker may sit behind another's upgrade: longer than an ordinary statement.
        await conn.execute("SET LOCAL statement_timeout = '30s'")
        await conn.execute("SET LOCAL lock_timeout = '30s'")
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(row[0]) for row in await cursor.fetchall()}
        if done and max(done) > latest:
            raise _newer(max(done), latest)
        for migration in migrations:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await conn.execute(statement)  # our literals, no parameters
            if migration.backfill is not None:
                await migration.backfill(conn)
            for statement in migration.after:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
    return applied_now
