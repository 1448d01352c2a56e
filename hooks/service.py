"""A CDS service as a declarative value: discovery fields, prefetch templates, and the pure
function that turns fetched resources into a scored card."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_mappings import GENERIC, FhirQuery, Pseudonymizer, VendorProfile
from models import RiskModel

__all__ = [
    "NON_ADHERENCE",
    "NOT_APPLICABLE",
    "STALE_DATA",
    "Fetched",
    "OverrideReason",
    "ScoredCard",
    "ScoringInput",
    "Service",
]

# HL7 non-adherence reason codes (the code system CDS Hooks 3.0 suggests for overrideReasons).
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"

# Per prefetch key: a resource (or None) for a read template, a list of resources for a search.
Fetched = Mapping[str, dict[str, Any] | list[dict[str, Any]] | None]


@dataclass(frozen=True, slots=True)
class OverrideReason:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


# Offered by every service; each service adds the reasons specific to its advice.
NOT_APPLICABLE = OverrideReason(NON_ADHERENCE, "cds-not-applicable", "Not applicable to this patient")
STALE_DATA = OverrideReason(NON_ADHERENCE, "cds-suboptimal-context", "Data shown is incomplete or out of date")


@dataclass(frozen=True)
class ScoringInput:
    context: Mapping[str, Any]
    fetched: Fetched
    model: RiskModel
    now: datetime
    pseudonymizer: Pseudonymizer
    card_uuid: str
    source: str  # the FHIR base the data came from (scopes pseudonyms)
    profile: VendorProfile = GENERIC  # the EHR's mapping profile (codes, ICU locations, statuses)


@dataclass(frozen=True)
class ScoredCard:
    card: dict[str, Any]  # the CDS Hooks card
    risk_assessment: dict[str, Any]  # FHIR RiskAssessment to record
    user_pseudonym: str | None
    probability: float
    log: dict[str, Any] = field(default_factory=dict)  # counts for the hook log; never PHI


@dataclass(frozen=True)
class Service:
    id: str
    hooks: tuple[str, ...]  # the same service may answer several hooks
    title: str
    description: str
    prefetch: Mapping[str, str]
    model_name: str
    score: Callable[[ScoringInput], ScoredCard | None]  # None: the service does not apply
    usage_requirements: str | None = None
    required_context: tuple[str, ...] = ("userId", "patientId")
    # Second-round reads needed once the first round is in (e.g. Location of an ICU bed).
    followups: Callable[[Mapping[str, Any], Fetched], dict[str, FhirQuery]] | None = None
    # Prefetch keys that are Observation searches by category (key -> category). When the EHR did
    # not prefetch them, the fallback asks for the categories the EHR's vendor profile names.
    observation_keys: Mapping[str, str] = field(default_factory=dict)
    override_reasons: tuple[OverrideReason, ...] = ()
    # risk band -> CDS Hooks card indicator
    indicators: Mapping[str, str] = field(default_factory=lambda: {"low": "info", "moderate": "warning", "high": "critical"})

    def discovery(self) -> list[dict[str, Any]]:
        """One discovery entry per hook (CDS Hooks lets one id appear under several hooks)."""
        entries = []
        for hook in self.hooks:
            entry: dict[str, Any] = {
                "hook": hook,
                "id": self.id,
                "title": self.title,
                "description": self.description,
                "prefetch": dict(self.prefetch),
            }
            if self.usage_requirements:
                entry["usageRequirements"] = self.usage_requirements
            entries.append(entry)
        return entries
