"""PostgreSQL down or frozen while hooks are called, against a private server of this module's own:
the hooks still answer with cards (recorded in time, in the spool), feedback is refused with 503,
and once the database is back the spool drains by itself and feedback on those cards succeeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cds import CardRecord, PostgresStore, Settings, StoreUnavailable, create_app
from cds.audit import verify_chain
from cds.stores import POSTGRES_MIGRATIONS, CardSpool
from demo_ehr import patient_view_request, serve_in_thread
from testkit.helpers import feedback, new_id, synthetic_stay
from testkit.metrics import by_label, metric
from testkit.private_postgres import PrivatePostgres, scratch_database
from tests.cds.test_stores import fb

pytestmark = pytest.mark.postgres

BODY = patient_view_request(synthetic_stay(hours=20))


@pytest.fixture
def database(private_postgres: PrivatePostgres) -> Iterator[str]:
    with scratch_database(private_postgres.url) as url:
        yield url
    private_postgres.thaw()


def wait_for(condition: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    """Poll an eventual condition; fail if it never holds (the bound is generous, not a speed goal)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within_s} s")
        time.sleep(0.05)


def hook(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/cds-services/sepsis-risk", json=BODY)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    return dict(card)


def overridden(card: dict[str, Any]) -> dict[str, Any]:
    return {"feedback": [feedback(card["uuid"], reason=card["overrideReasons"][0])]}


def calls_by_reason(client: httpx.Client) -> dict[str, int]:
    return by_label(client.get("/metrics").text, "cds_hook_calls_total", "reason", service="sepsis-risk")


def _rows(url: str, query: str) -> set[Any]:
    with psycopg.connect(url) as db:
        return {row[0] for row in db.execute(query).fetchall()}  # type: ignore[call-overload]


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_hooks_answer_through_an_outage_and_the_spool_drains_after_it(
    outage: str, private_postgres: PrivatePostgres, database: str, tmp_path: Path
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        database_url=database,
        database_timeout_s=0.5,
        hook_timeout_s=2.0,
    )
    app = create_app(settings)
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        store = app.state.cds.store
        before = hook(client)
        private_postgres.stop() if outage == "stopped" else private_postgres.freeze()
        try:
            during = [hook(client) for _ in range(4)]
            health = store.health()
            assert health.degraded and health.spooled == health.spooled_total == 4
            refused = client.post("/cds-services/sepsis-risk/feedback", json=overridden(during[0]))
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.json()["issue"][0]["details"]["text"] == "store-unavailable"
            assert before["uuid"] not in refused.text and during[0]["uuid"] not in refused.text
            alive = client.get("/healthz")  # still answering hooks: stays in service, says the store is out
            assert alive.status_code == 200 and alive.json()["store"] == "unavailable"
            assert metric(client.get("/metrics").text, "cds_degraded", component="record-store") == 1
        finally:
            private_postgres.start() if outage == "stopped" else private_postgres.thaw()
        # Recorded in time: a put_card past the hook's budget would count as "card-unrecorded".
        assert calls_by_reason(client) == {"card": 5}
        wait_for(lambda: not store.health().degraded and store.health().spooled == 0, "spool drained")
        assert store.health().drained_total == 4
        for card in [before, *during]:
            done = client.post("/cds-services/sepsis-risk/feedback", json=overridden(card))
            assert done.status_code == 200 and done.json()["results"][0]["status"] == "created"
    uuids = {c["uuid"] for c in [before, *during]}
    assert _rows(database, "SELECT card_uuid FROM card") == uuids
    assert _rows(database, "SELECT card_uuid FROM feedback") == uuids
    assert asyncio.run(_spool_count(settings.spool_path)) == 0
    # Spooled cards joined the audit chain when they were drained: one valid chain, every card in it.
    entries = asyncio.run(_audit(database, tmp_path))
    assert verify_chain(entries).ok
    scored = [e.details["card"] for e in entries if e.kind == "card-scored"]
    assert sorted(scored) == sorted(
        uuids
    )  # each exactly once (a frozen server may commit a late insert itself)
    assert any(e.details.get("spooled") for e in entries)


async def _audit(database: str, tmp_path: Path) -> list[Any]:
    store = await PostgresStore.open(database, spool_path=tmp_path / "audit-spool.sqlite3")
    try:
        return [e async for e in store.iter_audit()]
    finally:
        await store.close()


async def _spool_count(path: Path) -> int:
    spool = CardSpool(path)
    try:
        return await spool.count()
    finally:
        await spool.close()


def card(uuid: str) -> CardRecord:
    resource = {"resourceType": "RiskAssessment", "id": uuid}
    return CardRecord(uuid, "sepsis-risk", "pr-abc", resource, time.time())


def test_a_store_opened_while_postgres_is_down_spools_and_another_worker_drains_it(
    private_postgres: PrivatePostgres, database: str, tmp_path: Path
) -> None:
    """One worker starts during the outage (no schema yet), spools two cards and exits; a worker
    started after the outage upgrades the schema and drains them; a card a third worker spooled is
    found and accepts feedback before any drainer reaches it."""
    spool_path = tmp_path / "spool.sqlite3"
    a, b, c = new_id(), new_id(), new_id()

    async def during_outage() -> None:
        store = await PostgresStore.open(database, spool_path=spool_path, timeout_s=0.5)
        assert store.health().degraded
        await store.put_card(card(a))
        await store.put_card(card(b))
        with pytest.raises(StoreUnavailable) as refused:
            await store.get_cards([a])
        assert refused.value.retry_after_s and a not in str(refused.value)
        with pytest.raises(StoreUnavailable):
            await store.append_audit("test", {})
        assert store.health().spooled == 2
        await store.close()

    async def after_outage() -> None:
        store = await PostgresStore.open(database, spool_path=spool_path, timeout_s=0.5, idle_check_s=3600)
        assert not store.health().degraded
        for _ in range(600):
            if store.health().drained_total == 2:
                break
            await asyncio.sleep(0.05)
        assert store.health().drained_total == 2 and store.health().spooled == 0
        other_worker = CardSpool(spool_path)  # spools c; our drainer sleeps for an hour
        await other_worker.put(card(c))
        await other_worker.close()
        assert set(await store.get_cards([a, b, c])) == {a, b, c}
        assert await store.put_feedback([fb(c, "accepted", "2026-01-01T10:00:00+00:00", 10.0)]) == ["created"]
        await store.close()

    private_postgres.stop()
    try:
        asyncio.run(during_outage())
    finally:
        private_postgres.start()
    asyncio.run(after_outage())
    assert _rows(database, "SELECT card_uuid FROM card") == {a, b, c}
    assert _rows(database, "SELECT card_uuid FROM feedback") == {c}
    assert _rows(database, "SELECT COUNT(*) FROM schema_migrations") == {len(POSTGRES_MIGRATIONS)}


def test_a_sweeps_batch_written_during_an_outage_is_spooled_whole_and_drained_once(
    private_postgres: PrivatePostgres, database: str, tmp_path: Path
) -> None:
    """`put_cards` while PostgreSQL is down: the whole batch into the spool (nothing lost, no
    error), then drained into PostgreSQL with one `card-scored` entry per card, chained."""
    from dataclasses import replace

    batch = [replace(card(new_id()), audit={"card": str(i)}) for i in range(7)]

    async def sweep_during_outage() -> None:
        store = await PostgresStore.open(database, spool_path=tmp_path / "spool.sqlite3", timeout_s=0.5)
        await store.append_audit("before", {})
        private_postgres.stop()
        try:
            await store.put_cards(batch)
            assert store.health().degraded and store.health().spooled_total == 7
            await store.put_cards(batch[:2])  # already degraded: straight to the spool, replaced
            assert await store.spool.count() == 7
        finally:
            private_postgres.start()
        for _ in range(600):
            if not store.health().degraded and await store.spool.count() == 0:
                break
            await asyncio.sleep(0.05)
        assert await store.spool.count() == 0
        await store.close()

    asyncio.run(sweep_during_outage())
    assert _rows(database, "SELECT card_uuid FROM card") == {c.card_uuid for c in batch}
    entries = asyncio.run(_audit(database, tmp_path))
    assert verify_chain(entries).ok
    assert sorted(e.details["card"] for e in entries if e.kind == "card-scored") == [str(i) for i in range(7)]
