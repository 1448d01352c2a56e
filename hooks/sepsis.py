"""The `sepsis-risk` CDS service: patient-view, ICU vital signs and labs, XGBoost + SHAP card.

No card from thin data (`SEPSIS.minimum_data`): at least 3 usable vital-sign values of at least 2
different vital signs in the last 6 ICU hours; below that the answer is no card with reason
`insufficient-data` (docs/mapping.md measures how often that happens on set A: rarely, and mostly
in the first ICU hours, before anything was measured)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fhir_mappings import (
    CANONICAL_COLUMNS,
    VITAL_VARIABLES,
    FhirQuery,
    MappedStay,
    PatientRecord,
    Pseudonymizer,
    StayError,
    VendorProfile,
    is_fhir_id,
    reference_id,
    select_encounter,
    to_canonical,
)
from models import TRAINED_MAX_ICU_HOURS

from .cards import Driver, RiskCardText, build_risk_card, format_percent
from .consent import CONSENT_KEY, CONSENT_TEMPLATE
from .drivers import ClinicalDriver, split_drivers
from .scoring import Score, card_from_table
from .service import (
    NON_ADHERENCE,
    NOT_APPLICABLE,
    STALE_DATA,
    Fetched,
    MinimumData,
    NoCard,
    OverrideReason,
    ScoredCard,
    ScoringInput,
    Service,
)

__all__ = ["SEPSIS", "card_drivers", "sepsis_bundle_suggestion", "sepsis_card", "sepsis_stay"]

TOP_DRIVERS = 5
TOP_GAPS = 3
NOT_APPLICABLE_REASON = "not-applicable"
_BAND_WORDS = {
    "very-high": "well above alert threshold",
    "high": "above alert threshold",
    "moderate": "elevated",
    "low": "below alert threshold",
}
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
# The laboratory part of the Surviving Sepsis Campaign hour-1 bundle: lactate, blood cultures
# before antibiotics. Antibiotics and fluids stay the clinician's order: they need a drug and dose.
_BUNDLE_ORDERS = (
    ("2524-7", "Lactate [Moles/volume] in Serum or Plasma", "Order lactate (stat)", None),
    (
        "600-7",
        "Bacteria identified in Blood by Culture",
        "Order blood cultures (stat, before antibiotics)",
        "Two sets from separate sites, drawn before the first antibiotic dose.",
    ),
)


def _resources(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _followups(context: Mapping[str, Any], fetched: Fetched, profile: VendorProfile) -> dict[str, FhirQuery]:
    """Reads that only the first round reveals: the named encounter, its ICU Locations. Location
    ids come from the EHR's data: one that is not a FHIR id is not fetched."""
    wanted: dict[str, FhirQuery] = {}
    encounters = _resources(fetched.get("encounters"))
    encounter_id = context.get("encounterId")
    encounter = select_encounter(encounters, encounter_id, profile=profile)
    if encounter is None and is_fhir_id(encounter_id):
        wanted["encounter"] = FhirQuery.read("Encounter", encounter_id)
    if encounter is not None:
        known = {
            r["id"]
            for key in fetched
            for r in _resources(fetched[key])
            if isinstance(r, dict) and r.get("resourceType") == "Location" and isinstance(r.get("id"), str)
        }
        entries = encounter.get("location")
        for entry in (entries if isinstance(entries, list) else [])[:5]:
            ref = entry.get("location") if isinstance(entry, Mapping) else None
            location_id = reference_id(ref, "Location")
            if is_fhir_id(location_id) and location_id not in known and not (ref or {}).get("display"):
                wanted[f"location:{location_id}"] = FhirQuery.read("Location", location_id)
    return wanted


def sepsis_stay(
    encounters: Sequence[Any],
    observations: Sequence[Mapping[str, Any]],
    locations: Mapping[str, Mapping[str, Any]],
    *,
    patient_id: str,
    patient: Mapping[str, Any] | None,
    encounter_id: str | None,
    now: datetime,
    pseudonymizer: Pseudonymizer,
    source: str,
    profile: VendorProfile,
) -> tuple[Mapping[str, Any], MappedStay] | NoCard | None:
    """The ICU stay a `sepsis-risk` call scores now, the hook's and the census sweep's alike: the
    in-progress inpatient Encounter (`encounter_id`'s when given) and the canonical table up to now
    with the trained ICU-clock bound. None: not in hospital (nothing to say); NoCard: an ongoing
    visit without an ICU clock, or a clock beyond any stay the model learned from. MappingError
    (an unreadable Encounter) propagates."""
    encounter = select_encounter(encounters, encounter_id, patient_id, profile=profile)
    if encounter is None:
        return None
    record = PatientRecord(
        patient_id=patient_id,
        patient=patient,
        encounter=encounter,
        observations=observations,
        locations=locations,
    )
    try:
        stay = to_canonical(
            record,
            as_of=now,
            pseudonymizer=pseudonymizer,
            source=source,
            profile=profile,
            max_hours=TRAINED_MAX_ICU_HOURS,
        )
    except StayError as exc:
        return NoCard(NOT_APPLICABLE_REASON, {"stay": exc.reason})
    return encounter, stay


def card_drivers(grouped: Sequence[ClinicalDriver]) -> tuple[list[ClinicalDriver], list[ClinicalDriver]]:
    """(the drivers, the gaps) a sepsis card words: what its RiskAssessment keeps the context of."""
    drivers, gaps = split_drivers(grouped, TOP_DRIVERS, min_abs=0.01)
    return drivers, gaps[:TOP_GAPS]


def _score(inp: ScoringInput) -> ScoredCard | NoCard | None:
    fetched = inp.fetched
    patient_id = str(inp.context["patientId"])
    # One entry per Observation id (the same one may come in vitals and labs); id-less ones apart.
    observations: dict[Any, dict[str, Any]] = {}
    locations: dict[str, dict[str, Any]] = {}
    for key, value in fetched.items():
        for r in _resources(value):
            if not isinstance(r, dict):
                continue
            if r.get("resourceType") == "Observation":
                rid = r.get("id")
                observations[rid if isinstance(rid, str) and rid else (key, len(observations))] = r
            elif r.get("resourceType") == "Location" and isinstance(r.get("id"), str):
                locations[r["id"]] = r
    patient = fetched.get("patient")
    found = sepsis_stay(
        _resources(fetched.get("encounters")) + _resources(fetched.get("encounter")),
        list(observations.values()),
        locations,
        patient_id=patient_id,
        patient=patient if isinstance(patient, dict) else None,
        encounter_id=inp.context.get("encounterId"),
        now=inp.now,
        pseudonymizer=inp.pseudonymizer,
        source=inp.source,
        profile=inp.profile,
    )
    if not isinstance(found, tuple):
        return found  # None: not in hospital (or no stay of this patient's); NoCard: no ICU clock
    encounter, stay = found
    log = {"icu_hour": stay.current_hour, **stay.report.as_dict()}
    encounter_id = encounter["id"] if is_fhir_id(encounter.get("id")) else None

    def card(score: Score) -> dict[str, Any]:
        drivers, gaps = card_drivers(score.drivers)
        return sepsis_card(
            card_uuid=inp.card_uuid,
            probability=score.probability,
            band=score.band,
            level=score.level,
            band_validation=score.band_validation,
            threshold=score.model.threshold,
            icu_hour=stay.current_hour,
            model_label=score.model.manifest.title,
            model_version=score.model.version,
            drivers=drivers,
            gaps=gaps,
            all_contributions=score.explanation.contributions,
            base_value=score.explanation.base_value,
            patient_id=patient_id,
            encounter_id=encounter_id,
        )

    return card_from_table(
        inp,
        SEPSIS,
        stay.table,
        CANONICAL_COLUMNS,
        pseudonym=stay.pseudonym or "",  # never None here: the hook context names the patient
        icu_hour=stay.current_hour,
        log=log,
        card=card,
    )


# What a sepsis card needs: measured vital signs, recently (measured on set A in docs/mapping.md).
MINIMUM_DATA = MinimumData(variables=VITAL_VARIABLES, count=3, distinct=2, window_hours=6)

SEPSIS = Service(
    id="sepsis-risk",
    hooks=("patient-view",),
    title="Sepsis risk (ICU)",
    description=(
        "Estimates the probability that an ICU patient has or will develop sepsis (Sepsis-3) within the next "
        "6 hours from vital signs and laboratory results, and explains the score with SHAP."
    ),
    prefetch={
        "patient": "Patient/{{context.patientId}}",
        "encounters": "Encounter?patient={{context.patientId}}&status=in-progress",
        "vitals": "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=1000",
        "labs": "Observation?patient={{context.patientId}}&category=laboratory&_sort=-date&_count=1000",
        CONSENT_KEY: CONSENT_TEMPLATE,
    },
    model_name="sepsis",
    score=_score,
    followups=_followups,
    observation_keys={"vitals": "vital-signs", "labs": "laboratory"},
    usage_requirements=(
        "For adult ICU patients during an inpatient encounter. Needs vital-sign and laboratory Observations "
        "coded with LOINC; give `encounterId` in context when the patient has several encounters in "
        "progress. No card without at least 3 vital-sign values of 2 different vital signs in the last 6 "
        "ICU hours."
    ),
    override_reasons=(
        NOT_APPLICABLE,
        OverrideReason(
            NON_ADHERENCE, "recipient-disagrees-evidence", "Disagree: clinical picture does not fit"
        ),
        OverrideReason(NON_ADHERENCE, "action-completed", "Already assessed or treated for sepsis"),
        STALE_DATA,
    ),
    minimum_data=MINIMUM_DATA,
)


def sepsis_bundle_suggestion(card_uuid: str, patient_id: str, encounter_id: str | None) -> dict[str, Any]:
    """One suggestion: draft stat ServiceRequests for the bundle's labs. Plain dicts on the hook path
    (fhir.resources cost ~1 ms a card); tests validate them as FHIR R4, and the ids in them are FHIR
    ids (the context's, checked before scoring).

    Its uuid derives from the card's, so feedback that accepts it can be traced to both."""
    actions = []
    for code, display, description, note in _BUNDLE_ORDERS:
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "priority": "stat",
            "category": [
                {"coding": [{"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}]}
            ],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{patient_id}"},
            "reasonCode": [{"text": "Suspected sepsis (sepsis risk alert)"}],
        }
        if encounter_id:
            resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
        if note:
            resource["note"] = [{"text": note}]
        actions.append({"type": "create", "description": description, "resource": resource})
    return {
        "label": "Order sepsis bundle labs: lactate and blood cultures",
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:uuid:{card_uuid}/sepsis-bundle-labs")),
        "isRecommended": True,
        "actions": actions,
    }


def sepsis_card(
    *,
    card_uuid: str,
    probability: float,
    band: str,
    threshold: float,
    level: str,
    band_validation: dict[str, Any] | None = None,
    icu_hour: int,
    model_label: str,
    model_version: str,
    drivers: Sequence[ClinicalDriver],
    all_contributions: Sequence[Driver],
    gaps: Sequence[ClinicalDriver] = (),
    base_value: float,
    patient_id: str | None = None,
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """Elevated and high-risk cards offer the bundle's lab orders (when the patient id is known)."""
    pct = format_percent(probability)
    text = RiskCardText(
        summary=f"Sepsis risk {pct} (next 6 h): {_BAND_WORDS.get(band, band)}",
        headline=(
            f"**Sepsis risk: {pct}** within the next 6 hours (alert threshold {format_percent(threshold)}), "
            f"ICU hour {icu_hour}."
        ),
        footer=(
            "_Arrows show how each clinical variable (its latest value, trend and when it was measured) "
            "moves this patient's score from the model's average. "
            "A decision aid, not a diagnosis: assess the patient._"
        ),
    )
    return build_risk_card(
        card_uuid=card_uuid,
        service=SEPSIS,
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
        extra={"icuHour": icu_hour},
        suggestions=(
            [sepsis_bundle_suggestion(card_uuid, patient_id, encounter_id)]
            if patient_id and band != "low"
            else []
        ),
        selection_behavior="at-most-one",
    )
