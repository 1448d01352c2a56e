"""Diabetes 130-US rows -> the FHIR R4 resources an EHR would hold for that hospital stay.

Used by the parity test (row -> table must equal row -> FHIR -> table) and the demo EHR.
The dataset keeps only counts for most items, so counted-but-unnamed items are sent honestly
as such: laboratory Observations, Procedures and MedicationRequests with only a `text` saying
the source did not identify them, and secondary diagnoses named by display only. Coded items
are coded as EHRs send them: ICD-9-CM Conditions ranked in Encounter.diagnosis, HbA1c and
glucose in LOINC with UCUM units (the dataset's bands as comparator quantities, e.g. `>8 %`),
diabetes drugs by RxNorm ingredient (combinations as a contained Medication with two
ingredients) and dose changes as a new request whose `priorPrescription` had another dose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from fhir_mappings import (
    ADMISSION_SOURCES,
    ADMISSION_TYPES,
    DISCHARGE_GROUPS,
    ICD9,
    RXNORM,
    DischargeRecord,
    age_band,
    default_encounter_codes,
    diabetes_drugs,
)

__all__ = ["DischargeResources", "discharge_to_fhir"]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_A1C = {">8": (8.0, ">"), ">7": (7.0, ">"), "Norm": (7.0, "<")}
_GLUCOSE = {">300": (300.0, ">"), ">200": (200.0, ">"), "Norm": (200.0, "<")}
_VISIT_CLASS = {
    "n_outpatient": ("AMB", "ambulatory"),
    "n_emergency": ("EMER", "emergency"),
    "n_inpatient": ("IMP", "inpatient encounter"),
}
_DOSE = {"Steady": None, "Up": (1.0, 2.0), "Down": (2.0, 1.0)}  # (prior, current) doses


@dataclass
class DischargeResources:
    patient: dict[str, Any]
    encounter: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier encounters
    conditions: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    medication_requests: list[dict[str, Any]] = field(default_factory=list)
    procedures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])

    @property
    def encounter_id(self) -> str:
        return str(self.encounter["id"])

    def record(self) -> DischargeRecord:
        """The stay as the readmission service gathers it (the encounter among the history)."""
        return DischargeRecord(
            self.patient_id,
            self.patient,
            self.encounter,
            [self.encounter, *self.history],
            self.conditions,
            self.observations,
            self.medication_requests,
            self.procedures,
        )

    def all(self) -> list[dict[str, Any]]:
        return [
            self.patient,
            self.encounter,
            *self.history,
            *self.conditions,
            *self.observations,
            *self.medication_requests,
            *self.procedures,
        ]


def _instant(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def _coding(field_name: str, dataset_id: Any, vocabulary: tuple[str, ...]) -> dict[str, Any] | None:
    codes = default_encounter_codes()
    key = _int(dataset_id)
    value = codes.dataset_value(field_name, key) if key is not None else None
    if value is None or value not in vocabulary:
        return None
    primary = codes.primary(field_name, value)
    if primary is None:
        return None
    system, code, display = primary
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _birth_date(band: float, admitted: date) -> str | None:
    if math.isnan(band):
        return None
    # Five years and about half a year into the band: completed years at admission are band + 5.
    years = int(band) + 5
    return (admitted - timedelta(days=int(years * 365.25) + 180)).isoformat()


def _text_concept(text: str) -> dict[str, Any]:
    return {"text": text}


def discharge_to_fhir(row: Mapping[str, Any], *, discharged_at: datetime) -> DischargeResources:
    """One Diabetes 130-US row -> Patient, Encounter (finished at `discharged_at`), earlier
    Encounters, Conditions, Observations, MedicationRequests and Procedures."""
    pid = f"d130-{_int(row['patient_nbr'])}"
    eid = f"d130-enc-{_int(row['encounter_id'])}"
    patient_ref, encounter_ref = {"reference": f"Patient/{pid}"}, {"reference": f"Encounter/{eid}"}
    los = max(1, _int(row.get("time_in_hospital")) or 1)
    admitted = discharged_at - timedelta(days=los)

    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    gender = {"Male": "male", "Female": "female"}.get(str(row.get("gender")))
    if gender:
        patient["gender"] = gender
    birth = _birth_date(age_band(row.get("age")), admitted.date())
    if birth:
        patient["birthDate"] = birth

    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"},
        "subject": patient_ref,
        "period": {"start": _instant(admitted), "end": _instant(discharged_at)},
    }
    priority = _coding("admission_type", row.get("admission_type_id"), ADMISSION_TYPES)
    if priority:
        encounter["priority"] = priority
    hospitalization: dict[str, Any] = {}
    source = _coding("admission_source", row.get("admission_source_id"), ADMISSION_SOURCES)
    if source:
        hospitalization["admitSource"] = source
    disposition = _coding("discharge", row.get("discharge_disposition_id"), DISCHARGE_GROUPS)
    if disposition:
        hospitalization["dischargeDisposition"] = disposition
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    out = DischargeResources(patient, encounter)

    for column, (code, display) in _VISIT_CLASS.items():
        source_column = {
            "n_outpatient": "number_outpatient",
            "n_emergency": "number_emergency",
            "n_inpatient": "number_inpatient",
        }[column]
        for i in range(_int(row.get(source_column)) or 0):
            start = admitted - timedelta(days=3 + (i * 11) % 355, hours=2)
            out.history.append(
                {
                    "resourceType": "Encounter",
                    "id": f"{eid}-prior-{code.lower()}-{i}",
                    "status": "finished",
                    "class": {"system": V3_ACT, "code": code, "display": display},
                    "subject": patient_ref,
                    "period": {"start": _instant(start), "end": _instant(start + timedelta(hours=3))},
                }
            )

    diagnoses: list[dict[str, Any]] = []
    coded = 0
    for k in (1, 2, 3):
        code = row.get(f"diag_{k}")
        code = str(code).strip() if isinstance(code, str) and code.strip() not in ("", "?") else None
        if code is None:
            diagnoses.append({"condition": {"display": "Diagnosis (code not in the source data)"}, "rank": k})
            continue
        coded += 1
        cid = f"{eid}-dx{k}"
        out.conditions.append(
            {
                "resourceType": "Condition",
                "id": cid,
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": "confirmed",
                        }
                    ]
                },
                "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
                "code": {"coding": [{"system": ICD9, "code": code}]},
                "subject": patient_ref,
                "encounter": encounter_ref,
            }
        )
        diagnoses.append({"condition": {"reference": f"Condition/{cid}"}, "rank": k})
    total = max(_int(row.get("number_diagnoses")) or 0, coded)
    # Trailing unnamed positions are sent only up to the recorded total.
    while len(diagnoses) > max(total, 0) and "reference" not in diagnoses[-1]["condition"]:
        diagnoses.pop()
    for k in range(len(diagnoses) + 1, total + 1):
        diagnoses.append(
            {"condition": {"display": "Secondary diagnosis (code not in the source data)"}, "rank": k}
        )
    if diagnoses:
        encounter["diagnosis"] = diagnoses

    def observation(
        oid: str, concept: dict[str, Any], when: datetime, value: dict[str, Any] | None
    ) -> dict[str, Any]:
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
            "code": concept,
            "subject": patient_ref,
            "encounter": encounter_ref,
            "effectiveDateTime": _instant(when),
        }
        if value is not None:
            obs["valueQuantity"] = value
        return obs

    results = 0
    a1c = _A1C.get(str(row.get("A1Cresult")))
    if a1c:
        results += 1
        out.observations.append(
            observation(
                f"{eid}-a1c",
                {
                    "coding": [
                        {
                            "system": LOINC,
                            "code": "4548-4",
                            "display": "Hemoglobin A1c/Hemoglobin.total in Blood",
                        }
                    ]
                },
                admitted + timedelta(hours=6),
                {"value": a1c[0], "comparator": a1c[1], "unit": "%", "system": UCUM, "code": "%"},
            )
        )
    glucose = _GLUCOSE.get(str(row.get("max_glu_serum")))
    if glucose:
        results += 1
        out.observations.append(
            observation(
                f"{eid}-glucose",
                {
                    "coding": [
                        {
                            "system": LOINC,
                            "code": "2345-7",
                            "display": "Glucose [Mass/volume] in Serum or Plasma",
                        }
                    ]
                },
                admitted + timedelta(hours=4),
                {
                    "value": glucose[0],
                    "comparator": glucose[1],
                    "unit": "mg/dL",
                    "system": UCUM,
                    "code": "mg/dL",
                },
            )
        )
    span = max(1.0, (discharged_at - admitted).total_seconds() / 3600 - 1)
    n_labs = max(_int(row.get("num_lab_procedures")) or 0, results) - results
    for i in range(n_labs):
        when = admitted + timedelta(hours=1 + (i * 7.3) % span)
        out.observations.append(
            observation(
                f"{eid}-lab-{i}",
                _text_concept("Laboratory test (not identified in the source data)"),
                when,
                None,
            )
        )

    for i in range(_int(row.get("num_procedures")) or 0):
        out.procedures.append(
            {
                "resourceType": "Procedure",
                "id": f"{eid}-proc-{i}",
                "status": "completed",
                "code": _text_concept("Procedure (not identified in the source data)"),
                "subject": patient_ref,
                "encounter": encounter_ref,
                "performedDateTime": _instant(admitted + timedelta(hours=2 + i)),
            }
        )

    def request(
        rid: str, status: str, medicine: dict[str, Any], dose: float | None, prior: str | None = None
    ) -> dict[str, Any]:
        r: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": rid,
            "status": status,
            "intent": "order",
            "subject": patient_ref,
            "encounter": encounter_ref,
            "authoredOn": _instant(admitted + timedelta(hours=1)),
            **medicine,
        }
        if dose is not None:
            r["dosageInstruction"] = [
                {
                    "doseAndRate": [
                        {"doseQuantity": {"value": dose, "unit": "dose", "system": UCUM, "code": "{dose}"}}
                    ]
                }
            ]
        if prior is not None:
            r["priorPrescription"] = {"reference": f"MedicationRequest/{prior}"}
        return r

    given = 0
    seen_columns: set[str] = set()
    for drug in diabetes_drugs():
        if drug.column in seen_columns:
            continue  # the first row of a drug (e.g. insulin) is the code we send
        seen_columns.add(drug.column)
        status = str(row.get(drug.column, "No"))
        if status not in _DOSE:
            continue
        given += 1
        rx = sorted(drug.ingredients)
        if len(rx) == 1:
            medicine: dict[str, Any] = {
                "medicationCodeableConcept": {
                    "coding": [{"system": RXNORM, "code": rx[0], "display": drug.display}]
                }
            }
        else:
            medicine = {
                "contained": [
                    {
                        "resourceType": "Medication",
                        "id": "med",
                        "code": {"text": drug.display},
                        "ingredient": [
                            {"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": c}]}} for c in rx
                        ],
                    }
                ],
                "medicationReference": {"reference": "#med"},
            }
        rid = f"{eid}-rx-{drug.column}"
        doses = _DOSE[status]
        if doses is None:
            out.medication_requests.append(request(rid, "active", medicine, None))
        else:
            out.medication_requests.append(request(f"{rid}-prior", "stopped", medicine, doses[0]))
            out.medication_requests.append(request(rid, "active", medicine, doses[1], prior=f"{rid}-prior"))
    for i in range(max(_int(row.get("num_medications")) or 0, given) - given):
        out.medication_requests.append(
            request(
                f"{eid}-med-{i}",
                "active",
                {
                    "medicationCodeableConcept": _text_concept(
                        f"Medication {i + 1} (not identified in the source data)"
                    )
                },
                None,
            )
        )
    return out
