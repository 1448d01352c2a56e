"""One feedback call: check every item against the cards we issued, then record them all.

Each item becomes a FHIR Provenance targeting the card's RiskAssessment. A batch is all or
nothing: an unknown card, an override reason the card never offered, or an accepted suggestion
that was not on the card refuses the whole batch before anything is stored.
"""

from __future__ import annotations

from typing import Any

from fhir_mappings import build_provenance
from hooks import Service

from .errors import BadRequest, UnknownCard
from .schemas import FeedbackRequest
from .stores import FeedbackRecord, RecordStore

__all__ = ["record_feedback"]


async def record_feedback(service: Service, request: FeedbackRequest, store: RecordStore) -> dict[str, Any]:
    uuids = list(dict.fromkeys(item.card for item in request.feedback))
    cards = await store.get_cards(uuids)
    unknown = [u for u in uuids if u not in cards or cards[u].service_id != service.id]
    if unknown:
        raise UnknownCard(f"{len(unknown)} of {len(uuids)} cards were not issued by {service.id}; nothing was recorded")
    offered = {(r.system, r.code) for r in service.override_reasons}
    records = []
    for i, item in enumerate(request.feedback):
        reason = item.overrideReason.reason if item.overrideReason else None
        if reason is not None and (reason.system, reason.code) not in offered:
            raise BadRequest(f"feedback[{i}].overrideReason.reason is not one the card offered; nothing was recorded")
        accepted = [s.id for s in item.acceptedSuggestions or ()]
        if any(a not in cards[item.card].suggestion_uuids for a in accepted):
            raise BadRequest(f"feedback[{i}].acceptedSuggestions names a suggestion the card did not offer; nothing was recorded")
        provenance = build_provenance(
            card_uuid=item.card,
            outcome=item.outcome,
            outcome_timestamp=item.outcomeTimestamp,
            practitioner_pseudonym=cards[item.card].user_pseudonym,
            override_reason=reason.model_dump(exclude_none=True) if reason else None,
            user_comment=item.overrideReason.userComment if item.overrideReason else None,
            accepted_suggestions=accepted,
        )
        records.append(FeedbackRecord(item.card, provenance, item.outcomeTimestamp.timestamp()))
    results = await store.put_feedback(records)
    return {"results": [{"card": r.card_uuid, "status": status} for r, status in zip(records, results, strict=True)]}
