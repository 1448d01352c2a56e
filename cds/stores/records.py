"""What the record stores keep, and the one interface every store implements.

Shared by the SQLite file, PostgreSQL and the card spool, so that the rows, the feedback
ordering rule and the JSON written are the same whichever store holds them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "AuditEvent",
    "CardRecord",
    "FeedbackRecord",
    "RecordStore",
    "StoreHealth",
    "WriteResult",
    "audit_json",
    "card_from_row",
    "card_row",
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


@dataclass(frozen=True)
class FeedbackRecord:
    card_uuid: str
    provenance: dict[str, Any]
    recorded: float  # epoch seconds of outcomeTimestamp

    @property
    def provenance_id(self) -> str:
        return str(self.provenance["id"])


@dataclass(frozen=True)
class AuditEvent:
    seq: int  # strictly increasing in commit order
    at: float  # epoch seconds
    kind: str  # e.g. "model-activated"
    details: dict[str, Any]


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
    async def get_cards(self, card_uuids: Sequence[str]) -> dict[str, CardRecord]: ...
    async def put_feedback(self, records: Sequence[FeedbackRecord]) -> list[WriteResult]: ...
    def iter_resources(self, resource_type: str) -> AsyncIterator[dict[str, Any]]: ...
    async def append_audit(self, kind: str, details: Mapping[str, Any]) -> int: ...
    def iter_audit(self, after: int = 0) -> AsyncIterator[AuditEvent]: ...
    async def active_versions(self) -> dict[str, str]: ...
    async def set_active_version(self, model: str, version: str) -> str | None: ...
    async def ping(self) -> bool: ...
    def health(self) -> StoreHealth: ...
    async def close(self) -> None: ...


CardRow = tuple[str, str, str | None, str, float, str]


def card_row(record: CardRecord) -> CardRow:
    """(card_uuid, service_id, user_pseudonym, resource, created, suggestions) as every table holds them."""
    return (
        record.card_uuid,
        record.service_id,
        record.user_pseudonym,
        json.dumps(record.risk_assessment),
        record.created,
        json.dumps(list(record.suggestion_uuids)),
    )


def card_from_row(row: Sequence[Any]) -> CardRecord:
    return CardRecord(row[0], row[1], row[2], json.loads(row[3]), float(row[4]), tuple(json.loads(row[5])))


def feedback_json(record: FeedbackRecord) -> str:
    """Canonical text of a Provenance: an identical repeat is the same bytes."""
    return json.dumps(record.provenance, sort_keys=True)


def audit_json(details: Mapping[str, Any]) -> str:
    """Canonical and compact, so a later hash chain can hash exactly what is stored."""
    return json.dumps(dict(details), sort_keys=True, separators=(",", ":"))


def feedback_outcome(stored: tuple[float, str] | None, recorded: float, text: str) -> WriteResult:
    """The ordering rule of both stores: the latest outcomeTimestamp wins; on a tie the later
    arrival wins unless it is an identical repeat; an older decision changes nothing."""
    if stored is None:
        return "created"
    if recorded > stored[0] or (recorded == stored[0] and text != stored[1]):
        return "updated"
    return "unchanged"
