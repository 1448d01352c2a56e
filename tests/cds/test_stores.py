"""Both record stores behave the same: the embedded SQLite file and the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from cds import CardRecord, FeedbackRecord, RecordStore, RedisStore, SQLiteStore
from fhir_mappings import build_provenance
from tests.cds.helpers import new_id


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], RecordStore]:
    """A factory: async clients must be made inside the event loop that uses them."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "cds.sqlite3")
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisStore(url, prefix=prefix)


def card(uuid: str, created: float = 1.0, suggestions: tuple[str, ...] = ()) -> CardRecord:
    ra = {"resourceType": "RiskAssessment", "id": uuid, "status": "final"}
    return CardRecord(uuid, "sepsis-risk", "pr-abc", ra, created, suggestions)


def fb(uuid: str, outcome: str, at: str, epoch: float) -> FeedbackRecord:
    from datetime import datetime

    prov = build_provenance(
        card_uuid=uuid, outcome=outcome, outcome_timestamp=datetime.fromisoformat(at), practitioner_pseudonym="pr-abc",
        override_reason=None, user_comment=None,
    )
    return FeedbackRecord(uuid, prov, epoch)


async def _exported(store: RecordStore, kind: str) -> list[dict]:
    return [r async for r in store.iter_resources(kind)]


def test_cards_and_feedback_round_trip(make_store: Callable[[], RecordStore]) -> None:
    async def scenario() -> None:
        store = make_store()
        a, b = new_id(), new_id()
        offered = (new_id(), new_id())
        await store.put_card(card(a, 1.0, offered))
        await store.put_card(card(b, 2.0))
        found = await store.get_cards([a, b, "missing"])
        assert set(found) == {a, b} and found[a].user_pseudonym == "pr-abc"
        assert found[a].suggestion_uuids == offered and found[b].suggestion_uuids == ()
        assert await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)]) == ["created"]
        assert await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)]) == ["unchanged"]
        assert await store.put_feedback([fb(a, "overridden", "2026-01-01T09:00:00+00:00", 9.0)]) == ["unchanged"]
        assert await store.put_feedback(
            [fb(a, "overridden", "2026-01-01T11:00:00+00:00", 11.0), fb(b, "accepted", "2026-01-01T12:00:00+00:00", 12.0)]
        ) == ["updated", "created"]
        risk = await _exported(store, "RiskAssessment")
        provenance = await _exported(store, "Provenance")
        assert [r["id"] for r in risk] == [a, b]
        assert len(provenance) == 2
        latest = next(p for p in provenance if p["target"][0]["reference"] == f"RiskAssessment/{a}")
        assert latest["activity"]["coding"][0]["code"] == "overridden"
        assert await store.ping()
        await store.close()

    asyncio.run(scenario())


def test_sqlite_batch_is_all_or_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "cds.sqlite3")

    async def scenario() -> None:
        a = new_id()
        await store.put_card(card(a))
        broken = FeedbackRecord(a, {"id": "x", "bad": object()}, 5.0)  # not serialisable: fails mid-batch
        with pytest.raises(TypeError):
            await store.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0), broken])
        assert await _exported(store, "Provenance") == []
        await store.close()

    asyncio.run(scenario())


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = SQLiteStore(tmp_path / "cds.sqlite3")
        a = new_id()
        await first.put_card(card(a))
        await first.put_feedback([fb(a, "accepted", "2026-01-01T10:00:00+00:00", 10.0)])
        await first.close()
        second = SQLiteStore(tmp_path / "cds.sqlite3")
        assert a in await second.get_cards([a])
        assert len(await _exported(second, "Provenance")) == 1
        await second.close()

    asyncio.run(scenario())


def test_sqlite_file_from_before_suggestions_were_kept_still_opens(tmp_path: Path) -> None:
    """A store written by an older release (no suggestions column) is upgraded in place."""
    import sqlite3

    path = tmp_path / "cds.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE card (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL, user_pseudonym TEXT,"
        " resource TEXT NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE feedback (provenance_id TEXT PRIMARY KEY, card_uuid TEXT NOT NULL, resource TEXT NOT NULL,"
        " recorded REAL NOT NULL);"
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
