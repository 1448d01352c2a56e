"""FHIR R4 resources of one hospital stay -> one de-identified row of the discharge table.

Reads: Patient (age band, sex), the Encounter in context (priority, admitSource,
dischargeDisposition, period, ranked diagnoses), the patient's other Encounters (visits in the
year before admission, by class), Conditions (ICD-9-CM, ICD-10-CM, or SNOMED CT through the
mapping table), laboratory Observations of the stay (a count; HbA1c and glucose banded as the
training data bands them), MedicationRequests of the stay (distinct medicines; the diabetes
drugs by RxNorm ingredient, with dose changes read from `priorPrescription`) and Procedures of
the stay (a count). As in training, only the three highest-ranked diagnoses are grouped and
scored for comorbidity. The output carries keyed pseudonyms, never the EHR's ids.

Robust to what an EHR may send: references relative, absolute or versioned (`_history`), and
contained (`#id`: an Encounter.diagnosis Condition, a MedicationRequest's Medication); a
Medication `_include`d with the requests is read too. Resources of another subject, with a
void or unreadable status or an unreadable time are skipped and counted (`skipped`), as are
HbA1c/glucose values out of their plausibility range (`implausible`).

The EHR's vendor profile applies here as in the sepsis mapping: its encounter classes count the
year's visits when the visit table does not know a class (Epic's own patient classes), and its
observation code table (vendor and site-local codes) names glucose results that no standard
discharge-lab code names.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import numpy as np

from .deid import Pseudonymizer, age_in_years
from .diagnoses import default_diagnosis_coder
from .discharge_table import (
    ADMISSION_SOURCES,
    ADMISSION_TYPES,
    DISCHARGE_COLUMNS,
    DISCHARGE_GROUPS,
    DRUG_STATUSES,
    GROUP_INDEX,
    VISIT_KINDS,
    DischargeTable,
    default_encounter_codes,
    diabetes_drugs,
)
from .errors import MappingError
from .observations import observation_time
from .profiles import GENERIC, VendorProfile
from .resources import (
    categories,
    codings,
    ensure_resource,
    objects,
    parse_date,
    parse_datetime,
    parse_reference,
    reference_id,
    resolve_reference,
    string,
    subject_mismatch,
)
from .variables import PLAUSIBLE_RANGES

__all__ = [
    "A1C_CODES",
    "A1C_RANGE",
    "DischargeRecord",
    "GLUCOSE_CODES",
    "MappedDischarge",
    "RXNORM",
    "discharge_to_table",
]

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True, slots=True)
class _LabCode:
    kind: str  # "a1c" | "glucose"
    default_unit: str  # the unit a value sent without one (or in a unit not in the table) is read in


def _lab_tables() -> tuple[dict[tuple[str, str], _LabCode], dict[tuple[str, str], tuple[float, float]]]:
    """tables/discharge_labs.csv (which codes are HbA1c or glucose) and discharge_lab_units.csv
    (unit -> the band's canonical unit: NGSP % for HbA1c, mg/dL for glucose)."""
    files = resources.files(__package__)
    codes = {
        (r["system"], r["code"]): _LabCode(r["kind"], r["default_unit"])
        for r in csv.DictReader(
            files.joinpath("tables/discharge_labs.csv").read_text(encoding="utf-8").splitlines()
        )
    }
    units = {
        (r["kind"], r["unit"]): (float(r["factor"]), float(r["offset"]))
        for r in csv.DictReader(
            files.joinpath("tables/discharge_lab_units.csv").read_text(encoding="utf-8").splitlines()
        )
    }
    return codes, units


_LAB_CODES, _LAB_UNITS = _lab_tables()
A1C_CODES = frozenset(
    code for (system, code), row in _LAB_CODES.items() if row.kind == "a1c" and system == LOINC
)
GLUCOSE_CODES = frozenset(
    code for (system, code), row in _LAB_CODES.items() if row.kind == "glucose" and system == LOINC
)
_YEAR = timedelta(days=365)
_DAY = timedelta(days=1)
_VOID = {"entered-in-error", "cancelled", "not-done"}
# HbA1c in % (NGSP) no blood can have; glucose uses the canonical variable's range (mg/dL).
A1C_RANGE = (2.0, 25.0)


@dataclass
class DischargeRecord:
    """The resources of one patient around one stay, as gathered from prefetch or FHIR."""

    patient_id: str
    patient: Mapping[str, Any] | None
    encounter: Mapping[str, Any]
    encounters: Sequence[Mapping[str, Any]] = ()  # the patient's other encounters (history)
    conditions: Sequence[Mapping[str, Any]] = ()
    observations: Sequence[Mapping[str, Any]] = ()
    medication_requests: Sequence[Mapping[str, Any]] = ()
    procedures: Sequence[Mapping[str, Any]] = ()
    medications: Sequence[Mapping[str, Any]] = ()  # Medication resources (`_include`d with the requests)


@dataclass(frozen=True)
class MappedDischarge:
    pseudonym: str
    table: DischargeTable  # one row
    counts: dict[str, int] = field(default_factory=dict)  # resources used, by kind; never values
    skipped: dict[str, int] = field(default_factory=dict)  # "<kind>:<reason>" -> resources left out
    implausible: dict[str, int] = field(default_factory=dict)  # "a1c" | "glucose" -> values out of range


def _first_value(field_name: str, concept: Any) -> str | None:
    return default_encounter_codes().value(field_name, codings(concept))


def _index(vocabulary: tuple[str, ...], value: str | None) -> float:
    return float(vocabulary.index(value)) if value in vocabulary else math.nan


def _period(resource: Mapping[str, Any], path: str) -> tuple[datetime | None, datetime | None]:
    period = resource.get("period")
    if not isinstance(period, Mapping):
        return None, None
    start = parse_datetime(period["start"], f"{path}.period.start") if period.get("start") else None
    end = parse_datetime(period["end"], f"{path}.period.end") if period.get("end") else None
    return start, end


def _of_encounter(resource: Mapping[str, Any], encounter_id: str, key: str = "encounter") -> bool:
    return reference_id(resource.get(key), "Encounter") == encounter_id


def _live(resource: Mapping[str, Any]) -> bool:
    """Not entered in error, cancelled or not done (an unreadable status is not trusted either)."""
    status = resource.get("status")
    return status is None or (isinstance(status, str) and status not in _VOID)


def _above(quantity: Mapping[str, Any], value: float, threshold: float) -> bool:
    return value > threshold or (value == threshold and quantity.get("comparator") in (">", ">="))


def _number(value: Any) -> float | None:
    """A JSON number as a float (bools, strings, NaN refused; an integer too big for a float is inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    return None if math.isnan(number) else number


_LOCAL_GLUCOSE = _LabCode("glucose", "mg/dL")


def _lab_code(obs: Mapping[str, Any], profile: VendorProfile) -> _LabCode | None:
    """Which discharge lab an Observation is: the standard discharge-lab table first (HbA1c
    before glucose when a resource carries both, as the earlier code sets did), else glucose when
    the profile's code table (vendor or site-local codes) says so."""
    pairs = tuple(codings(obs.get("code")))
    found = [_LAB_CODES[c] for c in pairs if c in _LAB_CODES]
    if found:
        return next((r for r in found if r.kind == "a1c"), found[0])
    match = profile.codes.match(pairs, categories(obs))
    if match.variable == "Glucose":
        implied = match.row.implied_unit if match.row is not None else None
        return _LabCode("glucose", implied) if implied else _LOCAL_GLUCOSE
    return None


def _lab_band(obs: Mapping[str, Any], profile: VendorProfile = GENERIC) -> tuple[str, float] | str | None:
    """("a1c" | "glucose", band) for an HbA1c or glucose result; "<kind>:implausible" for one out
    of range; None for any other Observation."""
    lab = _lab_code(obs, profile)
    q = obs.get("valueQuantity")
    value = _number(q.get("value")) if isinstance(q, Mapping) else None
    if lab is None or value is None or not isinstance(q, Mapping):
        return None
    kind = lab.kind
    unit = q.get("code") or q.get("unit") or ""
    if not isinstance(unit, str):
        unit = ""  # a malformed unit: read in the code's default unit, as a missing one
    factor, offset = _LAB_UNITS.get((kind, unit)) or _LAB_UNITS[(kind, lab.default_unit)]
    if factor != 1.0 or offset:
        value = value * factor + offset
    if kind == "a1c":
        if not A1C_RANGE[0] <= value <= A1C_RANGE[1]:
            return "a1c:implausible"
        return kind, 2.0 if _above(q, value, 8.0) else 1.0 if _above(q, value, 7.0) else 0.0
    low, high = PLAUSIBLE_RANGES["Glucose"]
    if not low <= value <= high:
        return "glucose:implausible"
    return kind, 2.0 if _above(q, value, 300.0) else 1.0 if _above(q, value, 200.0) else 0.0


def _ingredients(request: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """RxNorm codes of a request's medicine: its concept, or the ingredients of the Medication it
    references (contained `#id`, or one of `medications` by id)."""
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, Mapping):
        return frozenset(code for system, code in codings(concept) if system == RXNORM)
    medication = resolve_reference(request.get("medicationReference"), "Medication", request, medications)
    if medication is None:
        return frozenset()
    found = {code for system, code in codings(medication.get("code")) if system == RXNORM}
    for ingredient in objects(medication, "ingredient"):
        found |= {code for system, code in codings(ingredient.get("itemCodeableConcept")) if system == RXNORM}
    return frozenset(found)


def _medicine_key(request: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]) -> str:
    rx = _ingredients(request, medications)
    if rx:
        return "rx:" + "+".join(sorted(rx))
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, Mapping):
        coded = sorted(f"{s}|{c}" for s, c in codings(concept))
        if coded:
            return "code:" + coded[0]
        if isinstance(concept.get("text"), str):
            return "text:" + str(concept["text"]).strip().lower()
    target = parse_reference(request.get("medicationReference"))
    if target is not None and target[0] != "#":
        return f"ref:{target[0]}/{target[1]}"  # the same Medication however the reference is written
    return "unknown:" + str(request.get("id"))


def _dose(request: Mapping[str, Any]) -> tuple[float, str] | None:
    for dosage in objects(request, "dosageInstruction"):
        for dr in objects(dosage, "doseAndRate"):
            q = dr.get("doseQuantity")
            value = _number(q.get("value")) if isinstance(q, Mapping) else None
            if value is not None and isinstance(q, Mapping):
                return value, str(q.get("code") or q.get("unit") or "")
    return None


def _drug_column(rx: frozenset[str]) -> str | None:
    for drug in diabetes_drugs():
        combination = len(drug.ingredients) > 1 and rx == drug.ingredients
        if combination or (len(drug.ingredients) == 1 and len(rx) == 1 and rx <= drug.ingredients):
            return drug.column
    return None


def _drug_statuses(
    requests: Sequence[Mapping[str, Any]], medications: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """Diabetes drug -> status code (DRUG_STATUSES): a current request, compared with the one
    it replaces (`priorPrescription`) when that is among the requests."""
    by_id = {r["id"]: r for r in requests if isinstance(r.get("id"), str)}
    replaced = {reference_id(r.get("priorPrescription"), "MedicationRequest") for r in requests} - {None}
    out: dict[str, float] = {}
    for r in requests:
        if string(r, "id") in replaced:
            continue  # superseded by a later request
        column = _drug_column(_ingredients(r, medications))
        if column is None:
            continue
        status = DRUG_STATUSES.index("Steady")
        prior = by_id.get(reference_id(r.get("priorPrescription"), "MedicationRequest"))
        now, before = _dose(r), _dose(prior) if prior is not None else None
        if now is not None and before is not None and now[1] == before[1] and now[0] != before[0]:
            status = DRUG_STATUSES.index("Up" if now[0] > before[0] else "Down")
        out[column] = float(max(out.get(column, 0.0), status))
    return out


def _rank(entry: Mapping[str, Any]) -> int:
    rank = entry.get("rank")
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else 10**6


def _diagnosis_entries(
    encounter: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]], encounter_id: str
) -> list[Mapping[str, Any] | None]:
    """The stay's diagnoses in rank order: the Condition of each (fetched, or contained in the
    Encounter), or None when only named."""
    by_id = {c["id"]: c for c in conditions if isinstance(c.get("id"), str)}
    entries = objects(encounter, "diagnosis")
    if entries:
        ordered = sorted(enumerate(entries), key=lambda ie: (_rank(ie[1]), ie[0]))
        return [resolve_reference(e.get("condition"), "Condition", encounter, by_id) for _, e in ordered]
    # No Encounter.diagnosis: the stay's encounter-diagnosis Conditions, in the order given.
    return [
        c
        for c in by_id.values()
        if _of_encounter(c, encounter_id) and _live(c) and "encounter-diagnosis" in categories(c)
    ]


def _usable(
    resources: Sequence[Mapping[str, Any]], kind: str, patient_id: str, skipped: Counter[str]
) -> list[Mapping[str, Any]]:
    """The resources of `kind` that may be this patient's and are not void; the rest counted."""
    out = []
    for r in resources:
        if not isinstance(r, Mapping) or r.get("resourceType") != kind:
            continue
        why = subject_mismatch(r, patient_id)
        if why is None and not _live(r):
            why = "status"
        if why is not None:
            skipped[f"{kind}:{why}"] += 1
            continue
        out.append(r)
    return out


def discharge_to_table(
    record: DischargeRecord,
    *,
    as_of: datetime,
    pseudonymizer: Pseudonymizer,
    source: str = "",
    profile: VendorProfile = GENERIC,
) -> MappedDischarge:
    encounter = ensure_resource(record.encounter, "Encounter", "Encounter")
    encounter_id = str(encounter.get("id") or "")
    start, end = _period(encounter, "Encounter")
    if start is None:
        raise MappingError(
            "the encounter has no period.start: length of stay is unknown", path="Encounter.period.start"
        )
    end = end or as_of
    values = np.full(len(DISCHARGE_COLUMNS), np.nan)
    col = {name: i for i, name in enumerate(DISCHARGE_COLUMNS)}
    counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    implausible: Counter[str] = Counter()
    patient_id = record.patient_id

    if record.patient is not None:
        patient = ensure_resource(record.patient, "Patient", "Patient")
        if patient.get("birthDate") is not None:
            age = age_in_years(parse_date(patient["birthDate"], "Patient.birthDate"), start.date())
            values[col["age"]] = float(min(age // 10 * 10, 90))
        values[col["sex"]] = {"male": 1.0, "female": 0.0}.get(string(patient, "gender") or "", math.nan)
    stay = encounter.get("hospitalization")
    hospitalization = stay if isinstance(stay, Mapping) else {}
    priority = _first_value("admission_type", encounter.get("priority"))
    values[col["admission_type"]] = _index(ADMISSION_TYPES, priority)
    admit_source = _first_value("admission_source", hospitalization.get("admitSource"))
    values[col["admission_source"]] = _index(ADMISSION_SOURCES, admit_source)
    disposition = _first_value("discharge", hospitalization.get("dischargeDisposition"))
    values[col["discharge"]] = _index(DISCHARGE_GROUPS, disposition)
    values[col["los_days"]] = float(max(1, (end.date() - start.date()).days))

    visits: Counter[str] = Counter()
    for other in _usable(record.encounters, "Encounter", patient_id, skipped):
        if other.get("id") == encounter_id:
            continue
        try:
            other_start, _ = _period(other, "Encounter")
        except MappingError:
            skipped["Encounter:bad-time"] += 1
            continue
        if other_start is None or not (start - _YEAR <= other_start < start):
            continue
        cls = other.get("class")
        kind = default_encounter_codes().value("visit", codings({"coding": [cls]})) or profile.classes.kind(
            cls
        )
        if kind in VISIT_KINDS:
            visits[kind] += 1
    values[col["n_outpatient"]] = float(visits["outpatient"])
    values[col["n_emergency"]] = float(visits["emergency"])
    values[col["n_inpatient"]] = float(visits["inpatient"])
    counts["encounters"] = sum(visits.values()) + 1

    labs = 0
    bands: dict[str, float] = {}
    for obs in _usable(record.observations, "Observation", patient_id, skipped):
        if "laboratory" not in categories(obs):
            continue
        if not _of_encounter(obs, encounter_id):
            try:
                when = observation_time(obs)
            except MappingError:
                skipped["Observation:bad-time"] += 1
                continue
            if when is None or not (start <= when <= end):
                continue
        labs += 1
        band = _lab_band(obs, profile)
        if isinstance(band, str):
            implausible[band.split(":")[0]] += 1
        elif band is not None:
            bands[band[0]] = max(bands.get(band[0], -1.0), band[1])
    values[col["n_lab_tests"]] = float(labs)
    values[col["a1c"]] = bands.get("a1c", math.nan)
    values[col["glucose"]] = bands.get("glucose", math.nan)
    counts["observations"] = labs

    medications = {
        m["id"]: m
        for m in record.medications
        if isinstance(m, Mapping) and m.get("resourceType") == "Medication" and isinstance(m.get("id"), str)
    }
    requests = _usable(record.medication_requests, "MedicationRequest", patient_id, skipped)
    requests = [r for r in requests if _of_encounter(r, encounter_id)]
    statuses = _drug_statuses(requests, medications)
    for column in (c for c in DISCHARGE_COLUMNS if c.startswith("drug:")):
        values[col[column]] = statuses.get(column.removeprefix("drug:"), 0.0)
    values[col["n_medications"]] = float(len({_medicine_key(r, medications) for r in requests}))
    counts["medication_requests"] = len(requests)

    procedures = _usable(record.procedures, "Procedure", patient_id, skipped)
    procedures = [p for p in procedures if _of_encounter(p, encounter_id)]
    values[col["n_procedures"]] = float(len(procedures))
    counts["procedures"] = len(procedures)

    coder = default_diagnosis_coder()
    conditions = _usable(record.conditions, "Condition", patient_id, skipped)
    entries = _diagnosis_entries(encounter, conditions, encounter_id)
    values[col["n_diagnoses"]] = float(len(entries))
    for name in (c for c in DISCHARGE_COLUMNS if c.startswith("charlson:")):
        values[col[name]] = 0.0
    for k, condition in enumerate(entries[:3], start=1):
        coded = coder.best(codings(condition.get("code"))) if condition is not None else None
        if coded is None:
            continue
        group = coder.group(*coded)
        values[col[f"dx{k}"]] = float(GROUP_INDEX[group]) if group is not None else math.nan
        for category in coder.charlson(*coded):
            values[col[f"charlson:{category}"]] = 1.0
    counts["conditions"] = sum(1 for c in entries if c is not None)

    pseudonym = pseudonymizer.pseudonym("Patient", record.patient_id, source=source)
    encounter_key = pseudonymizer.pseudonym("Encounter", encounter_id, source=source)
    table = DischargeTable(
        np.array([pseudonym], dtype=object), np.array([encounter_key], dtype=object), values[None, :]
    )
    return MappedDischarge(pseudonym, table, dict(counts), dict(skipped), dict(implausible))
