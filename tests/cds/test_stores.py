"""Both record stores behave the same: the embedded SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cds import CardRecord, FeedbackRecord, PostgresStore, RecordStore, SQLiteStore, StoreError
from cds.stores import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from fhir_mappings import build_provenance
from testkit.helpers import new_id


@dataclass
class Backend:
    name: str
    open: Callable[[], Awaitable[RecordStore]]  # async clients must be made in the loop that uses them
    sql: Callable[[str], list[tuple[Any, ...]]]  # the same database, outside the store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "cds.sqlite3"

        async def open_sqlite() -> RecordStore:
            return SQLiteStore(path)

        def sqlite_sql(query: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as db:
                return db.execute(query).fetchall()

        return Backend("sqlite", open_sqlite, sqlite_sql)
    url = request.getfixturevalue("postgres_url")

    async def open_postgres() -> RecordStore:
        return await PostgresStore.open(url, spool_path=tmp_path / "spool.sqlite3")

    def postgres_sql(query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as db:
            cursor = db.execute(query)  # type: ignore[call-overload]
            return cursor.fetchall() if cursor.description else []

    return Backend("postgres", open_postgres, postgres_sql)


def card(uuid: str, created: float = 1.0, suggestions: tuple[str, ...] = ()) -> CardRecord:
    ra = {"resourceType": "RiskAssessment", "id": uuid, "status": "final"}
    return CardRecord(uuid, "sepsis-risk", "pr-abc", ra, created, suggestions)


def fb(uuid: str, outcome: str, at: str, epoch: float, comment: str | None = None) -> FeedbackRecord:
    prov = build_provenance(
        card_uuid=uuid,
        outcome=outcome,
        outcome_timestamp=datetime.fromisoformat(at),
        practitioner_pseudonym="pr-abc",
        override_reason=None,
        user_comment=comment,
    )
    return FeedbackRecord(uuid, prov, epoch)


async def _exported(store: RecordStore, kind: str) -> list[dict]:
    return [r async for r in store.iter_resources(kind)]


def _activity(provenance: dict) -> str:
    return str(provenance["activity"]["coding"][0]["code"])


def test_cards_and_feedback_round_trip(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        a, b = new_id(), new_id()
        offered = (new_id(), new_id())
        await store.put_card(card(a, 1.0, offered))
        await store.put_card(card(b, 2.0))
        found = await store.get_cards([a, b, "missing"])
        assert set(found) == {a, b} and found[a].user_pseudonym == "pr-abc"
        assert found[a].suggestion_uuids == offered and found[b].suggestion_uuids == ()
        assert found[a].risk_assessment == card(a).risk_assessment and found[b].created == 2.0
        assert await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)]) == ["created"]
        assert await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)]) == [
            "unchanged"
        ]
        assert await store.put_feedback([fb(a, "overridden", "2026-01-01T09:00:00+00:00", 9.0)]) == [
            "unchanged"
        ]
        assert await store.put_feedback(
            [
                fb(a, "overridden", "2026-01-01T11:00:00+00:00", 11.0),
                fb(b, "accepted", "2026-01-01T12:00:00+00:00", 12.0),
            ]
        ) == ["updated", "created"]
        risk = await _exported(store, "RiskAssessment")
        provenance = await _exported(store, "Provenance")
        assert [r["id"] for r in risk] == [a, b]
        assert len(provenance) == 2
        latest = next(p for p in provenance if p["target"][0]["reference"] == f"RiskAssessment/{a}")
        assert _activity(latest) == "overridden"
        assert await store.ping()
        assert store.health().backend == backend.name and not store.health().degraded
        await store.close()

    asyncio.run(scenario())


def test_a_tie_goes_to_the_later_arrival_unless_it_is_an_identical_repeat(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        a = new_id()
        await store.put_card(card(a))
        at = "2026-01-01T10:00:00+00:00"
        assert await store.put_feedback([fb(a, "accepted", at, 10.0)]) == ["created"]
        # Same outcomeTimestamp, a different decision: the one that arrived later is kept.
        assert await store.put_feedback([fb(a, "overridden", at, 10.0, comment="second thoughts")]) == [
            "updated"
        ]
        assert await store.put_feedback([fb(a, "overridden", at, 10.0, comment="second thoughts")]) == [
            "unchanged"
        ]
        (kept,) = await _exported(store, "Provenance")
        assert _activity(kept) == "overridden"
        # Within one batch too, in order: the last of equal timestamps wins, an older one never does.
        assert await store.put_feedback(
            [fb(a, "accepted", at, 10.0), fb(a, "overridden", "2026-01-01T08:00:00+00:00", 8.0)]
        ) == ["updated", "unchanged"]
        (kept,) = await _exported(store, "Provenance")
        assert _activity(kept) == "accepted"
        await store.close()

    asyncio.run(scenario())


def test_a_batch_is_all_or_nothing(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        a = new_id()
        await store.put_card(card(a))
        broken = FeedbackRecord(a, {"id": "x", "bad": object()}, 5.0)  # not serialisable: fails mid-batch
        with pytest.raises(TypeError):
            await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0), broken])
        assert await _exported(store, "Provenance") == []
        await store.close()

    asyncio.run(scenario())


def test_postgres_rolls_back_a_batch_the_database_refuses_halfway(postgres_url: str, tmp_path: Path) -> None:
    """The second item names a card PostgreSQL does not have (foreign key): the first is not kept."""

    async def scenario() -> None:
        store = await PostgresStore.open(postgres_url, spool_path=tmp_path / "spool.sqlite3")
        a = new_id()
        await store.put_card(card(a))
        with pytest.raises(StoreError) as refused:
            await store.put_feedback(
                [
                    fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0),
                    fb(new_id(), "accepted", "2026-01-01T10:00:00+00:00", 10.0),
                ]
            )
        assert a not in str(refused.value) and "ForeignKeyViolation" in str(refused.value)
        assert await _exported(store, "Provenance") == []
        assert not store.health().degraded  # a refused write is not an outage
        await store.close()

    asyncio.run(scenario())


_REFUSE_CARD = {
    "sqlite": "CREATE TRIGGER refuse_card BEFORE INSERT ON card WHEN NEW.card_uuid = 'refused-card'"
    " BEGIN SELECT RAISE(ABORT, 'refused'); END",
    "postgres": "CREATE FUNCTION refuse_card() RETURNS trigger AS $$ BEGIN IF NEW.card_uuid = 'refused-card'"
    " THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql;"
    " CREATE TRIGGER refuse_card BEFORE INSERT ON card FOR EACH ROW EXECUTE FUNCTION refuse_card()",
}


def test_a_batch_of_cards_is_written_with_its_chained_audit_entries_all_or_none(backend: Backend) -> None:
    """`put_cards` (the census sweep's writes): every card and its `card-scored` entry, chained in
    order after what was there; a batch the database refuses halfway leaves nothing of itself."""
    from dataclasses import replace

    from cds.audit import verify_chain

    first = [replace(card(new_id(), created=float(i)), audit={"n": i}) for i in range(5)]

    async def write_first() -> None:
        store = await backend.open()
        await store.append_audit("before", {})
        await store.put_cards(first)
        await store.put_cards([])
        await store.close()

    async def write_refused() -> None:
        store = await backend.open()
        with pytest.raises(StoreError, match="failed"):
            await store.put_cards(
                [card(new_id()), replace(card("refused-card"), audit={"n": 9}), card(new_id())]
            )
        assert store.health().spooled_total == 0 and not store.health().degraded  # refused, not an outage
        cards = await store.get_cards([c.card_uuid for c in first])
        assert [cards[c.card_uuid].risk_assessment for c in first] == [c.risk_assessment for c in first]
        events = [e async for e in store.iter_audit()]
        assert [e.kind for e in events] == ["before"] + ["card-scored"] * 5
        assert [e.details for e in events[1:]] == [{"n": i} for i in range(5)]
        assert verify_chain(events).ok
        await store.close()

    asyncio.run(write_first())
    backend.sql(_REFUSE_CARD[backend.name])
    asyncio.run(write_refused())
    assert backend.sql("SELECT COUNT(*) FROM card") == [(5,)]


def test_store_survives_reopening(backend: Backend) -> None:
    async def scenario() -> None:
        first = await backend.open()
        a = new_id()
        await first.put_card(card(a))
        await first.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)])
        await first.append_audit("test-event", {"n": 1})
        await first.set_active_version("sepsis", "2")
        await first.close()
        second = await backend.open()
        assert a in await second.get_cards([a])
        assert len(await _exported(second, "Provenance")) == 1
        assert [e.kind async for e in second.iter_audit()] == ["test-event", "model-activated"]
        assert await second.active_versions() == {"sepsis": "2"}
        await second.close()

    asyncio.run(scenario())


def test_audit_events_are_ordered_and_append_only(backend: Backend) -> None:
    async def scenario() -> list[int]:
        store = await backend.open()
        seqs = [await store.append_audit("export", {"n": i, "who": "ops"}) for i in range(3)]
        events = [e async for e in store.iter_audit()]
        assert [e.seq for e in events] == seqs == sorted(seqs) and len(set(seqs)) == 3
        assert [e.details for e in events] == [{"n": i, "who": "ops"} for i in range(3)]
        assert all(e.kind == "export" and e.at > 1.7e9 for e in events)
        assert [e.details["n"] async for e in store.iter_audit(after=seqs[0])] == [1, 2]
        await store.close()
        return seqs

    seqs = asyncio.run(scenario())
    for statement in (
        "UPDATE audit_event SET kind = 'rewritten'",
        f"DELETE FROM audit_event WHERE seq = {seqs[0]}",
    ):
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
            backend.sql(statement)
    assert [row[0] for row in backend.sql("SELECT kind FROM audit_event ORDER BY seq")] == ["export"] * 3


def test_registry_state_keeps_one_active_version_per_model_and_audits_each_change(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        assert await store.active_versions() == {}
        assert await store.set_active_version("sepsis", "2") is None
        assert await store.set_active_version("readmission", "1") is None
        assert await store.set_active_version("sepsis", "3") == "2"
        assert await store.active_versions() == {"sepsis": "3", "readmission": "1"}
        activated = [e.details async for e in store.iter_audit() if e.kind == "model-activated"]
        assert activated == [
            {"model": "sepsis", "version": "2", "previous": None},
            {"model": "readmission", "version": "1", "previous": None},
            {"model": "sepsis", "version": "3", "previous": "2"},
        ]
        await store.close()

    asyncio.run(scenario())


def test_concurrent_identical_feedback_is_stored_once(backend: Backend) -> None:
    """Eight connections (threads, each with its own store and event loop) post the same feedback
    at the same moment: one creates it, the others find it unchanged."""
    a = new_id()

    async def setup() -> None:
        store = await backend.open()
        await store.put_card(card(a))
        await store.close()

    asyncio.run(setup())
    workers = 8
    barrier = threading.Barrier(workers)
    results: list[str] = []
    errors: list[BaseException] = []

    async def post() -> None:
        store = await backend.open()
        try:
            barrier.wait(timeout=30)
            results.extend(await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)]))
        finally:
            await store.close()

    def run() -> None:
        try:
            asyncio.run(post())
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == ["created"] + ["unchanged"] * (workers - 1)
    assert backend.sql("SELECT COUNT(*) FROM feedback") == [(1,)]


# --- schema versions ------------------------------------------------------------------------

V1_SCHEMA = (
    "CREATE TABLE card (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL, user_pseudonym TEXT,"
    " resource TEXT NOT NULL, created REAL NOT NULL, suggestions TEXT NOT NULL DEFAULT '[]');"
    "CREATE TABLE feedback (provenance_id TEXT PRIMARY KEY,"
    " card_uuid TEXT NOT NULL REFERENCES card(card_uuid), resource TEXT NOT NULL, recorded REAL NOT NULL);"
)


def test_a_version_1_sqlite_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """Files written before schema versions were kept (user_version 0) hold version 1."""
    path = tmp_path / "cds.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    prov = fb("old-card", "accepted", "2026-01-01T10:00:00+00:00", 10.0)
    old.execute(
        "INSERT INTO card VALUES"
        " ('old-card', 'sepsis-risk', 'pr-abc', '{\"id\": \"old-card\"}', 1.0, '[\"s-1\"]')"
    )
    old.execute(
        "INSERT INTO feedback VALUES (?, 'old-card', ?, 10.0)", (prov.provenance_id, _canonical(prov))
    )
    old.commit()
    old.close()

    async def scenario() -> None:
        store = SQLiteStore(path)
        assert store.schema_version == SQLITE_MIGRATIONS[-1].version == 4
        assert (await store.get_cards(["old-card"]))["old-card"].suggestion_uuids == ("s-1",)
        assert await store.put_feedback([prov]) == ["unchanged"]  # the row written by version 1 code
        await store.append_audit("upgraded", {})
        await store.set_active_version("sepsis", "2")
        await store.close()
        again = SQLiteStore(path)  # already current: nothing to do
        assert [e.kind async for e in again.iter_audit()] == ["upgraded", "model-activated"]
        await again.close()

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _canonical(record: FeedbackRecord) -> str:
    import json

    return json.dumps(record.provenance, sort_keys=True)


def test_sqlite_file_from_before_suggestions_were_kept_still_opens(tmp_path: Path) -> None:
    """A store written by an older release (no suggestions column) is upgraded in place."""
    path = tmp_path / "cds.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE card (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL, user_pseudonym TEXT,"
        " resource TEXT NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE feedback (provenance_id TEXT PRIMARY KEY, card_uuid TEXT NOT NULL,"
        " resource TEXT NOT NULL, recorded REAL NOT NULL);"
    )
    old.execute("INSERT INTO card VALUES ('old-card', 'sepsis-risk', NULL, '{\"id\": \"old-card\"}', 1.0)")
    old.commit()
    old.close()

    async def scenario() -> None:
        store = SQLiteStore(path)
        found = await store.get_cards(["old-card"])
        assert found["old-card"].suggestion_uuids == ()
        fresh = new_id()
        await store.put_card(card(fresh, 2.0, ("s-1",)))
        assert (await store.get_cards([fresh]))[fresh].suggestion_uuids == ("s-1",)
        await store.close()

    asyncio.run(scenario())


def test_a_sqlite_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cds.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA + "PRAGMA user_version = 99;")
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)


def test_postgres_schema_is_created_once_by_workers_starting_together(
    postgres_url: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        stores = await asyncio.gather(
            *(PostgresStore.open(postgres_url, spool_path=tmp_path / "spool.sqlite3") for _ in range(4))
        )
        await stores[0].put_card(card("c-1"))
        assert "c-1" in await stores[3].get_cards(["c-1"])
        for store in stores:
            await store.close()
        again = await PostgresStore.open(
            postgres_url, spool_path=tmp_path / "spool.sqlite3"
        )  # nothing to apply
        assert "c-1" in await again.get_cards(["c-1"])
        await again.close()

    asyncio.run(scenario())
    with psycopg.connect(postgres_url) as db:
        versions = db.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        tables = {
            r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        }
    assert versions == [(m.version, m.name) for m in POSTGRES_MIGRATIONS]
    assert tables == {
        "schema_migrations",
        "card",
        "feedback",
        "audit_event",
        "registry_state",
        "model_version",
        "model_score",
    }


def test_a_postgres_schema_from_a_newer_release_is_refused(postgres_url: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        db.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')")
    with pytest.raises(StoreError, match="newer"):
        asyncio.run(PostgresStore.open(postgres_url, spool_path=tmp_path / "spool.sqlite3"))


def test_postgres_export_includes_spooled_cards_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    """A card in PostgreSQL, one only in the spool (answered during an outage), and one in both (its
    insert timed out but committed later): each RiskAssessment comes out once, drained or not."""
    from cds.stores import CardSpool

    spool_path = tmp_path / "spool.sqlite3"
    in_db, in_spool, in_both = new_id(), new_id(), new_id()

    async def scenario() -> list[str]:
        store = await PostgresStore.open(postgres_url, spool_path=spool_path, idle_check_s=3600)
        await store.put_card(card(in_db, 1.0))
        await store.put_card(card(in_both, 2.0))
        other_worker = CardSpool(spool_path)
        await other_worker.put(card(in_spool, 3.0))
        await other_worker.put(card(in_both, 2.0))
        await other_worker.close()
        exported = [r["id"] for r in await _exported(store, "RiskAssessment")]
        assert set(await store.get_cards([in_db, in_spool, in_both])) == {in_db, in_spool, in_both}
        await store.close()
        return exported

    exported = asyncio.run(scenario())
    assert sorted(exported) == sorted([in_db, in_spool, in_both])
