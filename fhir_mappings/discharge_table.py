"""The canonical discharge table: one row per hospital encounter, as known at discharge.

Both the Diabetes 130-US training file (`diabetes130.py`) and FHIR R4 resources
(`discharge_fhir.py`) become this table, and the readmission features are computed from it
only. Categorical fields are small integer codes into the vocabularies below (NaN: unknown);
the code tables under `tables/` say which source code means which value.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from .diagnoses import CHARLSON_WEIGHTS, DIAGNOSIS_GROUPS
from .errors import MappingError

__all__ = [
    "ADMISSION_SOURCES",
    "ADMISSION_TYPES",
    "DISCHARGE_COLUMNS",
    "DISCHARGE_GROUPS",
    "DRUG_COLUMNS",
    "DRUG_STATUSES",
    "DischargeTable",
    "DrugRow",
    "EncounterCodes",
    "default_encounter_codes",
    "diabetes_drugs",
]

ADMISSION_TYPES = ("emergency", "urgent", "elective")  # "Newborn" (4) has no FHIR priority: unknown
ADMISSION_SOURCES = (
    "referral",
    "transfer_hospital",
    "transfer_facility",
    "emergency_department",
    "birth",
    "other",
)
DISCHARGE_GROUPS = (
    "home",
    "home_health",
    "nursing_facility",
    "rehabilitation",
    "inpatient_transfer",
    "left_against_advice",
    "outpatient_referral",
    "expired_or_hospice",
)
VISIT_KINDS = ("outpatient", "emergency", "inpatient")
DRUG_STATUSES = ("No", "Steady", "Up", "Down")  # the dataset's words; codes 0..3


def _table(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath(f"tables/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@dataclass(frozen=True, slots=True)
class DrugRow:
    column: str  # the dataset's column
    ingredients: frozenset[str]  # RxNorm ingredient codes (two for a combination product)
    display: str


@functools.cache
def diabetes_drugs() -> tuple[DrugRow, ...]:
    return tuple(
        DrugRow(r["column"], frozenset(r["rxnorm"].split("+")), r["ingredient"])
        for r in _table("diabetes_drugs.csv")
    )


DRUG_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(d.column for d in diabetes_drugs()))

DISCHARGE_COLUMNS: tuple[str, ...] = (
    "age",  # lower bound of the 10-year band, 90 for 90 and over
    "sex",  # 1 male, 0 female
    "admission_type",  # index into ADMISSION_TYPES
    "admission_source",  # index into ADMISSION_SOURCES
    "discharge",  # index into DISCHARGE_GROUPS
    "los_days",
    "n_lab_tests",
    "n_procedures",
    "n_medications",
    "n_outpatient",  # visits in the year before admission
    "n_emergency",
    "n_inpatient",
    "n_diagnoses",
    "dx1",  # index into DIAGNOSIS_GROUPS of the principal diagnosis
    "dx2",
    "dx3",
    *(f"charlson:{c}" for c in CHARLSON_WEIGHTS),  # 0/1 from the three ranked diagnoses
    "a1c",  # highest HbA1c: 0 below 7 %, 1 7-8 %, 2 above 8 %
    "glucose",  # highest serum glucose: 0 below 200 mg/dL, 1 200-300, 2 above 300
    *(f"drug:{d}" for d in DRUG_COLUMNS),  # index into DRUG_STATUSES
)
_INDEX = {name: i for i, name in enumerate(DISCHARGE_COLUMNS)}
GROUP_INDEX = {g: i for i, g in enumerate(DIAGNOSIS_GROUPS)}


class EncounterCodes:
    """(field, system, code) -> canonical value, and the standard code we send for a value."""

    def __init__(self, rows: Iterable[dict[str, str]]) -> None:
        self.rows = tuple(rows)
        self._index = {(r["field"], r["system"], r["code"]): r["value"] for r in self.rows}

    def value(self, field: str, codings: Iterable[tuple[str, str]]) -> str | None:
        for system, code in codings:
            found = self._index.get((field, system, code))
            if found is not None:
                return found
        return None

    def dataset_value(self, field: str, code: object) -> str | None:
        return self._index.get((field, "diabetes130", str(code)))

    def primary(self, field: str, value: str) -> tuple[str, str, str] | None:
        """The first standard (non-dataset) coding listed for a value."""
        for r in self.rows:
            if r["field"] == field and r["value"] == value and r["system"] != "diabetes130":
                return r["system"], r["code"], r["display"]
        return None


@functools.cache
def default_encounter_codes() -> EncounterCodes:
    return EncounterCodes(_table("encounter_codes.csv"))


@dataclass(frozen=True, eq=False)
class DischargeTable:
    patient: np.ndarray  # (n,) patient key (pseudonym or the dataset's de-identified number)
    encounter: np.ndarray  # (n,) encounter key
    values: np.ndarray  # (n, len(DISCHARGE_COLUMNS)) float64

    def __post_init__(self) -> None:
        n = len(self.patient)
        if self.encounter.shape != (n,) or self.values.shape != (n, len(DISCHARGE_COLUMNS)):
            raise MappingError("discharge table arrays have inconsistent shapes")

    def __len__(self) -> int:
        return len(self.patient)

    @staticmethod
    def column_index(name: str) -> int:
        return _INDEX[name]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, _INDEX[name]]

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.values, columns=list(DISCHARGE_COLUMNS))
        frame.insert(0, "encounter", self.encounter)
        frame.insert(0, "patient", self.patient)
        return frame

    @classmethod
    def concat(cls, tables: Iterable[DischargeTable]) -> DischargeTable:
        parts = list(tables)
        if not parts:
            return cls(
                np.empty(0, dtype=object), np.empty(0, dtype=object), np.empty((0, len(DISCHARGE_COLUMNS)))
            )
        return cls(
            np.concatenate([t.patient for t in parts]),
            np.concatenate([t.encounter for t in parts]),
            np.concatenate([t.values for t in parts]),
        )
