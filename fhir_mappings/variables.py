"""The canonical clinical variables: PhysioNet 2019's 40 columns, with units and clinical names.

The table itself is data (`tables/variables.csv`); this module only loads it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "CANONICAL_COLUMNS",
    "CLINICAL_VARIABLES",
    "LAB_VARIABLES",
    "STATIC_VARIABLES",
    "VARIABLES",
    "VITAL_VARIABLES",
    "Variable",
    "variable",
]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    kind: str  # vital | lab | demographic | admin
    unit: str  # canonical UCUM unit
    label: str  # clinical words for cards and reports


def _load() -> tuple[Variable, ...]:
    text = resources.files(__package__).joinpath("tables/variables.csv").read_text(encoding="utf-8")
    return tuple(Variable(r["variable"], r["kind"], r["unit"], r["label"]) for r in csv.DictReader(text.splitlines()))


VARIABLES: tuple[Variable, ...] = _load()
_BY_NAME = {v.name: v for v in VARIABLES}
VITAL_VARIABLES = tuple(v.name for v in VARIABLES if v.kind == "vital")
LAB_VARIABLES = tuple(v.name for v in VARIABLES if v.kind == "lab")
CLINICAL_VARIABLES = VITAL_VARIABLES + LAB_VARIABLES
# Constant over a stay (ICULOS is the row's own clock and kept apart).
STATIC_VARIABLES = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
# Column order of CanonicalTable.values: measured variables, then the per-stay ones.
CANONICAL_COLUMNS = CLINICAL_VARIABLES + STATIC_VARIABLES


def variable(name: str) -> Variable:
    return _BY_NAME[name]
