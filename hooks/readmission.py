"""The `readmission-risk` CDS service: at discharge, 30-day readmission risk with its reasons
and a suggested follow-up within 7 days.

Answers `encounter-discharge`, and `patient-view` when the context names an inpatient
`encounterId` (many EHRs do not send encounter-discharge yet); otherwise it has nothing to say.

No card from thin data (`READMISSION.minimum_data`): the index Encounter needs a `period.start`
(the length of stay) and at least one of its three highest-ranked diagnoses must be coded in a
system the diagnosis table maps to a group; otherwise no card, reason `insufficient-data`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from fhir_mappings import (
    DISCHARGE_COLUMNS,
    INPATIENT_CLASSES,
    DischargeRecord,
    discharge_to_table,
    string,
    subject_mismatch,
)
from models import Contribution

from .cards import RiskCardText, build_risk_card, format_percent
from .consent import CONSENT_KEY, CONSENT_TEMPLATE
from .drivers import ClinicalDriver, split_drivers
from .scoring import Score, card_from_table
from .service import (
    NON_ADHERENCE,
    NOT_APPLICABLE,
    STALE_DATA,
    MinimumData,
    NoCard,
    OverrideReason,
    ScoredCard,
    ScoringInput,
    Service,
)

__all__ = ["READMISSION", "follow_up_request", "readmission_card"]

SNOMED = "http://snomed.info/sct"
TOP_DRIVERS = 5
TOP_GAPS = 2
FOLLOW_UP_DAYS = 7
_BAND_WORDS = {"very-high": "very high", "high": "high", "moderate": "elevated", "low": "low"}


def _resources(value: Any, kind: str | None = None) -> list[dict[str, Any]]:
    """The resources of one prefetch key (of `kind`, when given)."""
    found = [] if value is None else value if isinstance(value, list) else [value]
    return [r for r in found if isinstance(r, dict) and (kind is None or r.get("resourceType") == kind)]


def follow_up_request(
    *, patient_id: str, encounter_id: str, now: datetime, probability: float, request_id: str
) -> dict[str, Any]:
    """A draft ServiceRequest for a follow-up visit within 7 days of discharge (valid R4)."""
    resource = {
        "resourceType": "ServiceRequest",
        "id": request_id,
        "status": "draft",
        "intent": "proposal",
        "priority": "routine",
        "code": {
            "coding": [{"system": SNOMED, "code": "390906007", "display": "Follow-up encounter"}],
            "text": "Follow-up visit after discharge",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "occurrencePeriod": {
            "start": now.isoformat(),
            "end": (now + timedelta(days=FOLLOW_UP_DAYS)).isoformat(),
        },
        "reasonCode": [{"text": f"Estimated 30-day readmission risk {format_percent(probability)}"}],
        "note": [{"text": "Proposed by the readmission-risk decision aid; review before ordering."}],
    }
    ServiceRequest.model_validate(resource)  # raises on anything that is not valid R4
    return resource


def _score(inp: ScoringInput) -> ScoredCard | NoCard | None:
    encounter_id = inp.context.get("encounterId")
    if not isinstance(encounter_id, str) or not encounter_id:
        return None  # patient-view without an encounter: nothing to say at discharge
    fetched = inp.fetched
    patient_id = str(inp.context["patientId"])
    candidates = [*_resources(fetched.get("encounter"), "Encounter")]
    candidates += _resources(fetched.get("encounters"), "Encounter")
    encounter = next((e for e in candidates if e.get("id") == encounter_id), None)
    if encounter is None:
        return None
    why = subject_mismatch(encounter, patient_id)
    if why is not None:
        return NoCard("not-applicable", {"skipped": {f"Encounter:{why}": 1}})  # not this patient's stay
    if string(encounter.get("class"), "code") not in INPATIENT_CLASSES:
        return None  # not a hospital stay
    period = encounter.get("period")
    if not (isinstance(period, Mapping) and period.get("start")):
        return NoCard(MINIMUM_DATA.reason, {"minimum": {"period_start": 0}})  # length of stay unknown
    patient = fetched.get("patient")
    record = DischargeRecord(
        patient_id=patient_id,
        patient=patient if isinstance(patient, dict) else None,
        encounter=encounter,
        encounters=_resources(fetched.get("encounters"), "Encounter"),
        conditions=_resources(fetched.get("conditions"), "Condition"),
        observations=_resources(fetched.get("labs"), "Observation"),
        medication_requests=_resources(fetched.get("medications"), "MedicationRequest"),
        procedures=_resources(fetched.get("procedures"), "Procedure"),
        medications=_resources(fetched.get("medications"), "Medication"),  # `_include`d with the requests
    )
    mapped = discharge_to_table(
        record, as_of=inp.now, pseudonymizer=inp.pseudonymizer, source=inp.source, profile=inp.profile
    )
    log: dict[str, Any] = {**mapped.counts, "skipped": mapped.skipped, "implausible": mapped.implausible}

    def card(score: Score) -> dict[str, Any]:
        suggestions = []
        if score.band != "low":
            request = follow_up_request(
                patient_id=patient_id,
                encounter_id=encounter_id,
                now=inp.now,
                probability=score.probability,
                request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"follow-up/{inp.card_uuid}")),
            )
            suggestions.append(
                {
                    "label": f"Arrange follow-up within {FOLLOW_UP_DAYS} days of discharge",
                    "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"suggestion/{inp.card_uuid}")),
                    "isRecommended": score.level != "below",
                    "actions": [
                        {
                            "type": "create",
                            "description": "Draft a follow-up visit request",
                            "resource": request,
                        }
                    ],
                }
            )
        drivers, gaps = split_drivers(score.drivers, TOP_DRIVERS, min_abs=0.01)
        return readmission_card(
            card_uuid=inp.card_uuid,
            probability=score.probability,
            band=score.band,
            level=score.level,
            band_validation=score.band_validation,
            threshold=score.model.threshold,
            model_label=score.model.manifest.title,
            model_version=score.model.version,
            drivers=drivers,
            gaps=gaps[:TOP_GAPS],
            all_contributions=score.explanation.contributions,
            base_value=score.explanation.base_value,
            suggestions=suggestions,
        )

    return card_from_table(
        inp,
        READMISSION,
        mapped.table,
        DISCHARGE_COLUMNS,
        pseudonym=mapped.pseudonym,
        icu_hour=None,
        log=log,
        card=card,
    )


def readmission_card(
    *,
    card_uuid: str,
    probability: float,
    band: str,
    threshold: float,
    level: str,
    band_validation: dict[str, Any] | None = None,
    model_label: str,
    model_version: str,
    drivers: Sequence[ClinicalDriver],
    all_contributions: Sequence[Contribution],
    base_value: float,
    gaps: Sequence[ClinicalDriver] = (),
    suggestions: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    pct = format_percent(probability)
    text = RiskCardText(
        summary=f"30-day readmission risk {pct}: {_BAND_WORDS.get(band, band)}",
        headline=(
            f"**30-day readmission risk: {pct}** ({_BAND_WORDS.get(band, band)}; "
            f"follow-up is suggested from {format_percent(threshold)})."
        ),
        footer=(
            "_Arrows show how each factor moves this patient's score from the model's average. "
            "Consider a follow-up visit within 7 days, medication reconciliation and discharge teaching._"
        ),
    )
    return build_risk_card(
        card_uuid=card_uuid,
        service=READMISSION,
        band=band,
        level=level,
        band_validation=band_validation,
        probability=probability,
        threshold=threshold,
        model_label=model_label,
        model_version=model_version,
        text=text,
        drivers=drivers,
        gaps=gaps,
        all_contributions=all_contributions,
        base_value=base_value,
        suggestions=suggestions,
    )


# What a readmission card needs besides the stay's start: one diagnosis the model can group.
MINIMUM_DATA = MinimumData(variables=("dx1", "dx2", "dx3"), count=1)

READMISSION = Service(
    id="readmission-risk",
    hooks=("encounter-discharge", "patient-view"),
    title="30-day readmission risk at discharge",
    description=(
        "Estimates the probability of readmission within 30 days of discharge for adults with diabetes from "
        "the stay (admission, length of stay, diagnoses, HbA1c and glucose, diabetes medication changes) and "
        "the past year's visits, explains it with SHAP and suggests follow-up within 7 days."
    ),
    prefetch={
        "patient": "Patient/{{context.patientId}}",
        "encounter": "Encounter/{{context.encounterId}}",
        "encounters": "Encounter?patient={{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}",
        "medications": "MedicationRequest?patient={{context.patientId}}",
        "labs": "Observation?patient={{context.patientId}}&category=laboratory",
        "procedures": "Procedure?patient={{context.patientId}}",
        CONSENT_KEY: CONSENT_TEMPLATE,
    },
    model_name="readmission",
    score=_score,
    usage_requirements=(
        "For inpatient stays of adults with diabetes. Needs `encounterId` in context; diagnoses coded in "
        "ICD-9-CM, ICD-10-CM or SNOMED CT, HbA1c/glucose in LOINC, diabetes drugs in RxNorm. No card without "
        "the stay's period.start and at least one of its top three diagnoses coded so that it maps."
    ),
    override_reasons=(
        NOT_APPLICABLE,
        OverrideReason(NON_ADHERENCE, "action-completed", "Follow-up already arranged"),
        OverrideReason(
            NON_ADHERENCE, "recipient-disagrees-evidence", "Disagree: risk does not fit the clinical picture"
        ),
        STALE_DATA,
    ),
    minimum_data=MINIMUM_DATA,
)
