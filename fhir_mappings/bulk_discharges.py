"""Reading a FHIR Bulk Data export for the readmission model (a file edge, beside bulk_files.py,
whose NDJSON reader it uses): every patient's discharges as the `readmission-risk` hook maps them,
with the 30-day outcome from the export's own later inpatient Encounters (`discharge_export`).

Files stream one resource at a time, in the order Patient, Encounter, Medication, then the rest;
only what a discharge row can read is kept, grouped by patient: the Patient's birth date and sex
(and its race category, for subgroups), every Encounter (the inpatient ones whole, the others
only their class, status and period: the year's visits are counted from them), the Conditions of
patients with a hospital stay, the laboratory Observations that belong to a stay (by reference or
by time), and the MedicationRequests and Procedures of a stay. A few thousand patients fit in
memory easily; the Observations of visits outside any stay are never kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .bulk import trimmed
from .bulk_files import Progress, export_files, ndjson_resources
from .deid import Pseudonymizer
from .discharge_export import (
    ExportDischarge,
    PatientResources,
    is_inpatient,
    patient_discharges,
    us_core_race,
)
from .errors import MappingError
from .observations import observation_time
from .profiles import GENERIC, VendorProfile
from .resources import categories, element, parse_datetime, reference_id

__all__ = ["DISCHARGE_EXPORT_TYPES", "DischargeExportReport", "read_discharge_export"]

# Encounters before the resources that point at them; Observations, the most, last.
DISCHARGE_EXPORT_TYPES = (
    "Patient",
    "Encounter",
    "Medication",
    "Condition",
    "MedicationRequest",
    "Procedure",
    "Observation",
)
_PATIENT_KEYS = ("resourceType", "id", "birthDate", "gender")
_VISIT_KEYS = ("resourceType", "id", "status", "class", "subject", "period")


@dataclass
class DischargeExportReport:
    """What was read and what was left out, by kind and reason (counts only, never values)."""

    files: list[str] = field(default_factory=list)
    files_ignored: list[str] = field(default_factory=list)
    resources: Counter[str] = field(default_factory=Counter)
    bad_lines: Counter[str] = field(default_factory=Counter)
    unassigned: Counter[str] = field(default_factory=Counter)  # resources with no patient
    discharges: int = 0
    readmitted: int = 0
    left_out: Counter[str] = field(default_factory=Counter)  # discharges without a row, by reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "files_ignored": self.files_ignored,
            "resources": dict(self.resources),
            "bad_lines": dict(self.bad_lines),
            "unassigned": dict(self.unassigned),
            "discharges": self.discharges,
            "readmitted": self.readmitted,
            "left_out": dict(self.left_out),
        }


def _time(value: Any) -> datetime | None:
    try:
        return parse_datetime(value, "period") if isinstance(value, str) else None
    except MappingError:
        return None


@dataclass
class _Stays:
    """The inpatient stays seen so far: encounter id -> patient, and each patient's periods."""

    patient_of: dict[str, str] = field(default_factory=dict)
    periods: dict[str, list[tuple[datetime | None, datetime | None]]] = field(default_factory=dict)

    def add(self, encounter: Mapping[str, Any], patient_id: str) -> None:
        self.patient_of[str(encounter["id"])] = patient_id
        period = element(encounter, "period")
        self.periods.setdefault(patient_id, []).append((_time(period.get("start")), _time(period.get("end"))))

    def of_stay(self, resource: Mapping[str, Any]) -> bool:
        return reference_id(resource.get("encounter"), "Encounter") in self.patient_of

    def lab_of_stay(self, obs: Mapping[str, Any], patient_id: str) -> bool:
        """A laboratory Observation the mapping could count: of a stay, or timed within one."""
        if patient_id not in self.periods or "laboratory" not in categories(obs):
            return False
        if self.of_stay(obs):
            return True
        try:
            when = observation_time(obs)
        except MappingError:
            return True  # the mapping counts it as skipped
        if when is None:
            return False
        return any(s is None or (s <= when and (e is None or when <= e)) for s, e in self.periods[patient_id])


def read_discharge_export(
    path: Path | str,
    *,
    pseudonymizer: Pseudonymizer,
    profile: VendorProfile = GENERIC,
    source: str = "",
    progress: Progress | None = None,
) -> tuple[list[ExportDischarge], DischargeExportReport]:
    """Every discharge of the export at `path` with an outcome (patients in id order, each
    patient's stays in export order), and the report of what was read and left out."""
    files, ignored = export_files(path, DISCHARGE_EXPORT_TYPES)
    report = DischargeExportReport(files_ignored=ignored)
    ordered = [(kind, f) for kind in DISCHARGE_EXPORT_TYPES for f in files.get(kind, [])]
    report.files = [f.name for _, f in ordered]
    total, done = sum(f.stat().st_size for _, f in ordered), 0
    people: dict[str, PatientResources] = {}
    medications: dict[str, Mapping[str, Any]] = {}
    stays = _Stays()

    def person(pid: str) -> PatientResources:
        found = people.get(pid)
        if found is None:
            found = people[pid] = PatientResources()
        return found

    def owner(resource: Mapping[str, Any], kind: str) -> str | None:
        pid = reference_id(resource.get("subject"), "Patient")
        if pid is None:
            eid = reference_id(resource.get("encounter"), "Encounter")
            pid = stays.patient_of.get(eid) if eid is not None else None
        if pid is None:
            report.unassigned[kind] += 1
        return pid

    for kind, file in ordered:
        for resource in ndjson_resources(
            file, kind, report.resources, report.bad_lines, done, total, progress
        ):
            if kind == "Patient":
                if isinstance(resource.get("id"), str):
                    entry = person(resource["id"])
                    entry.patient, entry.race = trimmed(resource, _PATIENT_KEYS), us_core_race(resource)
                continue
            if kind == "Medication":
                if isinstance(resource.get("id"), str):
                    medications[resource["id"]] = resource
                continue
            pid = owner(resource, kind)
            if pid is None:
                continue
            if kind == "Encounter":
                inpatient = is_inpatient(resource) and isinstance(resource.get("id"), str)
                if inpatient:
                    stays.add(resource, pid)
                person(pid).encounters.append(resource if inpatient else trimmed(resource, _VISIT_KEYS))
            elif kind == "Condition" and pid in stays.periods:
                person(pid).conditions.append(resource)
            elif kind == "MedicationRequest" and stays.of_stay(resource):
                person(pid).medication_requests.append(resource)
            elif kind == "Procedure" and stays.of_stay(resource):
                person(pid).procedures.append(resource)
            elif kind == "Observation" and stays.lab_of_stay(resource, pid):
                person(pid).observations.append(resource)
        done += file.stat().st_size
    found: list[ExportDischarge] = []
    for pid in sorted(stays.periods):
        rows = patient_discharges(
            pid,
            people[pid],
            medications,
            pseudonymizer=pseudonymizer,
            profile=profile,
            source=source,
            left_out=report.left_out,
        )
        found += rows
    report.discharges = len(found)
    report.readmitted = sum(d.readmitted for d in found)
    return found, report
