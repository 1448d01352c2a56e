"""PhysioNet 2019 rows -> the FHIR R4 resources an EHR would hold for that ICU stay.

Used by the tests (the one-mapping check: table -> FHIR -> table must give the same features)
and by the demo EHR. Resources look as US Core EHRs send them: LOINC codes, UCUM units,
vital-signs and laboratory categories, blood pressure as an 85354-9 panel with components,
pulse oximetry coded 59408-5 + 2708-6, the ICU bed as an Encounter.location entry.

With `shapes=` (a seed or `random.Random`), every value is sent in one of the other shapes real EHRs
use, chosen at random per Observation: any alternative code of the variable from
`tables/observation_codes.csv`, any unit of `tables/units.csv` (value converted exactly; UCUM code
or a display spelling from `tables/unit_aliases.csv`), blood pressure as a panel or as separate
Observations, effectiveDateTime in UTC or with a zone offset, effectivePeriod, or `issued` only,
`amended`/`corrected` statuses; plus decoys that must not change the table: entered-in-error and
preliminary copies with other values, dataAbsentReason and valueString Observations for hours with
no value, and a shuffled order. Mapping it back must give the same canonical table.

With `significant_digits=` as well, a value sent in another unit is rounded as a laboratory
report would print it (e.g. 3 digits: creatinine 1.37 mg/dL -> 121 umol/L), so mapping it back
gives the canonical value within half a unit of that last digit (relative 5e-3 for 3 digits).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import CLINICAL_VARIABLES, default_code_table, default_unit_table, variable

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

_UNIT_TABLE = default_unit_table()
# Every code a variable may be sent with, and the category it then needs.
_ALT_CODES: dict[str, list[tuple[list[tuple[str, str]], str | None]]] = {}
for _row in _CODES.rows:
    if _row.system == LOINC and _row.code != "2708-6":
        _ALT_CODES.setdefault(_row.variable, []).append(([(_row.code, _row.display)], None))
_ALT_CODES["O2Sat"].append(
    ([("59408-5", "Pulse oximetry"), ("2708-6", "Oxygen saturation in Arterial blood")], None)
)
_ALT_CODES["O2Sat"].append(([("2708-6", "Oxygen saturation in Arterial blood")], "vital-signs"))
_ALT_CODES["SaO2"].append(([("2708-6", "Oxygen saturation in Arterial blood")], "laboratory"))
# Every (UCUM code, spellings) a variable's value may be sent in, with its conversion.
_ALT_UNITS: dict[str, list[tuple[str, list[str], float, float]]] = {}
for (_var, _unit), _conv in _UNIT_TABLE.conversions.items():
    if _unit == _UNIT_TABLE.normalise(_unit):  # a UCUM code, not a display spelling
        _spell = [a for a, u in _UNIT_TABLE.aliases.items() if u == _unit and a != _unit]
        _ALT_UNITS.setdefault(_var, []).append((_unit, _spell, _conv.factor, _conv.offset))
_OFFSETS = (timedelta(hours=-5), timedelta(hours=-8), timedelta(hours=1), timedelta(hours=5, minutes=30))
_DECOY_STATUSES = ("entered-in-error", "preliminary", "cancelled", "registered")

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


def _slug(var: str) -> str:
    """A variable name as FHIR id characters ([A-Za-z0-9.-])."""
    return var.lower().replace("_", "-")


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
    oid: str,
    category: str,
    codes: Iterable[tuple[str, str]],
    patient_ref: str,
    encounter_ref: str,
    when: datetime,
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


class _Shaper:
    """Random but reproducible alternative shapes for one stay (see the module docstring)."""

    def __init__(self, rng: random.Random, significant_digits: int | None = None) -> None:
        self.rng = rng
        self.digits = significant_digits

    def codes(
        self, var: str, default: list[tuple[str, str]], category: str
    ) -> tuple[list[tuple[str, str]], str]:
        codes, needs = self.rng.choice(_ALT_CODES[var]) if self.rng.random() < 0.7 else (default, None)
        return codes, needs or category

    def quantity(self, var: str, value: float) -> dict[str, Any]:
        canonical = variable(var).unit
        options = _ALT_UNITS.get(var, [])
        if not options or self.rng.random() < 0.4:
            return {"value": float(value), "unit": canonical, "system": UCUM, "code": canonical}
        unit, spellings, factor, offset = self.rng.choice(options)
        sent = float((value - offset) / factor)
        if self.digits is not None:
            sent = float(f"{sent:.{self.digits}g}")
        if spellings and self.rng.random() < 0.3:
            return {"value": sent, "unit": self.rng.choice(spellings)}  # display spelling, no UCUM code
        return {"value": sent, "unit": unit, "system": UCUM, "code": unit}

    def timing(self, obs: dict[str, Any], when: datetime, lab: bool) -> None:
        del obs["effectiveDateTime"]
        r = self.rng.random()
        if r < 0.3:
            obs["effectiveDateTime"] = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
        elif r < 0.6:
            tz = timezone(self.rng.choice(_OFFSETS))
            obs["effectiveDateTime"] = when.astimezone(tz).isoformat(timespec="seconds")
        elif r < 0.8 or not lab:
            start = when - timedelta(minutes=self.rng.choice((1, 5, 10)))
            obs["effectivePeriod"] = {"start": _instant(start), "end": _instant(when)}
        else:
            obs["issued"] = when.astimezone(timezone(self.rng.choice(_OFFSETS))).isoformat(
                timespec="milliseconds"
            )
        if self.rng.random() < 0.1:
            obs["status"] = self.rng.choice(("amended", "corrected"))

    def decoys(self, obs: dict[str, Any], var: str, value: float) -> list[dict[str, Any]]:
        """Copies of a real value that the mapping must ignore."""
        if self.rng.random() > 0.05:
            return []
        decoy = {**obs, "id": obs["id"] + "-x", "status": self.rng.choice(_DECOY_STATUSES)}
        decoy["valueQuantity"] = {**obs["valueQuantity"], "value": obs["valueQuantity"]["value"] * 3 + 7}
        return [decoy]

    def absent(self, oid: str, var: str, make: Any) -> list[dict[str, Any]]:
        """An hour without a value: sometimes an Observation that says so."""
        if self.rng.random() > 0.03:
            return []
        obs = make(oid)
        if self.rng.random() < 0.5:
            obs["dataAbsentReason"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                        "code": "not-performed",
                    }
                ]
            }
        else:
            obs["valueString"] = self.rng.choice(("see note", "unable to obtain", "hemolysed"))
        return [obs]


def stay_to_fhir(
    rows: pd.DataFrame,
    *,
    icu_start: datetime,
    up_to_hour: int | None = None,
    shapes: int | random.Random | None = None,
    significant_digits: int | None = None,
) -> StayResources:
    """One patient's rows (set A layout) -> Patient, Encounter, Location, Observations.

    `shapes`: None sends the plain US Core shape; a seed (or Random) sends varied real-EHR shapes.
    `significant_digits`: with `shapes`, round values sent in another unit as a lab report would.
    """
    rng = None if shapes is None else shapes if isinstance(shapes, random.Random) else random.Random(shapes)
    shaper = None if rng is None else _Shaper(rng, significant_digits)
    first = rows.iloc[0]
    pid = f"physionet-{int(first['patient'])}"
    patient_ref, encounter_ref = f"Patient/{pid}", f"Encounter/{pid}-stay"
    unit = "MICU" if first.get("Unit1") == 1 else "SICU" if first.get("Unit2") == 1 else None
    loc_id, loc_name = _UNITS[unit]
    gender = (
        {1.0: "male", 0.0: "female"}.get(float(first["Gender"])) if not pd.isna(first["Gender"]) else None
    )
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
        if "SBP" in present and "DBP" in present and (shaper is None or shaper.rng.random() < 0.6):
            obs = _observation(
                f"{pid}-{k}-bp",
                "vital-signs",
                [("85354-9", "Blood pressure panel")],
                patient_ref,
                encounter_ref,
                vital_time,
            )
            obs["component"] = [
                {
                    "code": {
                        "coding": [{"system": LOINC, "code": _PRIMARY[v][0], "display": _PRIMARY[v][1]}]
                    },
                    "valueQuantity": _quantity(v, present[v])
                    if shaper is None
                    else shaper.quantity(v, present[v]),
                }
                for v in ("SBP", "DBP")
            ]
            del present["SBP"], present["DBP"]
            if shaper is not None:
                shaper.timing(obs, vital_time, lab=False)
            observations.append(obs)
        for var, value in present.items():
            kind = variable(var).kind
            if var == "O2Sat":
                codes = [
                    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
                    ("2708-6", "Oxygen saturation in Arterial blood"),
                ]
            else:
                codes = [_PRIMARY[var]]
            category = "vital-signs" if kind == "vital" else "laboratory"
            when = vital_time if kind == "vital" else lab_time
            if shaper is not None:
                codes, category = shaper.codes(var, codes, category)
            obs = _observation(f"{pid}-{k}-{_slug(var)}", category, codes, patient_ref, encounter_ref, when)
            if shaper is None:
                obs["valueQuantity"] = _quantity(var, value)
            else:
                obs["valueQuantity"] = shaper.quantity(var, value)
                observations += shaper.decoys(obs, var, value)
                shaper.timing(obs, when, lab=kind != "vital")
            observations.append(obs)
        if shaper is not None:
            for var in values:
                if var not in present and var not in ("SBP", "DBP"):
                    kind = variable(var).kind
                    observations += shaper.absent(
                        f"{pid}-{k}-{_slug(var)}-absent",
                        var,
                        lambda oid, var=var, kind=kind, when=(vital_time if kind == "vital" else lab_time): (
                            _observation(
                                oid,
                                "vital-signs" if kind == "vital" else "laboratory",
                                [_PRIMARY[var]],
                                patient_ref,
                                encounter_ref,
                                when,
                            )
                        ),
                    )
    if shaper is not None:
        shaper.rng.shuffle(observations)
    return StayResources(patient, encounter, location, observations)
