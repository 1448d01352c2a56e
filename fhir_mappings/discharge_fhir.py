"""FHIR R4 resources of one hospital stay -> one de-identified row of the discharge table.

Reads: Patient (age band, sex), the Encounter in context (priority, admitSource,
dischargeDisposition, period, ranked diagnoses), the patient's other Encounters (visits in the
year before admission, by class), Conditions (ICD-9-CM, ICD-10-CM, or SNOMED CT through the
mapping table), laboratory Observations of the stay (a count; HbA1c and glucose banded as the
training data bands them), MedicationRequests of the stay (distinct medicines; the diabetes
drugs by RxNorm ingredient, with dose changes read from `priorPrescription`) and Procedures of
the stay (a count). As in training, only the three highest-ranked diagnoses are grouped and
scored for comorbidity. The output carries keyed pseudonyms, never the EHR's ids.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
from .resources import categories, codings, ensure_resource, parse_date, parse_datetime, reference_id

__all__ = ["A1C_CODES", "DischargeRecord", "GLUCOSE_CODES", "MappedDischarge", "RXNORM", "discharge_to_table"]

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
A1C_CODES = frozenset({"4548-4", "17856-6", "4549-2", "59261-8"})  # HbA1c, % of total Hb
GLUCOSE_CODES = frozenset({"2345-7", "2339-0", "41653-7", "14749-6", "15074-8"})  # mg/dL or mmol/L
_GLUCOSE_MMOL = frozenset({"14749-6", "15074-8"})
_YEAR = timedelta(days=365)
_DAY = timedelta(days=1)
_VOID = {"entered-in-error", "cancelled", "not-done"}


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


@dataclass(frozen=True)
class MappedDischarge:
    pseudonym: str
    table: DischargeTable  # one row
    counts: dict[str, int] = field(default_factory=dict)  # resources used, by kind; never values


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
    return resource.get("status") not in _VOID


def _above(quantity: Mapping[str, Any], value: float, threshold: float) -> bool:
    return value > threshold or (value == threshold and quantity.get("comparator") in (">", ">="))


def _lab_band(obs: Mapping[str, Any]) -> tuple[str, float] | None:
    """("a1c" | "glucose", band) for an HbA1c or glucose result; None for any other."""
    loinc = {code for system, code in codings(obs.get("code")) if system == LOINC}
    kind = "a1c" if loinc & A1C_CODES else "glucose" if loinc & GLUCOSE_CODES else None
    q = obs.get("valueQuantity")
    if kind is None or not isinstance(q, Mapping) or not isinstance(q.get("value"), int | float):
        return None
    value = float(q["value"])
    unit = str(q.get("code") or q.get("unit") or "")
    if kind == "a1c":
        if unit == "mmol/mol" or "4549-2" in loinc and unit != "%":
            value = value / 10.929 + 2.15  # IFCC -> NGSP
        return kind, 2.0 if _above(q, value, 8.0) else 1.0 if _above(q, value, 7.0) else 0.0
    if unit == "mmol/L" or loinc & _GLUCOSE_MMOL and unit != "mg/dL":
        value = value * 18.016
    return kind, 2.0 if _above(q, value, 300.0) else 1.0 if _above(q, value, 200.0) else 0.0


def _ingredients(request: Mapping[str, Any]) -> frozenset[str]:
    """RxNorm codes of a request's medicine: its concept, or a contained Medication's ingredients."""
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, Mapping):
        return frozenset(code for system, code in codings(concept) if system == RXNORM)
    ref = request.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, Mapping) else None
    for contained in request.get("contained") or ():
        if isinstance(contained, Mapping) and isinstance(target, str) and target == f"#{contained.get('id')}":
            found = {code for system, code in codings(contained.get("code")) if system == RXNORM}
            for ingredient in contained.get("ingredient") or ():
                if isinstance(ingredient, Mapping):
                    found |= {code for system, code in codings(ingredient.get("itemCodeableConcept")) if system == RXNORM}
            return frozenset(found)
    return frozenset()


def _medicine_key(request: Mapping[str, Any]) -> str:
    rx = _ingredients(request)
    if rx:
        return "rx:" + "+".join(sorted(rx))
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, Mapping):
        coded = sorted(f"{s}|{c}" for s, c in codings(concept))
        if coded:
            return "code:" + coded[0]
        if isinstance(concept.get("text"), str):
            return "text:" + concept["text"].strip().lower()
    ref = request.get("medicationReference")
    if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str) and not ref["reference"].startswith("#"):
        return "ref:" + ref["reference"]
    return "unknown:" + str(request.get("id"))


def _dose(request: Mapping[str, Any]) -> tuple[float, str] | None:
    for dosage in request.get("dosageInstruction") or ():
        for dr in (dosage.get("doseAndRate") or ()) if isinstance(dosage, Mapping) else ():
            q = dr.get("doseQuantity") if isinstance(dr, Mapping) else None
            if isinstance(q, Mapping) and isinstance(q.get("value"), int | float):
                return float(q["value"]), str(q.get("code") or q.get("unit") or "")
    return None


def _drug_column(rx: frozenset[str]) -> str | None:
    for drug in diabetes_drugs():
        if (len(drug.ingredients) > 1 and rx == drug.ingredients) or (len(drug.ingredients) == 1 and len(rx) == 1 and rx <= drug.ingredients):
            return drug.column
    return None


def _drug_statuses(requests: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Diabetes drug -> status code (DRUG_STATUSES): a current request, compared with the one
    it replaces (`priorPrescription`) when that is among the requests."""
    by_id = {r.get("id"): r for r in requests if isinstance(r.get("id"), str)}
    replaced = {reference_id(r.get("priorPrescription"), "MedicationRequest") for r in requests} - {None}
    out: dict[str, float] = {}
    for r in requests:
        if r.get("id") in replaced:
            continue  # superseded by a later request
        column = _drug_column(_ingredients(r))
        if column is None:
            continue
        status = DRUG_STATUSES.index("Steady")
        prior = by_id.get(reference_id(r.get("priorPrescription"), "MedicationRequest"))
        now, before = _dose(r), _dose(prior) if prior is not None else None
        if now is not None and before is not None and now[1] == before[1] and now[0] != before[0]:
            status = DRUG_STATUSES.index("Up" if now[0] > before[0] else "Down")
        out[column] = float(max(out.get(column, 0.0), status))
    return out


def _diagnosis_entries(encounter: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]], encounter_id: str) -> list[Mapping[str, Any] | None]:
    """The stay's diagnoses in rank order: the Condition of each, or None when only named."""
    by_id = {c.get("id"): c for c in conditions if c.get("resourceType") == "Condition"}
    entries = [e for e in encounter.get("diagnosis") or () if isinstance(e, Mapping)]
    if entries:
        ordered = sorted(enumerate(entries), key=lambda ie: (ie[1].get("rank") if isinstance(ie[1].get("rank"), int) else 10**6, ie[0]))
        return [by_id.get(reference_id(e.get("condition"), "Condition")) for _, e in ordered]
    # No Encounter.diagnosis: the stay's encounter-diagnosis Conditions, in the order given.
    return [c for c in by_id.values() if _of_encounter(c, encounter_id) and _live(c) and "encounter-diagnosis" in categories(c)]


def discharge_to_table(record: DischargeRecord, *, as_of: datetime, pseudonymizer: Pseudonymizer, source: str = "") -> MappedDischarge:
    encounter = ensure_resource(record.encounter, "Encounter", "Encounter")
    encounter_id = str(encounter.get("id") or "")
    start, end = _period(encounter, "Encounter")
    if start is None:
        raise MappingError("the encounter has no period.start: length of stay is unknown", path="Encounter.period.start")
    end = end or as_of
    values = np.full(len(DISCHARGE_COLUMNS), np.nan)
    col = {name: i for i, name in enumerate(DISCHARGE_COLUMNS)}
    counts: Counter[str] = Counter()

    if record.patient is not None:
        patient = ensure_resource(record.patient, "Patient", "Patient")
        if patient.get("birthDate") is not None:
            age = age_in_years(parse_date(patient["birthDate"], "Patient.birthDate"), start.date())
            values[col["age"]] = float(min(age // 10 * 10, 90))
        values[col["sex"]] = {"male": 1.0, "female": 0.0}.get(str(patient.get("gender")), math.nan)
    hospitalization = encounter.get("hospitalization") if isinstance(encounter.get("hospitalization"), Mapping) else {}
    values[col["admission_type"]] = _index(ADMISSION_TYPES, _first_value("admission_type", encounter.get("priority")))
    values[col["admission_source"]] = _index(ADMISSION_SOURCES, _first_value("admission_source", hospitalization.get("admitSource")))
    values[col["discharge"]] = _index(DISCHARGE_GROUPS, _first_value("discharge", hospitalization.get("dischargeDisposition")))
    values[col["los_days"]] = float(max(1, (end.date() - start.date()).days))

    visits: Counter[str] = Counter()
    for other in record.encounters:
        if other.get("resourceType") != "Encounter" or other.get("id") == encounter_id or not _live(other):
            continue
        other_start, _ = _period(other, "Encounter")
        if other_start is None or not (start - _YEAR <= other_start < start):
            continue
        cls = other.get("class")
        kind = default_encounter_codes().value("visit", codings({"coding": [cls]}) if isinstance(cls, Mapping) else ())
        if kind in VISIT_KINDS:
            visits[kind] += 1
    values[col["n_outpatient"]] = float(visits["outpatient"])
    values[col["n_emergency"]] = float(visits["emergency"])
    values[col["n_inpatient"]] = float(visits["inpatient"])
    counts["encounters"] = sum(visits.values()) + 1

    labs = 0
    bands: dict[str, float] = {}
    for obs in record.observations:
        if obs.get("resourceType") != "Observation" or not _live(obs) or "laboratory" not in categories(obs):
            continue
        if not _of_encounter(obs, encounter_id):
            when = observation_time(obs)
            if when is None or not (start <= when <= end):
                continue
        labs += 1
        band = _lab_band(obs)
        if band is not None:
            bands[band[0]] = max(bands.get(band[0], -1.0), band[1])
    values[col["n_lab_tests"]] = float(labs)
    values[col["a1c"]] = bands.get("a1c", math.nan)
    values[col["glucose"]] = bands.get("glucose", math.nan)
    counts["observations"] = labs

    requests = [r for r in record.medication_requests if r.get("resourceType") == "MedicationRequest" and _of_encounter(r, encounter_id) and _live(r)]
    statuses = _drug_statuses(requests)
    for column in (c for c in DISCHARGE_COLUMNS if c.startswith("drug:")):
        values[col[column]] = statuses.get(column.removeprefix("drug:"), 0.0)
    values[col["n_medications"]] = float(len({_medicine_key(r) for r in requests}))
    counts["medication_requests"] = len(requests)

    procedures = [p for p in record.procedures if p.get("resourceType") == "Procedure" and _of_encounter(p, encounter_id) and _live(p)]
    values[col["n_procedures"]] = float(len(procedures))
    counts["procedures"] = len(procedures)

    coder = default_diagnosis_coder()
    entries = _diagnosis_entries(encounter, record.conditions, encounter_id)
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
    table = DischargeTable(np.array([pseudonym], dtype=object), np.array([encounter_key], dtype=object), values[None, :])
    return MappedDischarge(pseudonym, table, dict(counts))
