"""One feedback call: check every item against the cards we issued, then record them all.

Each item becomes a FHIR Provenance targeting the card's RiskAssessment. A clinician's decision
is never thrown away for a detail: an override reason the card did not offer, or an accepted
suggestion that was not on it, is recorded as given and flagged (`reason-not-offered`,
`suggestion-not-offered`, in the Provenance and in the answer). A batch is refused as a whole,
before anything is stored, only for what cannot be recorded faithfully: a card we never issued
(404), an `outcomeTimestamp` further in the future than the allowed clock skew (it would
outrank the clinician's real later decision: the latest decision by timestamp wins, ties by
arrival), or a comment over the size limit (400).

The comment (`overrideReason.userComment`) is free text, where names and record numbers turn
up: by default only its presence and length are kept (`comments="omit"`); a site that opts in
(`CDS_FEEDBACK_COMMENTS=scrubbed`) keeps it scrubbed of the identities the hook call knew and of
identifier-shaped strings (docs/privacy.md). Each created or updated Provenance also becomes a
`feedback-recorded` entry of the audit chain, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from fhir_mappings import Pseudonymizer, build_provenance, scrub_free_text
from hooks import Service

from .errors import BadRequest, UnknownCard
from .schemas import FeedbackRequest
from .settings import Settings
from .stores import FeedbackRecord, RecordStore

__all__ = ["FeedbackRules", "record_feedback"]


@dataclass(frozen=True)
class FeedbackRules:
    max_future_s: float = 300.0
    comment_max_chars: int = 2_000
    comments: Literal["omit", "scrubbed"] = "omit"

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackRules:
        """The site's rules, the same for CDS Hooks feedback and the SMART app's."""
        return cls(
            max_future_s=settings.feedback_max_future_s,
            comment_max_chars=settings.feedback_comment_max_chars,
            comments=settings.feedback_comments,
        )


def kept_comment(
    comment: str | None,
    rules: FeedbackRules,
    identity_hashes: tuple[str, ...],
    pseudonymizer: Pseudonymizer | None,
) -> str | None:
    """What of a comment may be stored: nothing (omit), or its scrubbed text."""
    if not comment or rules.comments == "omit":
        return None
    known = frozenset(identity_hashes)
    token_hash = pseudonymizer.token_hash if pseudonymizer is not None else None
    scrubbed = scrub_free_text(comment, lambda word: token_hash is not None and token_hash(word) in known)
    return scrubbed or None


def _check(request: FeedbackRequest, now: datetime, rules: FeedbackRules) -> None:
    latest = now + timedelta(seconds=rules.max_future_s)
    for i, item in enumerate(request.feedback):
        if item.outcomeTimestamp > latest:
            raise BadRequest(
                f"feedback[{i}].outcomeTimestamp is in the future (beyond {rules.max_future_s:.0f} s of "
                "clock skew); nothing was recorded"
            )
        comment = item.overrideReason.userComment if item.overrideReason else None
        if comment is not None and len(comment) > rules.comment_max_chars:
            raise BadRequest(
                f"feedback[{i}].overrideReason.userComment is longer than {rules.comment_max_chars} "
                "characters; nothing was recorded"
            )


def _audited_reason(code: str | None, flags: list[str]) -> str | None:
    """A reason code we offered; for any other only that it was another (the Provenance keeps it)."""
    if code is None:
        return None
    return "not-offered" if "reason-not-offered" in flags else code


async def record_feedback(
    service: Service,
    request: FeedbackRequest,
    store: RecordStore,
    *,
    now: datetime,
    rules: FeedbackRules = FeedbackRules(),
    pseudonymizer: Pseudonymizer | None = None,
    decided_by: str | None = None,
) -> dict[str, Any]:
    """`decided_by`: the keyed pseudonym of who decided, when the caller knows it better than the
    hook call did (the SMART app's signed-in `fhirUser`); otherwise the hook's `userId`."""
    _check(request, now, rules)
    uuids = list(dict.fromkeys(item.card for item in request.feedback))
    cards = await store.get_cards(uuids)
    unknown = [u for u in uuids if u not in cards or cards[u].service_id != service.id]
    if unknown:
        raise UnknownCard(
            f"{len(unknown)} of {len(uuids)} cards were not issued by {service.id}; nothing was recorded"
        )
    offered = {(r.system, r.code) for r in service.override_reasons}
    records = []
    flagged: list[list[str]] = []
    for item in request.feedback:
        flags = []
        reason = item.overrideReason.reason if item.overrideReason else None
        if reason is not None and (reason.system, reason.code) not in offered:
            flags.append("reason-not-offered")
        accepted = [s.id for s in item.acceptedSuggestions or ()]
        if any(a not in cards[item.card].suggestion_uuids for a in accepted):
            flags.append("suggestion-not-offered")
        comment = item.overrideReason.userComment if item.overrideReason else None
        user = decided_by if decided_by is not None else cards[item.card].user_pseudonym
        provenance = build_provenance(
            card_uuid=item.card,
            outcome=item.outcome,
            outcome_timestamp=item.outcomeTimestamp,
            practitioner_pseudonym=user,
            override_reason=reason.model_dump(exclude_none=True) if reason else None,
            user_comment=kept_comment(comment, rules, cards[item.card].identity_hashes, pseudonymizer),
            accepted_suggestions=accepted,
            flags=flags,
            comment_length=len(comment) if comment else None,
        )
        audit = {
            "service": service.id,
            "card": item.card,
            "outcome": item.outcome,
            "reason": _audited_reason(reason.code if reason else None, flags),
            "accepted": len(accepted),
            "flags": flags,
            "user": user,
            "comment_chars": len(comment) if comment else 0,
        }
        records.append(FeedbackRecord(item.card, provenance, item.outcomeTimestamp.timestamp(), audit))
        flagged.append(flags)
    results = await store.put_feedback(records)
    return {
        "results": [
            {"card": r.card_uuid, "status": status, **({"flags": flags} if flags else {})}
            for r, status, flags in zip(records, results, flagged, strict=True)
        ]
    }
