"""Outcomes read from FHIR: the sepsis label of each ICU hour, and 30-day readmission.

Sepsis is a `Condition` coded SNOMED CT 91302008 (Sepsis) or ICD-10-CM A40*, A41* (sepsis) or
R65.2* (severe sepsis, septic shock), its `onsetDateTime` (else `onsetPeriod.start`) the Sepsis-3
onset and its `encounter` the stay. A Condition that is `entered-in-error` or `refuted` is not an
outcome. The hourly label follows PhysioNet 2019: 1 for every ICU hour h >= hour(onset) - 6, where
hour() is the ICU clock's own (`IcuClock.hour_of`: ceil of hours since the ICU start, at least 1),
so a set-A stay converted to FHIR and read back gives its `SepsisLabel` exactly.

Readmission: a hospital stay is readmitted when the same patient's next inpatient Encounter
starts within 30 days after its discharge (`period.end`); a stay with no discharge time, or one
that ends in death (`hospitalization.dischargeDisposition` exp), has no readmission outcome (None).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from .errors import MappingError
from .resources import element, objects, parse_datetime, reference_id

__all__ = [
    "ICD10CM",
    "SEPSIS_LABEL_HORIZON_HOURS",
    "SNOMED_CT",
    "HospitalStay",
    "SepsisOnset",
    "hospital_stay",
    "is_sepsis_condition",
    "readmissions",
    "sepsis_labels",
    "sepsis_onset",
]

SNOMED_CT = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SEPSIS_SNOMED = frozenset({"91302008"})
SEPSIS_ICD10_PREFIXES = ("A40", "A41", "R652")
SEPSIS_LABEL_HORIZON_HOURS = 6  # PhysioNet 2019: positive from six hours before onset
_NOT_OUTCOMES = frozenset({"entered-in-error", "refuted"})
_DEATH = frozenset({"exp"})


def _codes(concept: Any) -> Iterable[tuple[Any, Any]]:
    for coding in objects(concept, "coding"):
        yield coding.get("system"), coding.get("code")


def is_sepsis_condition(condition: Mapping[str, Any]) -> bool:
    """Whether a Condition codes sepsis (and is not entered in error or refuted)."""
    for concept in (element(condition, "verificationStatus"),):
        if any(code in _NOT_OUTCOMES for _, code in _codes(concept)):
            return False
    for system, code in _codes(element(condition, "code")):
        if not isinstance(code, str):
            continue
        if system == SNOMED_CT and code in SEPSIS_SNOMED:
            return True
        if system == ICD10CM and code.replace(".", "").upper().startswith(SEPSIS_ICD10_PREFIXES):
            return True
    return False


@dataclass(frozen=True, slots=True)
class SepsisOnset:
    onset: datetime | None  # None: a sepsis Condition without an onset time
    encounter_id: str | None  # the stay it names (`Condition.encounter`), if any
    patient_id: str | None


def sepsis_onset(condition: Mapping[str, Any]) -> SepsisOnset:
    """The onset and stay of a sepsis Condition (call `is_sepsis_condition` first)."""
    onset: datetime | None = None
    text = condition.get("onsetDateTime")
    if text is None:
        text = element(condition, "onsetPeriod").get("start")
    if text is not None:
        try:
            onset = parse_datetime(text, "Condition.onsetDateTime")
        except MappingError:
            onset = None
    return SepsisOnset(
        onset,
        reference_id(condition.get("encounter"), "Encounter"),
        reference_id(condition.get("subject"), "Patient"),
    )


def sepsis_labels(hours: int, onset_hour: int | None) -> np.ndarray:
    """SepsisLabel of ICU hours 1..hours: 1 from hour(onset) - 6 on; all 0 without an onset."""
    label = np.zeros(hours, dtype=np.int8)
    if onset_hour is not None:
        first = max(1, onset_hour - SEPSIS_LABEL_HORIZON_HOURS)
        label[first - 1 :] = 1
    return label


@dataclass(frozen=True, slots=True)
class HospitalStay:
    encounter_id: str
    patient_id: str
    start: datetime | None
    end: datetime | None
    died: bool = False


def readmissions(stays: Iterable[HospitalStay], days: float = 30.0) -> dict[str, bool | None]:
    """Encounter id -> readmitted within `days` of discharge (None: no outcome: no discharge time,
    or death at discharge). Only inpatient hospital stays should be passed; a later stay counts
    when it starts after this one's discharge and no more than `days` after it."""
    window = timedelta(days=days)
    by_patient: dict[str, list[HospitalStay]] = {}
    for stay in stays:
        by_patient.setdefault(stay.patient_id, []).append(stay)
    result: dict[str, bool | None] = {}
    for own in by_patient.values():
        starts = sorted(s.start for s in own if s.start is not None)
        for stay in own:
            if stay.end is None or stay.died:
                result[stay.encounter_id] = None
                continue
            end = stay.end
            result[stay.encounter_id] = any(end < start <= end + window for start in starts)
    return result


def hospital_stay(encounter: Mapping[str, Any], patient_id: str) -> HospitalStay | None:
    """A `HospitalStay` of an Encounter (None without an id)."""
    eid = encounter.get("id")
    if not isinstance(eid, str):
        return None
    period = element(encounter, "period")

    def when(key: str) -> datetime | None:
        try:
            return parse_datetime(period[key], f"Encounter.period.{key}") if period.get(key) else None
        except MappingError:
            return None

    disposition = element(element(encounter, "hospitalization"), "dischargeDisposition")
    died = any(code in _DEATH for _, code in _codes(disposition))
    return HospitalStay(eid, patient_id, when("start"), when("end"), died)
