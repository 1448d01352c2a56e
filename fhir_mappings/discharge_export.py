"""One patient's resources from a Bulk export -> the discharge rows the readmission hook would
have built at each of the patient's discharges, with the 30-day readmission outcome.

Each finished inpatient hospital Encounter (class IMP, ACUTE or NONAC, as the hook accepts) with
a `period.start` and `period.end` is one discharge. Its row is `discharge_to_table` on a
`DischargeRecord` gathered as the hook's prefetch gathers it, at the discharge (`as_of` =
`period.end`): only resources already recorded then are passed (Encounters that started, Conditions
recorded, Observations effective, MedicationRequests authored, Procedures performed by then; one
without a readable time is passed and the mapping decides). Its label is `outcomes.readmissions`
over the patient's inpatient Encounters (the next one starting within 30 days after discharge);
a discharge without an outcome (death) or to death/hospice is left out, as the training cohort
leaves them out. Race (US Core race extension), sex and age at discharge are kept for subgroup
reports only, never as features.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .deid import Pseudonymizer, age_in_years
from .discharge_fhir import DischargeRecord, MappedDischarge, discharge_to_table
from .discharge_table import DISCHARGE_GROUPS
from .errors import MappingError
from .observations import observation_time
from .outcomes import HospitalStay, hospital_stay, readmissions
from .profiles import GENERIC, VendorProfile
from .resources import element, objects, parse_date, parse_datetime, reference_id, string
from .stay import NOT_A_STAY_STATUSES

__all__ = [
    "INPATIENT_CLASSES",
    "US_CORE_RACE",
    "ExportDischarge",
    "PatientResources",
    "is_inpatient",
    "patient_discharges",
    "us_core_race",
]

INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})  # the hook's hospital stays
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
# OMB race categories in the words of the Diabetes 130-US file, so subgroup tables read alike.
_OMB_RACE = {
    "2106-3": "Caucasian",
    "2054-5": "AfricanAmerican",
    "2028-9": "Asian",
    "1002-5": "Other",
    "2076-8": "Other",
    "2131-1": "Other",
}
_HOSPICE = float(DISCHARGE_GROUPS.index("expired_or_hospice"))
# Where each kind says when it was recorded (the first readable one counts).
_RECORDED: dict[str, tuple[tuple[str, ...], ...]] = {
    "Encounter": (("period", "start"),),
    "Condition": (("recordedDate",), ("onsetDateTime",), ("onsetPeriod", "start")),
    "MedicationRequest": (("authoredOn",),),
    "Procedure": (("performedDateTime",), ("performedPeriod", "start")),
}


@dataclass
class PatientResources:
    """What an export holds of one patient that the discharge mapping reads."""

    patient: Mapping[str, Any] | None = None
    race: str = "Unknown"
    encounters: list[Mapping[str, Any]] = field(default_factory=list)
    conditions: list[Mapping[str, Any]] = field(default_factory=list)
    observations: list[Mapping[str, Any]] = field(default_factory=list)
    medication_requests: list[Mapping[str, Any]] = field(default_factory=list)
    procedures: list[Mapping[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ExportDischarge:
    mapped: MappedDischarge  # the hook's row (keyed pseudonyms)
    readmitted: bool
    race: str  # subgroup labels, never features
    sex: str
    age: int | None  # completed years at discharge (capped at 90)


def is_inpatient(encounter: Mapping[str, Any]) -> bool:
    return string(element(encounter, "class"), "code") in INPATIENT_CLASSES


def us_core_race(patient: Mapping[str, Any] | None) -> str:
    """The OMB category of the US Core race extension (Diabetes 130 words), else Unknown."""
    for ext in objects(patient, "extension"):
        if ext.get("url") != US_CORE_RACE:
            continue
        for part in objects(ext, "extension"):
            code = string(element(part, "valueCoding"), "code")
            if part.get("url") == "ombCategory" and code in _OMB_RACE:
                return _OMB_RACE[code]
    return "Unknown"


def _recorded(resource: Mapping[str, Any], kind: str) -> datetime | None:
    if kind == "Observation":
        try:
            return observation_time(resource)
        except MappingError:
            return None
    for path in _RECORDED.get(kind, ()):
        value: Any = resource
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            try:
                return parse_datetime(value, f"{kind}.{'.'.join(path)}")
            except MappingError:
                continue
    return None


def _known_at(resources: Sequence[Mapping[str, Any]], kind: str, as_of: datetime) -> list[Mapping[str, Any]]:
    """The resources recorded by `as_of` (one without a readable time is kept: the mapping decides)."""
    out = []
    for r in resources:
        when = _recorded(r, kind)
        if when is None or when <= as_of:
            out.append(r)
    return out


def _stay(encounter: Mapping[str, Any], patient_id: str) -> HospitalStay | None:
    status = encounter.get("status")
    if isinstance(status, str) and status in NOT_A_STAY_STATUSES:
        return None
    return hospital_stay(encounter, patient_id) if is_inpatient(encounter) else None


def _age(patient: Mapping[str, Any] | None, at: datetime) -> int | None:
    birth = patient.get("birthDate") if patient is not None else None
    try:
        return (
            age_in_years(parse_date(birth, "Patient.birthDate"), at.date())
            if isinstance(birth, str)
            else None
        )
    except MappingError:
        return None


def patient_discharges(
    patient_id: str,
    resources: PatientResources,
    medications: Mapping[str, Mapping[str, Any]],
    *,
    pseudonymizer: Pseudonymizer,
    profile: VendorProfile = GENERIC,
    source: str = "",
    left_out: Counter[str] | None = None,
) -> list[ExportDischarge]:
    """The patient's discharges with an outcome, each mapped as the hook maps it at discharge;
    `left_out` counts the others by reason. `medications`: the export's Medications by id."""
    left_out = left_out if left_out is not None else Counter()
    stays = [s for s in (_stay(e, patient_id) for e in resources.encounters) if s is not None]
    outcome = readmissions(stays)
    by_id = {string(e, "id"): e for e in resources.encounters}
    patient = resources.patient
    sex = {"male": "Male", "female": "Female"}.get(string(patient, "gender") or "", "Unknown/Invalid")
    found: list[ExportDischarge] = []
    for stay in stays:
        encounter = by_id[stay.encounter_id]
        if encounter.get("status") != "finished" or stay.start is None or stay.end is None:
            left_out["not-discharged"] += 1
            continue
        readmitted = outcome.get(stay.encounter_id)
        if readmitted is None:
            left_out["no-outcome"] += 1
            continue
        as_of = stay.end
        requests = _known_at(resources.medication_requests, "MedicationRequest", as_of)
        referenced = {m for r in requests if (m := reference_id(r.get("medicationReference"), "Medication"))}
        record = DischargeRecord(
            patient_id=patient_id,
            patient=patient,
            encounter=encounter,
            encounters=_known_at(resources.encounters, "Encounter", as_of),
            conditions=_known_at(resources.conditions, "Condition", as_of),
            observations=_known_at(resources.observations, "Observation", as_of),
            medication_requests=requests,
            procedures=_known_at(resources.procedures, "Procedure", as_of),
            medications=[medications[mid] for mid in sorted(referenced) if mid in medications],
        )
        try:
            mapped = discharge_to_table(
                record, as_of=as_of, pseudonymizer=pseudonymizer, source=source, profile=profile
            )
        except MappingError:
            left_out["unmappable"] += 1
            continue
        if mapped.table.column("discharge")[0] == _HOSPICE:
            left_out["death-or-hospice"] += 1
            continue
        age = None
        if patient is not None and isinstance(patient.get("birthDate"), str):
            try:
                age = age_in_years(
                    parse_datetime(patient["birthDate"], "Patient.birthDate").date(), as_of.date()
                )
            except MappingError:
                age = None
        found.append(ExportDischarge(mapped, readmitted, resources.race, sex, age))
    return found
