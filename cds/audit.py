"""The audit trail: what each entry says, checking the hash chain, and FHIR AuditEvent export.

Every scored card (`card-scored`) and every recorded feedback (`feedback-recorded`) is an entry
of the record store's `audit_event` table, alongside model activations and the tombstones of
`cds forget` and `cds purge`. Each entry's `hash` covers the previous entry's hash and its own
content (`stores.records.entry_hash`), so `verify_chain` finds the first entry that was edited,
deleted, inserted or moved; anchors (`stores.anchors`) catch a truncated tail. Entries hold no
identifier of a patient: card uuids we mint, pseudonyms, hashes, codes and numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_mappings.writeback import CANONICAL, PRACTITIONER_PSEUDONYM_SYSTEM

from .stores.anchors import Anchor
from .stores.records import GENESIS, AuditEvent, audit_json, entry_hash

__all__ = ["ChainReport", "audit_event_resource", "card_audit", "verify_chain"]

AUDIT_KIND_SYSTEM = f"{CANONICAL}/CodeSystem/audit-kind"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
CARD_ID_SYSTEM = f"{CANONICAL}/NamingSystem/card-uuid"


def card_audit(
    *,
    service_id: str,
    card_uuid: str,
    model_name: str,
    model_version: str,
    model_sha256: str,
    features_sha256: str | None,
    probability: float,
    band: str,
    issuer: str | None,
    user_pseudonym: str | None,
    consent: str | None = None,
) -> dict[str, Any]:
    """The details of a `card-scored` entry."""
    details: dict[str, Any] = {
        "service": service_id,
        "card": card_uuid,
        "model": model_name,
        "model_version": model_version,
        "model_sha256": model_sha256,
        "features_sha256": features_sha256,
        "probability": round(float(probability), 6),
        "band": band,
        "issuer": issuer,
        "user": user_pseudonym,
    }
    if consent:
        details["consent"] = consent
    return details


@dataclass
class ChainReport:
    ok: bool
    entries: int
    head: Anchor | None
    anchors: int
    problem: str | None = None  # edited, deleted, reordered, inserted, truncated, unchained
    seq: int | None = None  # the first entry found wrong (truncated: the anchor's seq)
    detail: str = ""
    kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "entries": self.entries,
            "anchors": self.anchors,
            "kinds": self.kinds,
        }
        if self.head is not None:
            out["head"] = {"seq": self.head.seq, "hash": self.head.hash}
        if not self.ok:
            out |= {"problem": self.problem, "seq": self.seq, "detail": self.detail}
        return out


def verify_chain(entries: Iterable[AuditEvent], anchors: Sequence[Anchor] = ()) -> ChainReport:
    """Recompute the chain in seq order; report the first entry that breaks it, else check that
    every anchor's (seq, hash) is still in the chain."""
    rows = list(entries)
    by_hash = {e.hash: i for i, e in enumerate(rows) if e.hash}
    kinds: dict[str, int] = {}
    prev, prev_seq = GENESIS, None

    def broken(problem: str, seq: int | None, detail: str) -> ChainReport:
        head = Anchor(rows[-1].seq, rows[-1].hash or "") if rows else None
        return ChainReport(False, len(rows), head, len(anchors), problem, seq, detail, kinds)

    for i, e in enumerate(rows):
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
        if not e.hash or not e.prev_hash:
            return broken("unchained", e.seq, "the entry has no hash")
        if entry_hash(e.prev_hash, e.at, e.kind, audit_json(e.details)) != e.hash:
            return broken("edited", e.seq, "the entry's content does not match its hash")
        if e.prev_hash != prev:
            j = by_hash.get(e.prev_hash)
            after = f"after seq {prev_seq}" if prev_seq is not None else "at the start"
            if j is not None and j > i:
                return broken(
                    "reordered",
                    e.seq,
                    f"it follows seq {rows[j].seq} in the chain, which comes later in the table",
                )
            if j is not None:
                return broken(
                    "inserted",
                    e.seq,
                    f"it follows seq {rows[j].seq}; the entries between were inserted or moved",
                )
            return broken("deleted", e.seq, f"the entry it follows is missing: deleted {after}")
        prev, prev_seq = e.hash, e.seq
    seqs = {e.seq: e.hash for e in rows}
    last = rows[-1].seq if rows else 0
    for anchor in sorted(anchors, key=lambda a: a.seq):
        if anchor.seq not in seqs:
            if anchor.seq > last:
                return broken(
                    "truncated",
                    anchor.seq,
                    f"anchored seq {anchor.seq} is past the last entry ({last}): the tail was removed",
                )
            return broken("deleted", anchor.seq, f"anchored seq {anchor.seq} is missing")
        if seqs[anchor.seq] != anchor.hash:
            return broken(
                "edited",
                anchor.seq,
                f"seq {anchor.seq} no longer has its anchored hash: the chain was rewritten",
            )
    head = Anchor(rows[-1].seq, rows[-1].hash or "") if rows else None
    return ChainReport(True, len(rows), head, len(anchors), kinds=kinds)


_ACTIONS = {"card-scored": "E", "feedback-recorded": "C", "patient-forgotten": "D", "records-purged": "D"}


def audit_event_resource(entry: AuditEvent, *, observer: str = "cds-ml") -> dict[str, Any]:
    """A FHIR R4 AuditEvent for one entry (plain dict; validated with fhir.resources in tests)."""
    d: Mapping[str, Any] = entry.details
    agents: list[dict[str, Any]] = []
    if d.get("issuer"):
        agents.append(
            {
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"system": "urn:ietf:rfc:3986", "value": str(d["issuer"])}},
                "requestor": True,
            }
        )
    if d.get("user"):
        agents.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "AUT",
                        }
                    ]
                },
                "who": {"identifier": {"system": PRACTITIONER_PSEUDONYM_SYSTEM, "value": str(d["user"])}},
                "requestor": not d.get("issuer"),
            }
        )
    if not agents:
        agents.append({"who": {"display": observer}, "requestor": True})
    details = [
        {"type": k, "valueString": v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))}
        for k, v in sorted(d.items())
        if v is not None and k not in ("issuer", "user")
    ]
    details += [
        {"type": "prev_hash", "valueString": entry.prev_hash or ""},
        {"type": "hash", "valueString": entry.hash or ""},
    ]
    entity: dict[str, Any] = {
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        "detail": details,
    }
    if isinstance(d.get("card"), str):
        entity["what"] = {"identifier": {"system": CARD_ID_SYSTEM, "value": d["card"]}}
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{entry.seq}",
        "type": {"system": AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": AUDIT_KIND_SYSTEM, "code": entry.kind}],
        "action": _ACTIONS.get(entry.kind, "E"),
        "recorded": datetime.fromtimestamp(entry.at, UTC).isoformat(),
        "outcome": "0",
        "agent": agents,
        "source": {
            "observer": {"display": observer},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
        "entity": [entity],
    }
    return resource
