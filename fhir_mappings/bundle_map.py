"""A whole FHIR Bundle (searchset, collection, transaction such as Synthea's) -> the canonical table
of one stay plus a report of every Observation: what `cds map --bundle` prints when an
integration team onboards a hospital.

Two views, both counts only: `report` covers every Observation in the bundle whatever its time
(did its code and unit map?), `stay.report` only those placed in the chosen stay's hours.
OperationOutcome entries are counted and skipped; `_include`d resources are used like any other.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from .deid import Pseudonymizer
from .errors import InvalidResourceError, MappingError
from .fhir_to_table import MappedStay, PatientRecord, to_canonical
from .observations import MappingReport, _time, scan_observation
from .profiles import GENERIC, VendorProfile
from .resources import ensure_resource, parse_datetime
from .stay import INPATIENT_CLASSES
from .validation import ValidationIssue, validate_resources

__all__ = ["BundleMapping", "NO_ROW", "UnmappedCode", "bundle_entries", "map_bundle", "unmapped_reason"]

NO_ROW = "no row in tables/observation_codes.csv (not one of the 40 variables, or a code to add)"


@dataclass(frozen=True, slots=True)
class UnmappedCode:
    code: str  # "system|code"
    count: int
    reason: str


@dataclass
class BundleMapping:
    stay: MappedStay | None
    report: MappingReport  # every Observation in the bundle
    outcomes: int  # OperationOutcome entries, skipped
    resources: dict[str, int] = field(default_factory=dict)  # resourceType -> count
    validation: list[ValidationIssue] = field(default_factory=list)

    def unmapped(self) -> list[UnmappedCode]:
        return [
            UnmappedCode(code, n, unmapped_reason(code))
            for code, n in sorted(self.report.unmapped_codes.items(), key=lambda kv: (-kv[1], kv[0]))
        ]


@cache
def _reasons() -> dict[str, str]:
    text = resources.files(__package__).joinpath("tables/unmapped_codes.csv").read_text(encoding="utf-8")
    return {f"{r['system']}|{r['code']}": r["reason"] for r in csv.DictReader(text.splitlines())}


def unmapped_reason(code: str) -> str:
    """Why a "system|code" is not mapped: the analyst's note in tables/unmapped_codes.csv, if any."""
    return _reasons().get(code, NO_ROW)


def bundle_entries(bundle: Any) -> tuple[list[dict[str, Any]], int]:
    """(resources, number of OperationOutcome entries) of any Bundle type."""
    resource = ensure_resource(bundle, "Bundle", "Bundle")
    entries = resource.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidResourceError("is not a list", path="Bundle.entry")
    found: list[dict[str, Any]] = []
    outcomes = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or entry.get("resource") is None:
            continue
        item = ensure_resource(entry["resource"], f"Bundle.entry[{i}].resource")
        if item["resourceType"] == "OperationOutcome":
            outcomes += 1
        else:
            found.append(item)
    return found, outcomes


def _start(resource: Mapping[str, Any]) -> datetime:
    period = resource.get("period") if isinstance(resource.get("period"), Mapping) else {}
    try:
        return parse_datetime(period.get("start"), "Encounter.period.start")
    except MappingError:
        return datetime.min.replace(tzinfo=UTC)


def _choose_encounter(encounters: list[dict[str, Any]], encounter_id: str | None) -> dict[str, Any] | None:
    if encounter_id:
        found = next((e for e in encounters if e.get("id") == encounter_id), None)
        if found is None:
            raise MappingError("no Encounter with that id in the bundle", path="Encounter")
        return found
    if not encounters:
        return None
    inpatient = [e for e in encounters if (e.get("class") or {}).get("code") in INPATIENT_CLASSES]
    return max(inpatient or encounters, key=_start)


def _as_of(encounter: Mapping[str, Any], observations: list[dict[str, Any]]) -> datetime:
    """The end of the stay: its period end, else its last Observation, else its start."""
    period = encounter.get("period") if isinstance(encounter.get("period"), Mapping) else {}
    if period.get("end"):
        return parse_datetime(period["end"], "Encounter.period.end")
    start = _start(encounter)
    times = []
    for obs in observations:
        try:
            got = _time(obs)
        except MappingError:
            continue
        if got is not None and got[0] >= start:
            times.append(got[0])
    return max(times, default=start)


def map_bundle(
    bundle: Any,
    *,
    pseudonymizer: Pseudonymizer,
    profile: VendorProfile = GENERIC,
    encounter_id: str | None = None,
    as_of: datetime | None = None,
    validate: bool = True,
    source: str = "",
) -> BundleMapping:
    """Map one patient's bundle. The stay is `encounter_id`, else the latest inpatient encounter,
    else the latest encounter; the table runs to `as_of`, else to the end of that encounter."""
    items, outcomes = bundle_entries(bundle)
    counts: dict[str, int] = {}
    for r in items:
        counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
    issues = validate_resources(items) if validate else []
    patients = [r for r in items if r["resourceType"] == "Patient"]
    if len(patients) > 1:
        raise MappingError(f"the bundle holds {len(patients)} patients; map one patient at a time", path="Bundle")
    observations = [r for r in items if r["resourceType"] == "Observation"]
    encounters = [r for r in items if r["resourceType"] == "Encounter"]
    locations = {r["id"]: r for r in items if r["resourceType"] == "Location" and isinstance(r.get("id"), str)}

    report = MappingReport()
    scratch: list[tuple[Any, ...]] = []
    for obs in observations:
        scan_observation(obs, profile, report, scratch)

    stay = None
    encounter = _choose_encounter(encounters, encounter_id)
    if encounter is not None:
        patient = patients[0] if patients else None
        patient_id = str(patient.get("id")) if patient and patient.get("id") else "unknown"
        record = PatientRecord(patient_id, patient, encounter, observations, locations)
        stay = to_canonical(
            record,
            as_of=as_of or _as_of(encounter, observations),
            pseudonymizer=pseudonymizer,
            profile=profile,
            source=source,
        )
    return BundleMapping(stay, report, outcomes, counts, issues)
