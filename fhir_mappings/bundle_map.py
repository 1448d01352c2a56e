"""A whole FHIR Bundle (searchset, collection, transaction such as Synthea's) -> the canonical table
of one stay plus a report of every Observation: what `cds map --bundle` prints when an
integration team onboards a hospital.

Two views, both counts only: `report` covers every Observation in the bundle whatever its time
(did its code and unit map?), `stay.report` only those placed in the chosen stay's hours.
OperationOutcome entries are counted and skipped; `_include`d resources are used like any other.

The patient is the bundle's Patient; a bundle without one (an export of Observations and
Encounters) takes it from the chosen Encounter's subject, else from the subject most of its
Observations name. Observations of anyone else are counted as skipped in both views, so the counts
say what the stay really holds; a bundle that names no patient at all is mapped without a
pseudonym. The stay is chosen by the same rule as the hook's (`stay.select_encounter`, any status
but planned, cancelled or entered-in-error); a stay that gives no usable ICU clock is reported in
`stay_problem`, with every count still printed, never raised.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from .deid import Pseudonymizer
from .errors import InvalidResourceError, MappingError, StayError
from .fhir_to_table import MAX_ICU_HOURS, MappedStay, PatientRecord, to_canonical
from .observations import MappingReport, _time, scan_observation
from .profiles import GENERIC, VendorProfile
from .resources import element, ensure_resource, parse_datetime, parse_reference, subject_mismatch
from .stay import select_encounter
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
    stay_problem: str | None = None  # why there is no canonical table (no stay, no usable ICU clock)
    stay_reason: str | None = None  # its stable code: no-stay, no-icu-clock, icu-clock-too-long
    patient_from: str = "Patient"  # where the patient id came from: Patient, Encounter.subject, ...

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
    period = element(resource, "period")
    try:
        return parse_datetime(period.get("start"), "Encounter.period.start")
    except MappingError:
        return datetime.min.replace(tzinfo=UTC)


def _subject_id(resource: Mapping[str, Any]) -> str | None:
    subject = resource.get("subject")
    parsed = parse_reference(subject) if isinstance(subject, Mapping) else None
    return parsed[1] if parsed is not None and parsed[0] == "Patient" else None


def _patient_id(
    patient: Mapping[str, Any] | None, encounter: Mapping[str, Any] | None, observations: list[dict[str, Any]]
) -> tuple[str | None, str]:
    """(the EHR's patient id, where it came from); (None, "none") when nothing names one."""
    if patient is not None and isinstance(patient.get("id"), str) and patient["id"]:
        return patient["id"], "Patient"
    if encounter is not None and (found := _subject_id(encounter)):
        return found, "Encounter.subject"
    named = Counter(pid for pid in map(_subject_id, observations) if pid)
    if named:
        return named.most_common(1)[0][0], "Observation.subject"
    return None, "none"


def _as_of(encounter: Mapping[str, Any], observations: list[dict[str, Any]]) -> datetime:
    """The end of the stay: its period end, else its last Observation, else its start."""
    period = element(encounter, "period")
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
    max_icu_hours: int = MAX_ICU_HOURS,
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
        raise MappingError(
            f"the bundle holds {len(patients)} patients; map one patient at a time", path="Bundle"
        )
    observations = [r for r in items if r["resourceType"] == "Observation"]
    encounters = [r for r in items if r["resourceType"] == "Encounter"]
    locations = {
        r["id"]: r for r in items if r["resourceType"] == "Location" and isinstance(r.get("id"), str)
    }
    patient = patients[0] if patients else None

    # The patient first (an Encounter of someone else is never the stay), then the stay; without
    # a Patient, the stay's own subject names the patient.
    chosen = (
        None
        if patient is not None
        else select_encounter(encounters, encounter_id, None, profile=profile, in_progress=False)
    )
    patient_id, patient_from = _patient_id(patient, chosen, observations)
    encounter = select_encounter(encounters, encounter_id, patient_id, profile=profile, in_progress=False)
    if encounter_id and encounter is None:
        raise MappingError(
            "no Encounter with that id in the bundle (or it is planned, cancelled or entered in error)",
            path="Encounter",
        )

    report = MappingReport()
    scratch: list[tuple[Any, ...]] = []
    own: list[dict[str, Any]] = []  # the patient's Observations (all of them when no one is named)
    for obs in observations:
        why = subject_mismatch(obs, patient_id) if patient_id is not None else None
        if why is not None:
            report.observations += 1
            report.skipped[why] += 1
            continue
        own.append(obs)
        scan_observation(obs, profile, report, scratch)

    mapping = BundleMapping(None, report, outcomes, counts, issues, patient_from=patient_from)
    if encounter is None:
        kinds = Counter(profile.classes.kind(e.get("class")) or "unrecognised" for e in encounters)
        mapping.stay_reason = "no-stay"
        mapping.stay_problem = (
            f"no hospital stay among {len(encounters)} Encounter(s) (classes: {dict(sorted(kinds.items()))}; "
            "planned, cancelled and entered-in-error ones and recognised non-inpatient classes are never a "
            "stay)"
            if encounters
            else "no Encounter in the bundle"
        )
        return mapping
    record = PatientRecord(patient_id, patient, encounter, observations, locations)
    try:
        mapping.stay = to_canonical(
            record,
            as_of=as_of or _as_of(encounter, own),
            pseudonymizer=pseudonymizer,
            profile=profile,
            source=source,
            max_hours=max_icu_hours,
        )
    except StayError as exc:
        mapping.stay_reason, mapping.stay_problem = exc.reason, str(exc)
    return mapping
