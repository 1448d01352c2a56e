"""FHIR R4 Patient + Encounter + Observations -> the de-identified canonical table of one stay.

This is where identities stop: the output carries a keyed pseudonym, age in years, sex, and
hours relative to the ICU start, nothing else about the person.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .deid import Pseudonymizer, age_in_years
from .errors import MappingError
from .observations import MappingReport, measurements_from_observation
from .profiles import GENERIC, VendorProfile
from .resources import ensure_resource, parse_date, reference_id
from .stay import icu_clock
from .table import CanonicalTable
from .variables import CANONICAL_COLUMNS

__all__ = ["MappedStay", "PatientRecord", "to_canonical"]

_COL = {name: i for i, name in enumerate(CANONICAL_COLUMNS)}
_GENDER = {"male": 1.0, "female": 0.0}


@dataclass
class PatientRecord:
    """The resources of one patient's stay, as gathered from prefetch or the FHIR server."""

    patient_id: str
    patient: Mapping[str, Any] | None
    encounter: Mapping[str, Any] | None
    observations: Sequence[Mapping[str, Any]] = ()
    locations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class MappedStay:
    pseudonym: str
    table: CanonicalTable  # hours 1..current_hour of this ICU stay
    current_hour: int
    report: MappingReport


def to_canonical(
    record: PatientRecord,
    *,
    as_of: datetime,
    pseudonymizer: Pseudonymizer,
    profile: VendorProfile = GENERIC,
    source: str = "",
) -> MappedStay:
    if record.encounter is None:
        raise MappingError("no hospital encounter in context: the ICU clock cannot be set", path="Encounter")
    encounter = ensure_resource(record.encounter, "Encounter", "Encounter")
    clock = icu_clock(encounter, record.locations, as_of, profile)
    hours = clock.hour_of(as_of)

    values = np.full((hours, len(CANONICAL_COLUMNS)), np.nan)
    static = values[:, [_COL[c] for c in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")]]
    if record.patient is not None:
        patient = ensure_resource(record.patient, "Patient", "Patient")
        if patient.get("birthDate") is not None:
            birth = parse_date(patient["birthDate"], "Patient.birthDate")
            static[:, 0] = age_in_years(birth, clock.icu_start.date())
        static[:, 1] = _GENDER.get(patient.get("gender"), math.nan)  # type: ignore[arg-type]
    if clock.unit is not None:
        static[:, 2] = 1.0 if clock.unit == "medical" else 0.0
        static[:, 3] = 1.0 if clock.unit == "surgical" else 0.0
    static[:, 4] = clock.hosp_adm_hours
    values[:, [_COL[c] for c in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")]] = static

    report = MappingReport()
    latest: dict[tuple[int, str], tuple[datetime, tuple[str, int], float]] = {}
    window_start = clock.window_start
    for i, obs in enumerate(record.observations):
        if not isinstance(obs, Mapping) or obs.get("resourceType") != "Observation":
            report.skipped["not-an-observation"] += 1
            continue
        subject = reference_id(obs.get("subject"), "Patient")
        if subject is not None and subject != record.patient_id:
            report.skipped["other-patient"] += 1
            continue
        for m in measurements_from_observation(obs, profile, report):
            if m.time > as_of:
                report.skipped["after-now"] += 1
                continue
            if m.time < window_start:
                report.skipped["before-stay"] += 1
                continue
            key = (clock.hour_of(m.time), m.variable)
            rank = (m.time, m.order, m.value)
            kept = latest.get(key)
            if kept is None or rank > kept:
                latest[key] = rank
    for (hour, var), (_, _, value) in latest.items():
        values[hour - 1, _COL[var]] = value

    pseudonym = pseudonymizer.pseudonym("Patient", record.patient_id, source=source)
    table = CanonicalTable(
        patient=np.full(hours, pseudonym, dtype=object),
        iculos=np.arange(1, hours + 1, dtype=np.int32),
        values=values,
    )
    return MappedStay(pseudonym, table, hours, report)

