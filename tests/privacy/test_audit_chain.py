"""The audit hash chain, in the real database files: `cds audit verify` catches an edited, deleted,
reordered or truncated entry and a rewritten chain; two processes writing at once keep one chain;
`cds audit export` writes valid FHIR R4 AuditEvents; a version-2 store is chained when upgraded."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from cds import CardRecord, FeedbackRecord, PostgresStore, RecordStore, SQLiteStore
from cds.audit import audit_event_resource, verify_chain
from cds.stores import AnchorLog, read_anchors
from cds.stores.records import entry_hash
from fhir_mappings import build_provenance
from testkit.helpers import new_id


@dataclass
class Db:
    name: str
    open: Callable[..., Any]  # (anchors) -> awaitable store
    tamper: Callable[[list[str]], None]  # statements run with the append-only triggers out of the way
    anchors: Path


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    anchors = tmp_path / "anchors.jsonl"
    if request.param == "sqlite":
        path = tmp_path / "cds.sqlite3"

        async def open_sqlite(log: AnchorLog | None = None) -> RecordStore:
            return SQLiteStore(path, anchors=log)

        def tamper_sqlite(statements: list[str]) -> None:
            with sqlite3.connect(path) as conn:  # what anyone with the file can do
                conn.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
                conn.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
                for statement in statements:
                    conn.execute(statement)

        return Db("sqlite", open_sqlite, tamper_sqlite, anchors)
    url = request.getfixturevalue("postgres_url")

    async def open_postgres(log: AnchorLog | None = None) -> RecordStore:
        return await PostgresStore.open(url, spool_path=tmp_path / "spool.sqlite3", anchors=log)

    def tamper_postgres(statements: list[str]) -> None:
        with psycopg.connect(url, autocommit=True) as conn:  # a database owner
            conn.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
            for statement in statements:
                conn.execute(statement)  # type: ignore[call-overload]

    return Db("postgres", open_postgres, tamper_postgres, anchors)


def _card(uuid: str) -> CardRecord:
    ra = {"resourceType": "RiskAssessment", "id": uuid, "status": "final"}
    audit = {
        "service": "sepsis-risk",
        "card": uuid,
        "probability": 0.42,
        "band": "moderate",
        "model_version": "2",
    }
    return CardRecord(uuid, "sepsis-risk", "pr-abc", ra, 1.0, (), (), audit)


def _feedback(uuid: str) -> FeedbackRecord:
    from datetime import UTC, datetime

    when = datetime(2026, 11, 20, 10, tzinfo=UTC)
    prov = build_provenance(
        card_uuid=uuid,
        outcome="accepted",
        outcome_timestamp=when,
        practitioner_pseudonym="pr-abc",
        override_reason=None,
        user_comment=None,
    )
    return FeedbackRecord(uuid, prov, when.timestamp(), {"card": uuid, "outcome": "accepted", "reason": None})


async def _fill(db: Db, cards: int = 4) -> None:
    """cards x (card-scored + feedback-recorded) + one model activation; anchored every 3 and at close."""
    store = await db.open(AnchorLog(db.anchors, every=3))
    for _ in range(cards):
        uuid = new_id()
        await store.put_card(_card(uuid))
        await store.put_feedback([_feedback(uuid)])
    await store.set_active_version("sepsis", "2")
    await store.close()


def _verify(db: Db, anchors: bool = True) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        store = await db.open()
        try:
            entries = [e async for e in store.iter_audit()]
        finally:
            await store.close()
        return verify_chain(entries, read_anchors(db.anchors) if anchors else []).as_dict()

    return asyncio.run(run())


def _seqs(db: Db) -> list[int]:
    async def run() -> list[int]:
        store = await db.open()
        try:
            return [e.seq async for e in store.iter_audit()]
        finally:
            await store.close()

    return asyncio.run(run())


def _swap(a: int, b: int) -> list[str]:
    """Exchange the contents of two entries (their seq stays): the entries trade places."""
    cols = ("at", "kind", "details", "prev_hash", "hash")
    return [
        f"CREATE TEMP TABLE keep AS SELECT * FROM audit_event WHERE seq IN ({a}, {b})",
        *[
            f"UPDATE audit_event SET {c} = (SELECT k.{c} FROM keep k WHERE k.seq = {b}) WHERE seq = {a}"
            for c in cols
        ],
        *[
            f"UPDATE audit_event SET {c} = (SELECT k.{c} FROM keep k WHERE k.seq = {a}) WHERE seq = {b}"
            for c in cols
        ],
    ]


def test_an_untouched_chain_verifies_and_is_anchored(db: Db) -> None:
    asyncio.run(_fill(db))
    report = _verify(db)
    assert report["ok"] and report["entries"] == 9
    assert report["kinds"] == {"card-scored": 4, "feedback-recorded": 4, "model-activated": 1}
    anchors = read_anchors(db.anchors)
    assert (
        len(anchors) >= 3
        and anchors[-1].seq == report["head"]["seq"]
        and anchors[-1].hash == report["head"]["hash"]
    )


@pytest.mark.parametrize(
    ("case", "problem", "at"),
    [
        ("edited", "edited", 3),
        ("deleted", "deleted", 4),
        ("reordered", "reordered", 3),
        ("truncated", "truncated", 9),
        ("rewritten", "edited", 6),
    ],
)
def test_verify_catches_each_tampering(db: Db, case: str, problem: str, at: int) -> None:
    asyncio.run(_fill(db))
    seqs = _seqs(db)
    assert len(seqs) == 9
    s = dict(enumerate(seqs, start=1))  # position -> seq (PostgreSQL identities need not start at 1)
    if case == "edited":
        db.tamper([f"UPDATE audit_event SET details = replace(details, '0.42', '0.02') WHERE seq = {s[3]}"])
    elif case == "deleted":
        db.tamper([f"DELETE FROM audit_event WHERE seq = {s[3]}"])
    elif case == "reordered":
        db.tamper(_swap(s[3], s[4]))
    elif case == "truncated":
        db.tamper([f"DELETE FROM audit_event WHERE seq >= {s[8]}"])
        assert _verify(db, anchors=False)["ok"]  # a shorter chain verifies link by link: the anchors catch it
    elif case == "rewritten":  # edit an entry and recompute every later hash: only the anchors know
        asyncio.run(_rewrite_from(db, s[3]))
        assert _verify(db, anchors=False)["ok"]
    report = _verify(db)
    assert not report["ok"]
    assert report["problem"] == problem, report
    expected = {"edited": s[3], "deleted": s[4], "reordered": s[3], "truncated": s[9], "rewritten": None}[
        case
    ]
    if expected is not None:
        assert report["seq"] == expected, report
    else:
        assert report["seq"] in {a.seq for a in read_anchors(db.anchors)} and report["seq"] >= s[3]


async def _rewrite_from(db: Db, first: int) -> None:
    store = await db.open()
    entries = [e async for e in store.iter_audit()]
    await store.close()
    from cds.stores.records import audit_json

    prev, statements = None, []
    for e in entries:
        details = {**e.details, "probability": 0.01} if e.seq == first else e.details
        if e.seq < first:
            prev = e.hash
            continue
        text = audit_json(details).replace("'", "''")
        digest = entry_hash(prev or "0" * 64, e.at, e.kind, audit_json(details))
        statements.append(
            f"UPDATE audit_event SET details = '{text}', prev_hash = '{prev}', hash = '{digest}' WHERE seq = "
            f"{e.seq}"
        )
        prev = digest
    db.tamper(statements)


def test_cds_audit_verify_and_export_on_the_real_file(tmp_path: Path) -> None:
    var = tmp_path / "var"
    store_path = var / "cds.sqlite3"
    anchors = var / "audit-anchors.jsonl"
    d = Db("sqlite", lambda log=None: _opened(store_path, log), lambda s: None, anchors)
    asyncio.run(_fill(d))
    env = {**os.environ, "CDS_VAR_DIR": str(var), "CDS_PSEUDONYM_KEY": "test-key-0123456789abcdef"}
    ok = subprocess.run(
        [sys.executable, "-m", "cds.cli", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True

    out = tmp_path / "AuditEvent.ndjson"
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "audit", "export", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == 9
    for event in events:
        FhirAuditEvent.model_validate(event)
    scored = [e for e in events if e["subtype"][0]["code"] == "card-scored"]
    assert len(scored) == 4 and all(e["entity"][0]["what"]["identifier"]["value"] for e in scored)

    with sqlite3.connect(store_path) as conn:
        conn.execute("DROP TRIGGER audit_event_no_delete")
        conn.execute("DELETE FROM audit_event WHERE seq = 2")
    broken = subprocess.run(
        [sys.executable, "-m", "cds.cli", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert broken.returncode == 1
    assert json.loads(broken.stdout) | {"detail": ""} == json.loads(broken.stdout) | {
        "problem": "deleted",
        "seq": 3,
        "detail": "",
    }


async def _opened(path: Path, log: AnchorLog | None) -> RecordStore:
    return SQLiteStore(path, anchors=log)


def _writer(kind: str, target: str, n: int) -> None:
    """One worker process: n cards, each with its audit entry."""

    async def run() -> None:
        store: RecordStore = (
            SQLiteStore(target)
            if kind == "sqlite"
            else await PostgresStore.open(target, spool_path=Path(os.environ["SPOOL"]))
        )
        for _ in range(n):
            await store.put_card(_card(new_id()))
        await store.close()

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_writing_at_once_keep_one_chain(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "sqlite":
        target = str(tmp_path / "cds.sqlite3")
        SQLiteStore(target)  # migrated before the race
    else:
        target = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("SPOOL", str(tmp_path / "spool.sqlite3"))  # the workers' (spawned) environment
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(kind, target, 60)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0

    async def entries() -> list[Any]:
        store: RecordStore = (
            SQLiteStore(target)
            if kind == "sqlite"
            else await PostgresStore.open(target, spool_path=tmp_path / "spool2.sqlite3")
        )
        try:
            return [e async for e in store.iter_audit()]
        finally:
            await store.close()

    found = asyncio.run(entries())
    assert len(found) == 120
    assert verify_chain(found).ok
    assert len({e.details["card"] for e in found}) == 120


def test_a_version_2_store_is_chained_when_upgraded(tmp_path: Path) -> None:
    from cds.stores.migrations import SQLITE_MIGRATIONS, migrate_sqlite

    path = tmp_path / "cds.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate_sqlite(conn, SQLITE_MIGRATIONS[:2])
    for i in range(3):
        conn.execute(
            "INSERT INTO audit_event (at, kind, details) VALUES (?, 'model-activated', ?)",
            (1.7e9 + i, json.dumps({"n": i})),
        )
    conn.close()

    async def run() -> list[Any]:
        store = SQLiteStore(path)
        await store.append_audit("after-upgrade", {})
        entries = [e async for e in store.iter_audit()]
        await store.close()
        return entries

    entries = asyncio.run(run())
    assert [e.kind for e in entries] == ["model-activated"] * 3 + ["after-upgrade"]
    assert verify_chain(entries).ok
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_event SET kind = 'x'")
    FhirAuditEvent.model_validate(audit_event_resource(entries[0]))


def _patient_card(uuid: str, patient: str, created: float) -> CardRecord:
    ra = {
        "resourceType": "RiskAssessment",
        "id": uuid,
        "status": "final",
        "subject": {"identifier": {"value": patient}},
    }
    return CardRecord(uuid, "sepsis-risk", "pr-abc", ra, created, (), (), {"card": uuid})


def test_forget_and_purge_in_both_stores_leave_a_verifying_chain(db: Db) -> None:
    async def run() -> tuple[Any, Any, list[str], list[Any]]:
        store = await db.open()
        uuids = [new_id() for _ in range(4)]
        for uuid, patient, created in zip(
            uuids, ["pa-gone", "pa-gone", "pa-stays", "pa-old"], [5e9, 5e9, 5e9, 1.0], strict=True
        ):
            await store.put_card(_patient_card(uuid, patient, created))
            await store.put_feedback([_feedback(uuid)])
        forgotten = await store.forget(["pa-gone", "pa-unknown"], {"request": "r-1"})
        purged = await store.purge(2.0, {"retention_days": 30})
        left = list(await store.get_cards(uuids))
        entries = [e async for e in store.iter_audit()]
        await store.close()
        return forgotten, purged, left, entries

    forgotten, purged, left, entries = asyncio.run(run())
    assert (forgotten.cards, forgotten.feedback) == (2, 2) and (purged.cards, purged.feedback) == (1, 1)
    assert len(left) == 1
    assert verify_chain(entries).ok
    tombstones = [e.details for e in entries if e.kind in ("patient-forgotten", "records-purged")]
    assert tombstones == [
        {"request": "r-1", "cards": 2, "feedback": 2},
        {"retention_days": 30, "before": 2.0, "cards": 1, "feedback": 1},
    ]
