"""The SQLite store's group commit of cards: concurrent hook calls share a transaction, and each
`put_card` still returns only once its own card is committed; one bad card fails alone; a full
queue holds callers back; a caller that gives up does not withdraw its card; closing commits
what is queued. Real SQLite files, two stores on one file as two workers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cds import CardRecord, SQLiteStore
from cds.audit import verify_chain
from cds.stores import sqlite as sqlite_store
from testkit.helpers import new_id


def _card(uuid: str, resource: object = None) -> CardRecord:
    ra = (
        resource
        if resource is not None
        else {"resourceType": "RiskAssessment", "id": uuid, "status": "final"}
    )
    return CardRecord(
        uuid, "sepsis-risk", "pr-abc", ra, 1.0, (), (), {"service": "sepsis-risk", "card": uuid}
    )  # type: ignore[arg-type]


def _stored(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT card_uuid FROM card")}


async def _chain(store: SQLiteStore) -> dict[str, object]:
    return verify_chain([e async for e in store.iter_audit()]).as_dict()


def test_concurrent_cards_from_two_workers_are_all_committed_in_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "cds.sqlite3"

    async def run() -> dict[str, object]:
        a, b = SQLiteStore(path), SQLiteStore(path)
        uuids = [new_id() for _ in range(200)]
        await asyncio.gather(*((a if i % 2 else b).put_card(_card(u)) for i, u in enumerate(uuids)))
        # Every put_card has returned: each card is committed, readable by another connection now.
        assert _stored(path) == set(uuids)
        report = await _chain(a)
        await a.close()
        await b.close()
        return report

    report = asyncio.run(run())
    assert report["ok"] and report["entries"] == 200, report


def test_one_bad_card_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "cds.sqlite3"
    good = [new_id() for _ in range(19)]
    bad = new_id()

    async def run() -> list[BaseException | None]:
        store = SQLiteStore(path)
        cards = (
            [_card(u) for u in good[:9]] + [_card(bad, {"not json": object()})] + [_card(u) for u in good[9:]]
        )
        results = await asyncio.gather(*(store.put_card(c) for c in cards), return_exceptions=True)
        assert (await _chain(store))["ok"]
        await store.close()
        return results

    results = asyncio.run(run())
    assert isinstance(results[9], TypeError)
    assert [r for i, r in enumerate(results) if i != 9] == [None] * 19
    assert _stored(path) == set(good)


def test_a_full_queue_holds_callers_back_and_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CARD_QUEUE", 4)
    monkeypatch.setattr(sqlite_store, "CARD_BATCH", 2)
    path = tmp_path / "cds.sqlite3"
    uuids = [new_id() for _ in range(60)]

    async def run() -> int:
        store = SQLiteStore(path)
        longest = 0
        writing = asyncio.gather(*(store.put_card(_card(u)) for u in uuids))
        while not writing.done():
            longest = max(longest, len(store._cards))
            await asyncio.sleep(0)
        await writing
        await store.close()
        return longest

    longest = asyncio.run(run())
    assert 0 < longest <= 4
    assert _stored(path) == set(uuids)


def test_a_caller_that_gives_up_does_not_withdraw_its_card_and_close_commits_the_queue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cds.sqlite3"
    first, late = new_id(), [new_id() for _ in range(5)]

    async def run() -> None:
        store = SQLiteStore(path)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await store.put_card(_card(first))
        for u in late:  # queued, nobody waits for them: close() must commit them first
            asyncio.ensure_future(store.put_card(_card(u)))
        await asyncio.sleep(0)
        await store.close()

    asyncio.run(run())
    assert _stored(path) == {first, *late}
