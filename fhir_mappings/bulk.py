"""A hospital's FHIR Bulk Data export -> the canonical hourly table of each ICU stay, with labels.

The pure half of `read_export` (bulk_files.py does the file I/O): what one patient's resources
give, through the hook's own mapping: Observations through `observations.scan_observation` (once,
as the export streams), the ICU clock through `stay.icu_clock`, the table through
`fhir_to_table.canonical_from_measurements` (the code `to_canonical` runs for a hook call), and
`SepsisLabel` through `outcomes.sepsis_labels`.

Which stays (one table per ICU stay, as PhysioNet 2019 has one file per stay):
- a hospital stay is an Encounter that is not `partOf` another, whose status is not planned,
  cancelled or entered-in-error, and whose class the profile reads as inpatient or does not
  recognise (as the hook's `select_encounter`); recognised outpatient, emergency, observation and
  planned encounters are counted and left out;
- an Encounter `partOf` a hospital stay (real exports write the ICU stay so, class ACUTE or ICU,
  the unit only in its Location's name) adds its location entries to the hospital stay, each with
  the child's period where it has none (and, without any location, one entry named by its class
  when the class says ICU); its contained Locations come along;
- each separate ICU episode of a hospital stay (`stay.icu_episodes`) is one table, from ICU hour 1
  to the hour of its end (the ICU location's end, else the hospital discharge, else the patient's
  last measurement); the clock is the one the hook would use at that end time. A hospital stay
  without any ICU location is not an ICU stay: counted as `no-icu-location`, no table.

Sepsis labels: a sepsis Condition (outcomes.py) applies to the stays of the encounter it names
(the ICU encounter or its hospital stay), whenever its onset (an onset after the ICU discharge
still labels the last hours within six hours of it, as in PhysioNet 2019); naming no encounter, to
the stay whose window (hospital admission to six hours after the ICU end) holds its onset. The
earliest onset counts. A stay with a sepsis
Condition but no onset time has no label: counted as `sepsis-onset-unknown`, no table.

Readmission: each stay carries its hospital stay's 30-day readmission (`SiteStay.readmitted`),
from the patient's later inpatient hospital Encounters in the same export (`outcomes.readmissions`).

Table columns: `patient` (the ICU stay's key: a pseudonym of its Encounter, since PhysioNet's
"patient" is one stay), `person` (the patient's pseudonym: split by it), `hour` (0-based row),
the 40 canonical columns, `ICULOS`, `SepsisLabel`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from .deid import Pseudonymizer
from .errors import MappingError, StayError
from .fhir_to_table import MAX_ICU_HOURS, PatientRecord, canonical_from_measurements
from .observations import MappingReport, safe_token
from .outcomes import SEPSIS_LABEL_HORIZON_HOURS, SepsisOnset, hospital_stay, readmissions, sepsis_labels
from .profiles import GENERIC, VendorProfile
from .resources import element, objects, parse_datetime, reference_id
from .stay import NOT_A_STAY_STATUSES, icu_clock, icu_episodes
from .table import CanonicalTable
from .variables import CANONICAL_COLUMNS

__all__ = [
    "EXPORT_COLUMNS",
    "ExportReport",
    "SiteStay",
    "hospital_encounters",
    "patient_stays",
    "stays_frame",
    "trimmed",
]

EXPORT_COLUMNS = ("patient", "person", "hour", *CANONICAL_COLUMNS, "ICULOS", "SepsisLabel")
_ICU_CLASS_CODES = frozenset({"ICU"})


@dataclass
class ExportReport:
    """What an export gave and what could not be used, by reason: counts only, no identities."""

    resources: Counter[str] = field(default_factory=Counter)  # resourceType -> read
    bad_lines: Counter[str] = field(default_factory=Counter)  # file kind -> lines not JSON resources
    files: list[str] = field(default_factory=list)  # file names read
    files_ignored: list[str] = field(default_factory=list)  # file names of no type we read
    observations: MappingReport = field(default_factory=MappingReport)  # every Observation
    observations_unassigned: Counter[str] = field(default_factory=Counter)  # no-subject ...
    encounters_ignored: Counter[str] = field(default_factory=Counter)  # class kind / status
    stays: int = 0
    hours: int = 0
    septic_stays: int = 0
    stays_skipped: Counter[str] = field(default_factory=Counter)  # reason -> hospital stays/episodes
    placed: int = 0  # measurements placed in an ICU hour of some stay
    outside: Counter[str] = field(default_factory=Counter)  # before-stay / after-now, per stay
    conditions: Counter[str] = field(default_factory=Counter)  # sepsis, sepsis-without-onset, ...
    patients_without_stay: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "resources": dict(sorted(self.resources.items())),
            "bad_lines": dict(self.bad_lines),
            "files": list(self.files),
            "files_ignored": list(self.files_ignored),
            "observations": self.observations.as_dict(),
            "mapped": dict(sorted(self.observations.mapped.items())),
            "observations_unassigned": dict(self.observations_unassigned),
            "encounters_ignored": dict(self.encounters_ignored),
            "stays": self.stays,
            "hours": self.hours,
            "septic_stays": self.septic_stays,
            "stays_skipped": dict(self.stays_skipped),
            "measurements_placed": self.placed,
            "measurements_outside_stays": dict(self.outside),
            "conditions": dict(self.conditions),
            "patients_without_stay": self.patients_without_stay,
        }


@dataclass(frozen=True)
class SiteStay:
    """One ICU stay's canonical table with its labels."""

    key: str  # pseudonym of the ICU stay's Encounter (the table's `patient`)
    person: str  # pseudonym of the Patient
    hospital_key: str  # pseudonym of the hospital Encounter (for readmission joins)
    table: CanonicalTable  # hours 1..current_hour
    label: np.ndarray  # SepsisLabel per hour
    onset_hour: int | None
    from_location: bool
    readmitted: bool | None = None  # the hospital stay's 30-day readmission (outcomes.readmissions)

    def frame(self) -> pd.DataFrame:
        return stays_frame([self])


def stays_frame(stays: Sequence[SiteStay]) -> pd.DataFrame:
    """The stays as one PhysioNet-shaped frame (`EXPORT_COLUMNS`), the training loader's layout."""
    if not stays:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in EXPORT_COLUMNS})
    lengths = [len(s.table) for s in stays]
    values = np.concatenate([s.table.values for s in stays])
    frame = pd.DataFrame(values, columns=list(CANONICAL_COLUMNS))
    frame.insert(0, "patient", np.repeat(np.array([s.key for s in stays], dtype=object), lengths))
    frame.insert(1, "person", np.repeat(np.array([s.person for s in stays], dtype=object), lengths))
    frame.insert(2, "hour", np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]))
    frame["ICULOS"] = np.concatenate([s.table.iculos for s in stays])
    frame["SepsisLabel"] = np.concatenate([s.label for s in stays])
    return frame


def _parent_id(encounter: Mapping[str, Any]) -> str | None:
    return reference_id(encounter.get("partOf"), "Encounter")


def _child_entries(child: Mapping[str, Any], suffix: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The location entries a child (ICU) Encounter adds to its hospital stay, and the contained
    resources they need (renamed so they cannot clash with the parent's own)."""
    period = element(child, "period")
    contained = {c.get("id"): c for c in objects(child, "contained") if c.get("resourceType") == "Location"}
    added: list[dict[str, Any]] = []
    needed: list[Any] = []
    for entry in objects(child, "location"):
        new = dict(entry)
        if not element(entry, "period").get("start") and period.get("start"):
            new["period"] = dict(period)
        ref = element(entry, "location")
        target = ref.get("reference")
        if isinstance(target, str) and target.startswith("#") and target[1:] in contained:
            renamed = {**contained[target[1:]], "id": f"{target[1:]}-{suffix}"}
            needed.append(renamed)
            new["location"] = {**ref, "reference": f"#{renamed['id']}"}
        added.append(new)
    if not added and period.get("start"):
        cls = element(child, "class")
        if cls.get("code") in _ICU_CLASS_CODES:
            added.append({"location": {"display": "ICU"}, "period": dict(period)})
    return added, needed


def hospital_encounters(
    encounters: Sequence[Mapping[str, Any]], profile: VendorProfile, report: ExportReport | None = None
) -> list[dict[str, Any]]:
    """One patient's hospital stays, each with the location entries of its child Encounters
    (partOf, at any depth) merged in; every other Encounter is counted in `report` by reason."""
    by_id = {e["id"]: e for e in encounters if isinstance(e.get("id"), str)}

    def root(e: Mapping[str, Any]) -> Mapping[str, Any] | None:
        seen = 0
        while (parent := _parent_id(e)) is not None and seen < 8:
            if parent not in by_id:
                return None
            e, seen = by_id[parent], seen + 1
        return e

    stays: dict[str, dict[str, Any]] = {}
    children: list[tuple[str, Mapping[str, Any]]] = []
    for e in encounters:
        status = e.get("status")
        if isinstance(status, str) and status in NOT_A_STAY_STATUSES:
            if report is not None:
                report.encounters_ignored[f"status:{safe_token(status)}"] += 1
            continue
        if _parent_id(e) is not None:
            top = root(e)
            if top is None:
                if report is not None:
                    report.encounters_ignored["partOf-unknown-encounter"] += 1
                continue
            children.append((str(top.get("id")), e))
            continue
        kind = profile.classes.kind(e.get("class"))
        if kind not in ("inpatient", None) or not isinstance(e.get("id"), str):
            if report is not None:
                report.encounters_ignored[f"class:{kind or 'no-id'}"] += 1
            continue
        merged = dict(e)
        merged["location"] = list(objects(e, "location"))
        merged["contained"] = list(objects(e, "contained"))
        stays[e["id"]] = merged
    for n, (top_id, child) in enumerate(children):
        stay = stays.get(top_id)
        if stay is None:
            if report is not None:
                report.encounters_ignored["partOf-not-a-stay"] += 1
            continue
        entries, needed = _child_entries(child, f"c{n}")
        for entry in entries:
            # Which encounter the entry came from (a Condition may name it); not a FHIR element,
            # and the merged Encounter never leaves this module.
            entry["_child"] = child.get("id")
        stay["location"] += entries
        stay["contained"] += needed
    return list(stays.values())


def _when(encounter: Mapping[str, Any], key: str) -> datetime | None:
    text = element(encounter, "period").get(key)
    if not text:
        return None
    try:
        return parse_datetime(text, f"Encounter.period.{key}")
    except MappingError:
        return None


def _episode_children(encounter: Mapping[str, Any], start: datetime, end: datetime | None) -> set[str]:
    """Ids of the child Encounters whose location entries fall in one episode."""
    found = set()
    for entry in objects(encounter, "location"):
        child = entry.get("_child")
        p = element(entry, "period")
        if not isinstance(child, str) or not p.get("start"):
            continue
        try:
            s = parse_datetime(p["start"], "period.start")
        except MappingError:
            continue
        if s >= start and (end is None or s <= end):
            found.add(child)
    return found


def patient_stays(
    patient_id: str,
    patient: Mapping[str, Any] | None,
    encounters: Sequence[Mapping[str, Any]],
    locations: Mapping[str, Mapping[str, Any]],
    measurements: Sequence[tuple[Any, ...]],
    onsets: Sequence[SepsisOnset],
    *,
    pseudonymizer: Pseudonymizer,
    profile: VendorProfile = GENERIC,
    source: str = "",
    max_icu_hours: int = MAX_ICU_HOURS,
    report: ExportReport | None = None,
) -> Iterator[SiteStay]:
    """The ICU stays of one patient. `measurements`: (timestamp, variable, value, resource id,
    component index) tuples from `scan_observation`, in any order."""
    report = report if report is not None else ExportReport()
    person = pseudonymizer.pseudonym("Patient", patient_id, source=source)
    last_ts = max((m[0] for m in measurements), default=None)
    found_any = False
    hospitals = hospital_encounters(encounters, profile, report)
    readmitted = readmissions(s for h in hospitals if (s := hospital_stay(h, patient_id)) is not None)
    for hospital in hospitals:
        try:
            episodes = icu_episodes(hospital, locations, profile)
        except MappingError:
            report.stays_skipped["bad-location-period"] += 1
            continue
        if not episodes:
            report.stays_skipped["no-icu-location"] += 1
            continue
        discharge = _when(hospital, "end")
        for start, end in episodes:
            as_of = end or discharge
            if as_of is None and last_ts is not None and last_ts >= start.timestamp():
                as_of = datetime.fromtimestamp(last_ts, start.tzinfo)
            if as_of is None:
                report.stays_skipped["no-icu-end"] += 1
                continue
            as_of = max(as_of, start)
            try:
                clock = icu_clock(hospital, locations, as_of, profile)
            except StayError as exc:
                report.stays_skipped[exc.reason or "no-icu-clock"] += 1
                continue
            except MappingError:
                report.stays_skipped["bad-icu-clock"] += 1
                continue
            owners = {hospital["id"]} | _episode_children(hospital, start, end)
            window_start = clock.window_start
            horizon = as_of + timedelta(hours=SEPSIS_LABEL_HORIZON_HOURS)
            relevant = [
                o
                for o in onsets
                if o.encounter_id in owners
                or (o.encounter_id is None and o.onset is not None and window_start <= o.onset <= horizon)
            ]
            if any(o.onset is None for o in relevant):
                report.stays_skipped["sepsis-onset-unknown"] += 1
                continue
            record = PatientRecord(patient_id, patient, hospital, (), locations)
            try:
                mapped = canonical_from_measurements(
                    record,
                    clock,
                    measurements,
                    as_of=as_of,
                    pseudonymizer=pseudonymizer,
                    source=source,
                    max_hours=max_icu_hours,
                )
            except StayError as exc:
                report.stays_skipped[exc.reason or "stay-error"] += 1
                continue
            onset_hour = (
                clock.hour_of(min(o.onset for o in relevant if o.onset is not None)) if relevant else None
            )
            label = sepsis_labels(mapped.current_hour, onset_hour)
            icu_id = next(iter(sorted(owners - {hospital["id"]})), None) or hospital["id"]
            key = pseudonymizer.pseudonym("Encounter", f"{icu_id}#{start.isoformat()}", source=source)
            report.stays += 1
            report.hours += mapped.current_hour
            report.septic_stays += int(onset_hour is not None)
            report.placed += len(measurements) - sum(mapped.report.skipped.values())
            report.outside.update(mapped.report.skipped)
            report.observations.implausible.update(mapped.report.implausible)
            found_any = True
            yield SiteStay(
                key,
                person,
                pseudonymizer.pseudonym("Encounter", hospital["id"], source=source),
                mapped.table,
                label,
                onset_hour,
                clock.from_location,
                readmitted.get(hospital["id"]),
            )
    if not found_any:
        report.patients_without_stay += 1


def trimmed(resource: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Only the fields the mapping reads (a whole Patient holds names and addresses)."""
    return {k: resource[k] for k in keys if k in resource}
