"""PhysioNet 2019 rows -> the FHIR R4 resources an EHR would hold for that ICU stay.

Used by the tests (the one-mapping check: table -> FHIR -> table must give the same features)
and by the demo EHR. Resources look as US Core EHRs send them: LOINC codes, UCUM units,
vital-signs and laboratory categories, blood pressure as an 85354-9 panel with components,
pulse oximetry coded 59408-5 + 2708-6, the ICU bed as an Encounter.location entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import CLINICAL_VARIABLES, default_code_table, variable

__all__ = ["StayResources", "icu_start_for_hour", "stay_to_fhir"]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

_CODES = default_code_table()
# The first LOINC code listed for each variable is the one we send (SaO2: the lab 2708-6).
_PRIMARY: dict[str, tuple[str, str]] = {}
for _row in _CODES.rows:
    if _row.system == LOINC and _row.category is None and _row.variable not in _PRIMARY:
        _PRIMARY[_row.variable] = (_row.code, _row.display)

_UNITS = {
    "MICU": ("micu", "Medical ICU (MICU)"),
    "SICU": ("sicu", "Surgical ICU (SICU)"),
    None: ("icu", "Intensive Care Unit"),
}


@dataclass
class StayResources:
    patient: dict[str, Any]
    encounter: dict[str, Any]
    location: dict[str, Any]
    observations: list[dict[str, Any]]

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])

    def vitals(self) -> list[dict[str, Any]]:
        return [o for o in self.observations if _category(o) == "vital-signs"]

    def labs(self) -> list[dict[str, Any]]:
        return [o for o in self.observations if _category(o) == "laboratory"]

    def all(self) -> list[dict[str, Any]]:
        return [self.patient, self.encounter, self.location, *self.observations]


def _category(obs: Mapping[str, Any]) -> str:
    return str(obs["category"][0]["coding"][0]["code"])


def icu_start_for_hour(now: datetime, hour: int) -> datetime:
    """An ICU start that puts `now` in the middle of ICU hour `hour`."""
    return now - timedelta(hours=hour - 0.5)


def _instant(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _birth_date(age: float, icu_start: datetime) -> str | None:
    if math.isnan(age):
        return None
    years = int(math.floor(age))
    start = icu_start.date()
    anniversary = date(start.year - years, start.month, min(start.day, 28))
    # Some days before the anniversary, so completed years at ICU start equal floor(age).
    days = min(max(int(round((age - years) * 365)), 1), 360)
    return (anniversary - timedelta(days=days)).isoformat()


def _quantity(var: str, value: float) -> dict[str, Any]:
    unit = variable(var).unit
    return {"value": float(value), "unit": unit, "system": UCUM, "code": unit}


def _observation(
    oid: str, category: str, codes: Iterable[tuple[str, str]], patient_ref: str, encounter_ref: str, when: datetime
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": c, "display": d} for c, d in codes]},
        "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref},
        "effectiveDateTime": _instant(when),
    }


def stay_to_fhir(rows: pd.DataFrame, *, icu_start: datetime, up_to_hour: int | None = None) -> StayResources:
    """One patient's rows (set A layout) -> Patient, Encounter, Location, Observations."""
    first = rows.iloc[0]
    pid = f"physionet-{int(first['patient'])}"
    patient_ref, encounter_ref = f"Patient/{pid}", f"Encounter/{pid}-stay"
    unit = "MICU" if first.get("Unit1") == 1 else "SICU" if first.get("Unit2") == 1 else None
    loc_id, loc_name = _UNITS[unit]
    gender = {1.0: "male", 0.0: "female"}.get(float(first["Gender"])) if not pd.isna(first["Gender"]) else None
    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if gender:
        patient["gender"] = gender
    birth = _birth_date(float(first["Age"]), icu_start)
    if birth:
        patient["birthDate"] = birth
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": f"{pid}-stay",
        "status": "in-progress",
        "class": {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"},
        "subject": {"reference": patient_ref},
        "location": [
            {
                "location": {"reference": f"Location/{loc_id}", "display": loc_name},
                "status": "active",
                "period": {"start": _instant(icu_start)},
            }
        ],
    }
    if not pd.isna(first["HospAdmTime"]):
        seconds = int(round(float(first["HospAdmTime"]) * 3600))
        encounter["period"] = {"start": _instant(icu_start + timedelta(seconds=seconds))}
    location = {
        "resourceType": "Location",
        "id": loc_id,
        "name": loc_name,
        "type": [{"coding": [{"system": V3_ROLE, "code": "ICU", "display": "Intensive care unit"}]}],
    }

    observations: list[dict[str, Any]] = []
    values = {v: rows[v].to_numpy(dtype=float) for v in CLINICAL_VARIABLES if v in rows}
    for i, k in enumerate(rows["ICULOS"].to_numpy(dtype=int).tolist()):
        if up_to_hour is not None and k > up_to_hour:
            break
        vital_time = icu_start + timedelta(hours=k - 1, minutes=30)
        lab_time = icu_start + timedelta(hours=k - 1, minutes=20)
        present = {v: a[i] for v, a in values.items() if not np.isnan(a[i])}
        if "SBP" in present and "DBP" in present:
            obs = _observation(f"{pid}-{k}-bp", "vital-signs", [("85354-9", "Blood pressure panel")], patient_ref, encounter_ref, vital_time)
            obs["component"] = [
                {"code": {"coding": [{"system": LOINC, "code": _PRIMARY[v][0], "display": _PRIMARY[v][1]}]},
                 "valueQuantity": _quantity(v, present.pop(v))}
                for v in ("SBP", "DBP")
            ]
            observations.append(obs)
        for var, value in present.items():
            kind = variable(var).kind
            if var == "O2Sat":
                codes = [("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"), ("2708-6", "Oxygen saturation in Arterial blood")]
            else:
                codes = [_PRIMARY[var]]
            category = "vital-signs" if kind == "vital" else "laboratory"
            obs = _observation(f"{pid}-{k}-{var.lower()}", category, codes, patient_ref, encounter_ref,
                               vital_time if kind == "vital" else lab_time)
            obs["valueQuantity"] = _quantity(var, value)
            observations.append(obs)
    return StayResources(patient, encounter, location, observations)
