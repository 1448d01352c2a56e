"""The canonical clinical variables: PhysioNet 2019's 40 columns, with units and clinical names.

The table itself is data (`tables/variables.csv`); this module only loads it. Each measured
variable has a plausibility range (`low`..`high`, inclusive, in the canonical unit): values no
living patient can have. They are wide on purpose (beyond the extremes reported in survivors)
so that only garbage, unit mistakes and sentinel numbers fall outside; both the FHIR path and the
tabular (training) path drop such a value and count it, so the two keep agreeing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = [
    "CANONICAL_COLUMNS",
    "CLINICAL_VARIABLES",
    "LAB_VARIABLES",
    "PLAUSIBLE_RANGES",
    "STATIC_VARIABLES",
    "VARIABLES",
    "VITAL_VARIABLES",
    "Variable",
    "drop_implausible",
    "variable",
]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    kind: str  # vital | lab | demographic | admin
    unit: str  # canonical UCUM unit
    label: str  # clinical words for cards and reports
    low: float | None = None  # plausibility range in the canonical unit (None: not checked)
    high: float | None = None
    range_note: str = ""  # why the range is where it is, when that is not obvious

    def plausible(self, value: float) -> bool:
        """False for a value outside the range (and for NaN); True when there is no range."""
        if self.low is None or self.high is None:
            return True
        return self.low <= value <= self.high


def _bound(text: str) -> float | None:
    if not text.strip():
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("plausibility bounds must be finite numbers")
    return value


def _load() -> tuple[Variable, ...]:
    text = resources.files(__package__).joinpath("tables/variables.csv").read_text(encoding="utf-8")
    out = []
    for r in csv.DictReader(text.splitlines()):
        low, high = _bound(r["low"]), _bound(r["high"])
        if (low is None) != (high is None) or (low is not None and high is not None and low > high):
            raise ValueError(f"variables.csv: {r['variable']} needs both bounds, low <= high")
        out.append(Variable(r["variable"], r["kind"], r["unit"], r["label"], low, high, r["range_note"]))
    return tuple(out)


VARIABLES: tuple[Variable, ...] = _load()
_BY_NAME = {v.name: v for v in VARIABLES}
VITAL_VARIABLES = tuple(v.name for v in VARIABLES if v.kind == "vital")
LAB_VARIABLES = tuple(v.name for v in VARIABLES if v.kind == "lab")
CLINICAL_VARIABLES = VITAL_VARIABLES + LAB_VARIABLES
# Constant over a stay (ICULOS is the row's own clock and kept apart).
STATIC_VARIABLES = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
# Column order of CanonicalTable.values: measured variables, then the per-stay ones.
CANONICAL_COLUMNS = CLINICAL_VARIABLES + STATIC_VARIABLES
# variable -> (low, high), for the variables that have a range.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    v.name: (v.low, v.high) for v in VARIABLES if v.low is not None and v.high is not None
}


def variable(name: str) -> Variable:
    return _BY_NAME[name]


def drop_implausible(values: np.ndarray, columns: Sequence[str]) -> dict[str, int]:
    """Set values outside their variable's range to NaN, in place; the count dropped per variable.

    The tabular twin of the check `observations.scan_observation` makes on each FHIR value.
    """
    dropped: dict[str, int] = {}
    for j, name in enumerate(columns):
        bounds = PLAUSIBLE_RANGES.get(name)
        if bounds is None:
            continue
        column = values[:, j]
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(column) & ((column < bounds[0]) | (column > bounds[1]))
        n = int(bad.sum())
        if n:
            column[bad] = np.nan
            values[:, j] = column
            dropped[name] = n
    return dropped
