"""Training files in PhysioNet 2019's layout -> the canonical table (pure; takes data frames).

The same de-identifying normalisation as the FHIR path, so both give identical tables: age in
completed years capped at 90, HospAdmTime rounded to 0.01 h. Hours missing inside a stay are
filled with empty rows (features are defined on consecutive hours); `source_row` maps each
table row back to the input row, -1 for a filled hour. A value outside its variable's
plausibility range (`tables/variables.csv`) is dropped and counted, as the FHIR path drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .deid import AGE_CAP
from .errors import MappingError
from .table import CanonicalTable
from .variables import CANONICAL_COLUMNS, drop_implausible

__all__ = [
    "PHYSIONET_COLUMNS",
    "TabularTable",
    "normalise_age",
    "normalise_hosp_adm_time",
    "physionet_to_table",
]

PHYSIONET_COLUMNS = CANONICAL_COLUMNS + ("ICULOS",)


def normalise_age(age: np.ndarray) -> np.ndarray:
    capped: np.ndarray = np.minimum(np.floor(age), AGE_CAP)
    return capped


def normalise_hosp_adm_time(hours: np.ndarray) -> np.ndarray:
    return np.round(hours, 2)


@dataclass(frozen=True, eq=False)
class TabularTable:
    table: CanonicalTable
    source_row: np.ndarray  # (n,) index into the input frame, -1 for a filled hour
    label: np.ndarray | None  # (n,) SepsisLabel per table row (0 for filled hours), if present
    implausible: dict[str, int] = field(default_factory=dict)  # variable -> cells dropped as out of range


def physionet_to_table(frame: pd.DataFrame, *, patient_column: str = "patient") -> TabularTable:
    """`frame` has a patient column, `ICULOS`, the 40 variables and optionally `SepsisLabel`."""
    missing = [c for c in (patient_column, "ICULOS") if c not in frame]
    if missing:
        raise MappingError(f"table lacks required columns: {', '.join(missing)}")
    frame = frame.reset_index(drop=True)
    order = np.lexsort((frame["ICULOS"].to_numpy(), frame[patient_column].to_numpy()))
    if not np.array_equal(order, np.arange(len(frame))):
        frame = frame.iloc[order].reset_index(drop=True)
    else:
        order = np.arange(len(frame))
    patient = frame[patient_column].to_numpy()
    iculos = frame["ICULOS"].to_numpy(dtype=float)
    if np.isnan(iculos).any() or (iculos < 1).any():
        raise MappingError("ICULOS must be a positive hour on every row")
    iculos = iculos.astype(np.int64)

    starts = np.ones(len(frame), dtype=bool)
    starts[1:] = patient[1:] != patient[:-1]
    step = np.diff(iculos, prepend=0)
    if np.any(step[~starts] < 1):
        raise MappingError("a patient has the same ICULOS on two rows")
    # Rows each input row occupies in the output: itself plus the empty hours before it.
    gap = np.where(starts, 0, step - 1)
    out_index = np.arange(len(frame)) + np.cumsum(gap)
    n_out = int(out_index[-1]) + 1 if len(frame) else 0

    values = np.full((n_out, len(CANONICAL_COLUMNS)), np.nan)
    for i, name in enumerate(CANONICAL_COLUMNS):
        if name in frame:
            values[out_index, i] = frame[name].to_numpy(dtype=float, na_value=np.nan)
    out_patient = np.empty(n_out, dtype=patient.dtype)
    out_iculos = np.empty(n_out, dtype=np.int32)
    source_row = np.full(n_out, -1, dtype=np.int64)
    source_row[out_index] = order
    # Filled hours inherit the patient of the next real row and count up to it.
    owner = np.searchsorted(out_index, np.arange(n_out), side="left")
    out_patient[:] = patient[owner]
    out_iculos[:] = iculos[owner] - (out_index[owner] - np.arange(n_out))
    if (out_index[owner] != np.arange(n_out)).any():
        # Static values are per stay: carry them into the filled hours.
        for name in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime"):
            j = CANONICAL_COLUMNS.index(name)
            values[:, j] = values[out_index[owner], j]

    age = CANONICAL_COLUMNS.index("Age")
    values[:, age] = normalise_age(values[:, age])
    adm = CANONICAL_COLUMNS.index("HospAdmTime")
    values[:, adm] = normalise_hosp_adm_time(values[:, adm])
    dropped = drop_implausible(values, CANONICAL_COLUMNS)

    label = None
    if "SepsisLabel" in frame:
        label = np.zeros(n_out, dtype=np.int8)
        label[out_index] = frame["SepsisLabel"].to_numpy(dtype=np.int8)
    return TabularTable(CanonicalTable(out_patient, out_iculos, values), source_row, label, dropped)
