"""Patient consent (FHIR R4 `Consent`), honoured per purpose: decision support and model training.

Read from the `consent` prefetch key (`CONSENT_TEMPLATE`: the patient's active Consents), or
fetched from the EHR when it was not prefetched. Pure: `consent_decision` reads the resources;
the pipeline acts on it (no score when decision support is refused; a record kept out of
training exports when training use is refused). The codes honoured are listed in
docs/privacy.md:

- a `deny` provision whose `purpose` is one of `DECISION_SUPPORT` refuses decision support;
  one whose purpose is one of `TRAINING` refuses training use;
- a `deny` provision with no purpose refuses both (under a Consent whose `scope` is `research`:
  training only), unless a nested `permit` names the purpose;
- only Consents with status `active`, for this patient, inside `provision.period` when given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_mappings import parse_datetime, reference_id
from fhir_mappings.writeback import CANONICAL

__all__ = [
    "CONSENT_KEY",
    "CONSENT_PURPOSE_SYSTEM",
    "CONSENT_TEMPLATE",
    "DECISION_SUPPORT",
    "TRAINING",
    "ConsentDecision",
    "consent_decision",
]

CONSENT_KEY = "consent"
CONSENT_TEMPLATE = "Consent?patient={{context.patientId}}&status=active"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_PURPOSE_SYSTEM = f"{CANONICAL}/CodeSystem/consent-purpose"

DECISION_SUPPORT = frozenset({(ACT_REASON, "TREAT"), (CONSENT_PURPOSE_SYSTEM, "decision-support")})
TRAINING = frozenset(
    {
        (ACT_REASON, "HRESCH"),  # healthcare research
        (ACT_REASON, "CLINTRCH"),  # clinical trial research
        (ACT_REASON, "DSRCH"),  # disease-specific healthcare research
        (ACT_REASON, "SYSDEV"),  # system development
        (CONSENT_PURPOSE_SYSTEM, "model-training"),
    }
)


@dataclass(frozen=True)
class ConsentDecision:
    decision_support: bool = True
    training: bool = True
    consents: int = 0  # active Consents of this patient that were read

    @property
    def code(self) -> str | None:
        """For logs and the audit trail."""
        if not self.decision_support:
            return "decision-support-refused"
        if not self.training:
            return "training-refused"
        return None


def _codings(value: Any) -> set[tuple[str, str]]:
    items = value if isinstance(value, list) else []
    return {(str(c.get("system", "")), str(c.get("code", ""))) for c in items if isinstance(c, Mapping)}


def _scope_codes(consent: Mapping[str, Any]) -> set[str]:
    scope = consent.get("scope")
    codings = scope.get("coding") if isinstance(scope, Mapping) else None
    return {code for _, code in _codings(codings)}


def _denied(provision: Any, purposes: frozenset[tuple[str, str]], blanket: bool) -> bool | None:
    """Whether `provision` denies use for `purposes` (None: it does not speak to them). A nested
    provision that names one of the purposes overrides its parent."""
    if not isinstance(provision, Mapping):
        return None
    named = _codings(provision.get("purpose"))
    kind = provision.get("type")
    result = None
    if kind in ("deny", "permit") and ((named & purposes) or (not named and blanket)):
        result = kind == "deny"
    for nested in provision.get("provision") or ():
        inner = _denied(nested, purposes, blanket=False)
        if inner is not None and isinstance(nested, Mapping) and _codings(nested.get("purpose")) & purposes:
            result = inner
    return result


def _in_period(provision: Any, now: datetime) -> bool:
    period = provision.get("period") if isinstance(provision, Mapping) else None
    if not isinstance(period, Mapping):
        return True
    try:
        if period.get("start") and parse_datetime(period["start"], "period.start") > now:
            return False
        if period.get("end") and parse_datetime(period["end"], "period.end") < now:
            return False
    except Exception:  # an unreadable period: the Consent is honoured as if always in force
        return True
    return True


def consent_decision(resources: Iterable[Any] | None, patient_id: str, now: datetime) -> ConsentDecision:
    """The uses this patient's active Consents refuse (any one refusal is enough)."""
    support, training, count = True, True, 0
    for consent in resources or ():
        if not isinstance(consent, Mapping) or consent.get("resourceType") != "Consent":
            continue
        if consent.get("status") != "active" or reference_id(consent.get("patient"), "Patient") != patient_id:
            continue
        provision = consent.get("provision")
        if not _in_period(provision, now):
            continue
        count += 1
        research_only = "research" in _scope_codes(consent)
        if _denied(provision, DECISION_SUPPORT, blanket=not research_only):
            support = False
        if _denied(provision, TRAINING, blanket=True):
            training = False
    return ConsentDecision(support, training, count)
