"""Durable records: each scored card (a RiskAssessment), each feedback (a Provenance), the audit
events and the served model versions.

Two implementations of one interface (`RecordStore`): `SQLiteStore`, the embedded default (a
file, safe for several processes on one machine), and `PostgresStore` when `CDS_DATABASE_URL` is
set (every worker on every machine), which keeps cards answered during a database outage in a
local `CardSpool` until they are in PostgreSQL. Feedback for a card is kept once: the decision
with the latest outcomeTimestamp wins, on a tie the later arrival unless it is an identical
repeat, and a batch is written all or nothing. Only de-identified resources are stored. See
docs/stores.md.
"""

from __future__ import annotations

from .anchors import Anchor, AnchorLog, read_anchors
from .factory import open_store
from .migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, Migration
from .postgres import PostgresStore
from .records import (
    MODEL_STATUSES,
    AuditEvent,
    CardRecord,
    Erasure,
    FeedbackRecord,
    ModelScore,
    RecordStore,
    StatusChange,
    StoreHealth,
    VersionState,
    WriteResult,
)
from .spool import CardSpool
from .sqlite import SQLiteStore

__all__ = [
    "Anchor",
    "AnchorLog",
    "AuditEvent",
    "CardRecord",
    "CardSpool",
    "Erasure",
    "FeedbackRecord",
    "MODEL_STATUSES",
    "Migration",
    "ModelScore",
    "POSTGRES_MIGRATIONS",
    "PostgresStore",
    "RecordStore",
    "SQLITE_MIGRATIONS",
    "SQLiteStore",
    "StatusChange",
    "StoreHealth",
    "VersionState",
    "WriteResult",
    "open_store",
    "read_anchors",
]
