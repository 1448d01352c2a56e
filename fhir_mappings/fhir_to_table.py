"""FHIR R4 Patient + Encounter + Observations -> the de-identified canonical table of one stay.

This is where identities stop: the output carries a keyed pseudonym, age in years, sex, and
hours relative to the ICU start, nothing else about the person. An Observation whose subject
names someone else (another Patient, a Group, a Device) is skipped and counted; so is a value out
of its plausibility range (`MappingReport.implausible`: also a birth date after the ICU start, or a
hospital admission years before it).

A stay whose ICU clock runs longer than `max_hours` (a service passes the longest stay its model
was trained on) is refused with `StayError(reason="icu-clock-too-long")`: a missing ICU transfer,
a planned encounter or a wrong start date makes such clocks, and a model extrapolating to hour
7,000 is not decision support. A record without a patient id (a bundle with no Patient and no
subject) is mapped without a pseudonym: a missing id is never pseudonymised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .deid import Pseudonymizer, age_in_years
from .errors import MappingError, StayError
from .observations import MappingReport, scan_observation
from .profiles import GENERIC, VendorProfile
from .resources import ensure_resource, parse_date, string, subject_mismatch
from .stay import IcuClock, icu_clock
from .table import CanonicalTable
from .variables import CANONICAL_COLUMNS, variable

__all__ = [
    "MAX_ICU_HOURS",
    "NO_PATIENT_ID",
    "MappedStay",
    "PatientRecord",
    "canonical_from_measurements",
    "to_canonical",
]

_COL = {name: i for i, name in enumerate(CANONICAL_COLUMNS)}
_GENDER = {"male": 1.0, "female": 0.0}
# A longer ICU clock is a wrong start date (year 0001), not a stay: refused, so that one
# timestamp cannot make us build a table of millions of hours.
MAX_ICU_HOURS = 24 * 366
# The table's patient column for a record without a patient id: a marker, not a pseudonym.
NO_PATIENT_ID = "<no-patient-id>"


@dataclass
class PatientRecord:
    """The resources of one patient's stay, as gathered from prefetch or the FHIR server."""

    patient_id: str | None  # the EHR's Patient id; None when the input names no patient
    patient: Mapping[str, Any] | None
    encounter: Mapping[str, Any] | None
    observations: Sequence[Mapping[str, Any]] = ()
    locations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class MappedStay:
    pseudonym: str | None  # None only when the record has no patient id
    table: CanonicalTable  # hours 1..current_hour of this ICU stay
    current_hour: int
    report: MappingReport


def _subject_matcher(patient_id: str) -> Callable[[Mapping[str, Any]], str | None]:
    """Why an Observation is not this patient's, or None (memoised per subject reference)."""
    seen: dict[str, str | None] = {}

    def mismatch(obs: Mapping[str, Any]) -> str | None:
        subject = obs.get("subject")
        ref = subject.get("reference") if type(subject) is dict else None
        if type(ref) is str:
            try:
                return seen[ref]
            except KeyError:
                answer = seen[ref] = subject_mismatch(obs, patient_id)
                return answer
        return subject_mismatch(obs, patient_id)

    return mismatch


def to_canonical(
    record: PatientRecord,
    *,
    as_of: datetime,
    pseudonymizer: Pseudonymizer,
    profile: VendorProfile = GENERIC,
    source: str = "",
    max_hours: int = MAX_ICU_HOURS,
) -> MappedStay:
    if record.encounter is None:
        raise MappingError("no hospital encounter in context: the ICU clock cannot be set", path="Encounter")
    encounter = ensure_resource(record.encounter, "Encounter", "Encounter")
    clock = icu_clock(encounter, record.locations, as_of, profile)
    hours = _checked_hours(clock, as_of, max_hours)
    report = MappingReport()
    found: list[tuple[Any, ...]] = []
    mismatch = _subject_matcher(record.patient_id) if record.patient_id is not None else None
    for obs in record.observations:
        if type(obs) is not dict or obs.get("resourceType") != "Observation":
            if not isinstance(obs, Mapping) or obs.get("resourceType") != "Observation":
                report.skipped["not-an-observation"] += 1
                continue
        if mismatch is not None and obs.get("subject") is not None:
            why = mismatch(obs)
            if why is not None:
                report.skipped[why] += 1
                continue
        scan_observation(obs, profile, report, found)
    return _assemble(record, clock, hours, as_of, found, report, pseudonymizer, source)


def _checked_hours(clock: IcuClock, as_of: datetime, max_hours: int) -> int:
    hours = clock.hour_of(as_of)
    if hours > min(max_hours, MAX_ICU_HOURS):
        source = "the ICU location" if clock.from_location else "the encounter start: no ICU location"
        raise StayError(
            f"puts the ICU start {hours} hours back, beyond the {min(max_hours, MAX_ICU_HOURS)} hours "
            f"allowed (ICU clock from {source})",
            reason="icu-clock-too-long",
        )
    return hours


def canonical_from_measurements(
    record: PatientRecord,
    clock: IcuClock,
    measurements: Sequence[tuple[Any, ...]],
    *,
    as_of: datetime,
    pseudonymizer: Pseudonymizer,
    source: str = "",
    max_hours: int = MAX_ICU_HOURS,
) -> MappedStay:
    """The same table as `to_canonical`, from measurements already read by `scan_observation`
    (the bulk export path maps each Observation once, as it streams, and places them here).

    `record.observations` is not read; the report counts only what happens in this stay
    (`before-stay`, `after-now`, implausible static values)."""
    hours = _checked_hours(clock, as_of, max_hours)
    return _assemble(record, clock, hours, as_of, measurements, MappingReport(), pseudonymizer, source)


def _assemble(
    record: PatientRecord,
    clock: IcuClock,
    hours: int,
    as_of: datetime,
    found: Sequence[tuple[Any, ...]],
    report: MappingReport,
    pseudonymizer: Pseudonymizer,
    source: str,
) -> MappedStay:
    """Static columns from the Patient and the clock, then the latest value of each variable in
    each ICU hour: the one place both paths build a table."""
    values = np.full((hours, len(CANONICAL_COLUMNS)), np.nan)
    static = values[:, [_COL[c] for c in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")]]
    if record.patient is not None:
        patient = ensure_resource(record.patient, "Patient", "Patient")
        if patient.get("birthDate") is not None:
            birth = parse_date(patient["birthDate"], "Patient.birthDate")
            if birth > clock.icu_start.date():
                report.implausible["Age"] += 1  # born after the ICU start
            else:
                static[:, 0] = age_in_years(birth, clock.icu_start.date())
        static[:, 1] = _GENDER.get(string(patient, "gender") or "", math.nan)
    if clock.unit is not None:
        static[:, 2] = 1.0 if clock.unit == "medical" else 0.0
        static[:, 3] = 1.0 if clock.unit == "surgical" else 0.0
    admission_ok = variable("HospAdmTime").plausible(clock.hosp_adm_hours)
    if admission_ok:
        static[:, 4] = clock.hosp_adm_hours
    elif clock.hospital_admission is not None:
        report.implausible["HospAdmTime"] += 1  # e.g. a hospital admission decades before the ICU
    values[:, [_COL[c] for c in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")]] = static

    # The latest value of each variable in each ICU hour (ties: resource id, component, value).
    now_ts = as_of.timestamp()
    start_ts = clock.icu_start.timestamp()
    window_ts = (clock.window_start if admission_ok else clock.icu_start).timestamp()
    latest: dict[tuple[int, str], tuple[Any, ...]] = {}
    for m in found:
        ts = m[0]
        if ts > now_ts:
            report.skipped["after-now"] += 1
            continue
        if ts < window_ts:
            report.skipped["before-stay"] += 1
            continue
        hour = math.ceil((ts - start_ts) / 3600.0)
        key = (hour if hour > 1 else 1, m[1])
        kept = latest.get(key)
        if kept is None or (ts, m[3], m[4], m[2]) > (kept[0], kept[3], kept[4], kept[2]):
            latest[key] = m
    for (hour, var), m in latest.items():
        values[hour - 1, _COL[var]] = m[2]

    pseudonym = (
        pseudonymizer.pseudonym("Patient", record.patient_id, source=source)
        if record.patient_id is not None
        else None
    )
    table = CanonicalTable(
        patient=np.full(hours, pseudonym or NO_PATIENT_ID, dtype=object),
        iculos=np.arange(1, hours + 1, dtype=np.int32),
        values=values,
    )
    return MappedStay(pseudonym, table, hours, report)
