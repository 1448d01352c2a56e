"""What the record stores keep, and the one interface every store implements.

Shared by the SQLite file, PostgreSQL and the card spool, so that the rows, the feedback
ordering rule and the JSON written are the same whichever store holds them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "GENESIS",
    "AuditEvent",
    "Erasure",
    "CardRecord",
    "MODEL_STATUSES",
    "ModelScore",
    "StatusChange",
    "VersionState",
    "FeedbackRecord",
    "RecordStore",
    "StoreHealth",
    "WriteResult",
    "audit_json",
    "card_from_row",
    "card_row",
    "entry_hash",
    "feedback_json",
    "feedback_outcome",
]

WriteResult = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class CardRecord:
    card_uuid: str
    service_id: str
    user_pseudonym: str | None
    risk_assessment: dict[str, Any]
    created: float  # epoch seconds
    suggestion_uuids: tuple[str, ...] = ()  # what the card offered: feedback may accept only these
    # Keyed hashes of the words that identified the call's patient and user (only when a site keeps
    # scrubbed comments: feedback on this card is scrubbed of them). Never the words themselves.
    identity_hashes: tuple[str, ...] = ()
    # The `card-scored` audit entry written with the card, in the same transaction (None: none).
    audit: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    card_uuid: str
    provenance: dict[str, Any]
    recorded: float  # epoch seconds of outcomeTimestamp
    # The `feedback-recorded` audit entry, written when this record is created or updated.
    audit: Mapping[str, Any] | None = None

    @property
    def provenance_id(self) -> str:
        return str(self.provenance["id"])


@dataclass(frozen=True)
class AuditEvent:
    seq: int  # strictly increasing in commit order
    at: float  # epoch seconds
    kind: str  # e.g. "model-activated"
    details: dict[str, Any]
    prev_hash: str | None = None  # the hash chain (docs/privacy.md): the previous entry's `hash`
    hash: str | None = None  # entry_hash(prev_hash, at, kind, details)


# A registry version's life: trained and registered, scored unseen beside the champion, answering
# for a share of patients, the champion, replaced. A version without a row is a candidate.
MODEL_STATUSES = ("candidate", "shadow", "canary", "active", "retired")


@dataclass(frozen=True)
class VersionState:
    """One row of `model_version`: the status of a registry version, shared by every server."""

    model: str
    version: str
    status: str  # one of MODEL_STATUSES
    share: float = 0.0  # canary: the share of patients it answers for
    updated_at: float = 0.0


@dataclass(frozen=True)
class StatusChange:
    """What `set_version_status` changed: the version's status before, and the versions it displaced
    (the former champion when a version becomes active; the former shadow or canary)."""

    previous_status: str
    displaced: tuple[str, ...] = ()
    audit_seq: int = 0


@dataclass(frozen=True)
class ModelScore:
    """One model's score of one hook call, kept beside the card (same card uuid): the champion's,
    a canary's or a shadow's. `patient`: the keyed pseudonym, so `forget` reaches these rows too."""

    card_uuid: str
    model: str
    version: str
    service_id: str
    role: str  # champion | canary | shadow
    probability: float
    band: str
    patient: str | None
    created: float

    def row(self) -> tuple[str, str, str, str, str, float, str, str | None, float]:
        """The values of a `model_score` row, in the column order both stores insert:
        card_uuid, version, model, service_id, role, probability, band, patient, created."""
        return (
            self.card_uuid,
            self.version,
            self.model,
            self.service_id,
            self.role,
            self.probability,
            self.band,
            self.patient,
            self.created,
        )


@dataclass(frozen=True)
class Erasure:
    """What `forget` or `purge` removed: counts only (the tombstone in the audit chain says the same)."""

    cards: int
    feedback: int
    seq: int  # the tombstone's audit entry


@dataclass(frozen=True)
class StoreHealth:
    """What metrics and readiness may read without touching the database."""

    backend: Literal["sqlite", "postgres"]
    degraded: bool = False  # PostgreSQL unreachable: cards go to the spool, feedback is refused
    spooled: int = 0  # cards waiting in this machine's spool, as last counted
    spooled_total: int = 0  # cards this process wrote to the spool
    drained_total: int = 0  # cards this process moved from the spool into PostgreSQL


class RecordStore(Protocol):
    async def put_card(self, record: CardRecord) -> None: ...
    async def put_cards(self, records: Sequence[CardRecord]) -> None: ...
    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]: ...
    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]: ...
    def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]: ...
    async def append_audit(self, kind: str, details: Mapping[str, Any]) -> int: ...
    async def forget(self, patient_pseudonyms: Sequence[str], tombstone: Mapping[str, Any]) -> Erasure: ...
    async def purge(self, before: float, tombstone: Mapping[str, Any]) -> Erasure: ...
    def iter_audit(self, after: int = 0) -> AsyncIterator[AuditEvent]: ...
    async def active_versions(self) -> dict[str, str]: ...
    async def set_active_version(self, model: str, version: str) -> str | None: ...
    async def version_states(self) -> list[VersionState]: ...
    async def set_version_status(
        self,
        model: str,
        version: str,
        status: str,
        *,
        share: float = 0.0,
        audit: Mapping[str, Any],
        expect: str | None = None,
    ) -> StatusChange | None: ...
    async def previous_active(self, model: str) -> str | None: ...
    async def put_model_scores(self, scores: Sequence[ModelScore]) -> None: ...
    async def model_scores(self, model: str, since: float = 0.0) -> list[ModelScore]: ...
    async def ping(self) -> bool: ...
    def health(self) -> StoreHealth: ...
    async def close(self) -> None: ...


CardRow = tuple[str, str, str | None, str, float, str, str]
CARD_COLUMNS = "card_uuid, service_id, user_pseudonym, resource, created, suggestions, identity_hashes"


def card_row(record: CardRecord) -> CardRow:
    """The columns `CARD_COLUMNS` as every table holds them."""
    return (
        record.card_uuid,
        record.service_id,
        record.user_pseudonym,
        json.dumps(record.risk_assessment),
        record.created,
        json.dumps(list(record.suggestion_uuids)),
        json.dumps(list(record.identity_hashes)),
    )


def card_from_row(row: Sequence[Any]) -> CardRecord:
    return CardRecord(
        row[0],
        row[1],
        row[2],
        json.loads(row[3]),
        float(row[4]),
        tuple(json.loads(row[5])),
        tuple(json.loads(row[6])),
    )


def feedback_json(record: FeedbackRecord) -> str:
    """Canonical text of a Provenance: an identical repeat is the same bytes."""
    return json.dumps(record.provenance, sort_keys=True)


def audit_json(details: Mapping[str, Any]) -> str:
    """Canonical and compact, so the hash chain hashes exactly what is stored."""
    return json.dumps(dict(details), sort_keys=True, separators=(",", ":"))


GENESIS = "0" * 64  # the `prev_hash` of the first entry


def entry_hash(prev_hash: str, at: float, kind: str, details: str) -> str:
    """SHA-256 over the previous entry's hash and this entry's content (`details`: audit_json text).
    Unkeyed on purpose: anyone holding an export can verify it; rewrites are caught by anchors."""
    return hashlib.sha256(f"{prev_hash}\x1e{at!r}\x1e{kind}\x1e{details}".encode()).hexdigest()


def feedback_outcome(stored: tuple[float, str] | None, recorded: float, text: str) -> WriteResult:
    """The ordering rule of both stores: the latest outcomeTimestamp wins; on a tie the later
    arrival wins unless it is an identical repeat; an older decision changes nothing."""
    if stored is None:
        return "created"
    if recorded > stored[0] or (recorded == stored[0] and text != stored[1]):
        return "updated"
    return "unchanged"
