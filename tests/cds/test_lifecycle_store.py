"""Version statuses and challenger scores in both record stores (SQLite and PostgreSQL): one
shadow and one canary per model, the champion retired when another becomes active, compare-and-set
for the guardrails' rollback, every change an audit entry with its actor and reason, and `forget`
reaching the challenger scores of a patient."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cds.audit import verify_chain
from cds.lifecycle import CounterSnapshot, GuardrailPolicy, breaches, in_canary
from cds.stores import ModelScore, PostgresStore, RecordStore, SQLiteStore

Opener = Callable[[], Awaitable[RecordStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":

        async def sqlite() -> RecordStore:
            return SQLiteStore(tmp_path / "cds.sqlite3")

        return sqlite
    url = request.getfixturevalue("postgres_url")

    async def postgres() -> RecordStore:
        return await PostgresStore.open(url, spool_path=tmp_path / "spool.sqlite3")

    return postgres


WHO = {"actor": "alice", "reason": "test"}


def test_statuses_move_through_the_lifecycle_and_each_change_is_audited(open_store: Opener) -> None:
    async def scenario() -> None:
        store = await open_store()
        try:
            assert await store.set_active_version("sepsis", "2") is None  # the legacy path keeps working
            shadow = await store.set_version_status("sepsis", "3", "shadow", audit=WHO)
            assert shadow is not None and shadow.previous_status == "candidate" and shadow.displaced == ()
            # A second shadow displaces the first (one per model).
            second = await store.set_version_status("sepsis", "4", "shadow", audit=WHO)
            assert second is not None and second.displaced == ("3",)
            canary = await store.set_version_status("sepsis", "3", "canary", share=0.2, audit=WHO)
            assert canary is not None and canary.previous_status == "candidate"
            states = {(s.version, s.status, s.share) for s in await store.version_states()}
            assert states == {("2", "active", 0.0), ("3", "canary", 0.2), ("4", "shadow", 0.0)}

            # Compare-and-set: a rollback expecting a canary that is not one writes nothing.
            assert (
                await store.set_version_status("sepsis", "4", "retired", audit=WHO, expect="canary") is None
            )
            promoted = await store.set_version_status("sepsis", "3", "active", audit=WHO)
            assert promoted is not None and promoted.displaced == ("2",)
            assert await store.active_versions() == {"sepsis": "3"}
            assert await store.previous_active("sepsis") == "2"
            states = {(s.version, s.status) for s in await store.version_states()}
            assert states == {("2", "retired"), ("3", "active"), ("4", "shadow")}

            entries = [e async for e in store.iter_audit()]
            status = [e.details for e in entries if e.kind == "model-status"]
            assert [(d["version"], d["status"], d["previous_status"]) for d in status] == [
                ("3", "shadow", "candidate"),
                ("4", "shadow", "candidate"),
                ("3", "canary", "candidate"),
                ("3", "active", "canary"),
            ]
            assert all(d["actor"] == "alice" and d["reason"] == "test" for d in status)
            assert status[2]["share"] == 0.2
            assert verify_chain(entries).ok
        finally:
            await store.close()

    asyncio.run(scenario())


def test_challenger_scores_round_trip_and_forget_removes_them(open_store: Opener) -> None:
    async def scenario() -> None:
        store = await open_store()
        try:
            rows = [
                ModelScore("c-1", "sepsis", "2", "sepsis-risk", "champion", 0.01, "low", "pa-aaa", 100.0),
                ModelScore("c-1", "sepsis", "3", "sepsis-risk", "shadow", 0.02, "moderate", "pa-aaa", 100.0),
                ModelScore("c-2", "sepsis", "2", "sepsis-risk", "champion", 0.5, "high", "pa-bbb", 200.0),
            ]
            await store.put_model_scores(rows)
            await store.put_model_scores(rows[:1])  # a repeat is kept once
            assert await store.model_scores("sepsis") == rows
            assert await store.model_scores("sepsis", since=150.0) == rows[2:]
            assert await store.model_scores("readmission") == []
            # forget finds cards by patient: give pa-aaa's card a record, then forget the patient.
            from cds.stores import CardRecord

            ra = {
                "resourceType": "RiskAssessment",
                "id": "c-1",
                "subject": {"identifier": {"value": "pa-aaa"}},
            }
            await store.put_card(CardRecord("c-1", "sepsis-risk", None, ra, 100.0))
            erased = await store.forget(["pa-aaa"], {"by": "test"})
            assert erased.cards == 1
            assert [r.card_uuid for r in await store.model_scores("sepsis")] == ["c-2"]
        finally:
            await store.close()

    asyncio.run(scenario())


def test_canary_assignment_is_sticky_monotone_and_near_its_share() -> None:
    patients = [f"pa-{i:04d}" for i in range(4000)]
    at10 = {p for p in patients if in_canary("sepsis", "3", p, 0.10)}
    at25 = {p for p in patients if in_canary("sepsis", "3", p, 0.25)}
    assert at10 <= at25  # a patient in the canary at 10 % stays in it at 25 %
    assert 300 < len(at10) < 500 and 850 < len(at25) < 1150
    assert at10 == {p for p in patients if in_canary("sepsis", "3", p, 0.10)}  # sticky
    assert at10 != {p for p in patients if in_canary("sepsis", "4", p, 0.10)}  # a new canary, a new draw


def test_guardrails_judge_only_with_enough_calls_and_name_each_breach() -> None:
    policy = GuardrailPolicy(min_calls=10, min_feedback=5)
    champion = CounterSnapshot(calls=100, alerts=10, patient_days=50, p99_ms=20.0, feedback=10, overrides=2)
    quiet = CounterSnapshot(calls=9, errors=9, alerts=9, patient_days=1, p99_ms=900.0)
    assert breaches(champion, quiet, policy) == []  # too few calls to judge
    fine = CounterSnapshot(
        calls=40, errors=1, alerts=5, patient_days=20, p99_ms=30.0, feedback=6, overrides=1
    )
    assert breaches(champion, fine, policy) == []
    bad = CounterSnapshot(
        calls=40, errors=4, alerts=30, patient_days=20, p99_ms=90.0, feedback=6, overrides=5
    )
    found = breaches(champion, bad, policy)
    assert [f.split()[0] for f in found] == ["error-rate", "latency-p99", "alert-rate", "override-rate"]
