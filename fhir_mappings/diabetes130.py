"""UCI Diabetes 130-US hospitals rows -> the canonical discharge table (pure; takes data frames).

The file's layout: one row per encounter with `encounter_id`, `patient_nbr`, demographics,
admission/discharge ids (see IDs_mapping.csv), counts, `diag_1..3` (ICD-9-CM), `A1Cresult`,
`max_glu_serum`, one column per diabetes drug (No/Steady/Up/Down) and `readmitted`.
The same normalisation as the FHIR path: counts never below what the coded items imply.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .diagnoses import ICD9, default_diagnosis_coder
from .discharge_table import (
    ADMISSION_SOURCES,
    ADMISSION_TYPES,
    DISCHARGE_COLUMNS,
    DISCHARGE_GROUPS,
    DRUG_COLUMNS,
    DRUG_STATUSES,
    GROUP_INDEX,
    DischargeTable,
    default_encounter_codes,
)
from .errors import MappingError

__all__ = [
    "A1C_BANDS",
    "DIABETES130_REQUIRED",
    "EXCLUDED_DISPOSITIONS",
    "GLUCOSE_BANDS",
    "age_band",
    "diabetes130_to_table",
    "readmission_cohort",
    "readmitted_within_30_days",
]

EXCLUDED_DISPOSITIONS = frozenset({11, 13, 14, 19, 20, 21})  # expired or hospice
A1C_BANDS = {"Norm": 0.0, ">7": 1.0, ">8": 2.0}
GLUCOSE_BANDS = {"Norm": 0.0, ">200": 1.0, ">300": 2.0}
DIABETES130_REQUIRED = (
    "encounter_id",
    "patient_nbr",
    "gender",
    "age",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "diag_1",
    "diag_2",
    "diag_3",
    "number_diagnoses",
)


def age_band(text: object) -> float:
    """'[70-80)' -> 70.0; NaN when unreadable."""
    if not isinstance(text, str) or not text.startswith("["):
        return float("nan")
    try:
        return float(min(int(text[1:].split("-")[0]), 90))
    except ValueError:
        return float("nan")


def readmission_cohort(frame: pd.DataFrame) -> pd.DataFrame:
    """The standard cohort: each patient's first encounter, not ending in death or hospice."""
    missing = [c for c in ("encounter_id", "patient_nbr", "discharge_disposition_id") if c not in frame]
    if missing:
        raise MappingError(f"not in the Diabetes 130-US layout, missing: {', '.join(missing)}")
    ordered = frame.sort_values("encounter_id", kind="stable")
    first = ordered.drop_duplicates("patient_nbr", keep="first")
    disposition = pd.to_numeric(first["discharge_disposition_id"], errors="coerce")
    return first[~disposition.isin(EXCLUDED_DISPOSITIONS)].reset_index(drop=True)


def readmitted_within_30_days(frame: pd.DataFrame) -> np.ndarray:
    return (frame["readmitted"].astype(str).str.strip() == "<30").to_numpy(dtype=np.int8)


def _vocab_index(field: str, ids: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    codes = default_encounter_codes()
    lookup: dict[object, float] = {}
    for raw in ids.unique():
        try:
            key = int(float(raw))
        except (TypeError, ValueError):
            lookup[raw] = np.nan
            continue
        value = codes.dataset_value(field, key)
        lookup[raw] = float(vocabulary.index(value)) if value is not None else np.nan
    return ids.map(lookup).to_numpy(dtype=np.float64)


def _code(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text != "?" else None


def diabetes130_to_table(frame: pd.DataFrame) -> DischargeTable:
    missing = [c for c in DIABETES130_REQUIRED if c not in frame]
    if missing:
        raise MappingError(f"not in the Diabetes 130-US layout, missing: {', '.join(missing)}")
    n = len(frame)
    values = np.full((n, len(DISCHARGE_COLUMNS)), np.nan)
    col = {name: i for i, name in enumerate(DISCHARGE_COLUMNS)}

    def num(name: str) -> np.ndarray:
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)

    values[:, col["age"]] = frame["age"].map(age_band).to_numpy(dtype=np.float64)
    values[:, col["sex"]] = frame["gender"].map({"Male": 1.0, "Female": 0.0}).to_numpy(dtype=np.float64)
    values[:, col["admission_type"]] = _vocab_index(
        "admission_type", frame["admission_type_id"], ADMISSION_TYPES
    )
    values[:, col["admission_source"]] = _vocab_index(
        "admission_source", frame["admission_source_id"], ADMISSION_SOURCES
    )
    values[:, col["discharge"]] = _vocab_index(
        "discharge", frame["discharge_disposition_id"], DISCHARGE_GROUPS
    )
    values[:, col["los_days"]] = num("time_in_hospital")
    values[:, col["n_procedures"]] = num("num_procedures")
    values[:, col["n_outpatient"]] = num("number_outpatient")
    values[:, col["n_emergency"]] = num("number_emergency")
    values[:, col["n_inpatient"]] = num("number_inpatient")

    a1c = frame["A1Cresult"].map(A1C_BANDS) if "A1Cresult" in frame else pd.Series(np.nan, index=frame.index)
    glucose = (
        frame["max_glu_serum"].map(GLUCOSE_BANDS)
        if "max_glu_serum" in frame
        else pd.Series(np.nan, index=frame.index)
    )
    values[:, col["a1c"]] = a1c.to_numpy(dtype=np.float64)
    values[:, col["glucose"]] = glucose.to_numpy(dtype=np.float64)
    coded_labs = (~np.isnan(values[:, col["a1c"]])).astype(float) + (
        ~np.isnan(values[:, col["glucose"]])
    ).astype(float)
    values[:, col["n_lab_tests"]] = np.fmax(num("num_lab_procedures"), coded_labs)

    status = {word: float(i) for i, word in enumerate(DRUG_STATUSES)}
    given = np.zeros(n)
    for drug in DRUG_COLUMNS:
        codes = (
            frame[drug].map(status).fillna(0.0).to_numpy(dtype=np.float64) if drug in frame else np.zeros(n)
        )
        values[:, col[f"drug:{drug}"]] = codes
        given += codes > 0
    values[:, col["n_medications"]] = np.fmax(num("num_medications"), given)

    coder = default_diagnosis_coder()
    diag = [[_code(v) for v in frame[f"diag_{k}"].tolist()] for k in (1, 2, 3)]
    n_coded = np.zeros(n)
    for k, dx_codes in enumerate(diag, start=1):
        groups = np.full(n, np.nan)
        for i, code in enumerate(dx_codes):
            if code is not None:
                n_coded[i] += 1
                group = coder.group(ICD9, code)
                groups[i] = GROUP_INDEX[group] if group is not None else np.nan
        values[:, col[f"dx{k}"]] = groups
    values[:, col["n_diagnoses"]] = np.fmax(num("number_diagnoses"), n_coded)
    for i in range(n):
        found: set[str] = set()
        for dx_codes in diag:
            if dx_codes[i] is not None:
                found |= coder.charlson(ICD9, dx_codes[i])
        for category in found:
            values[i, col[f"charlson:{category}"]] = 1.0
    charlson_cols = [j for name, j in col.items() if name.startswith("charlson:")]
    block = values[:, charlson_cols]
    block[np.isnan(block)] = 0.0
    values[:, charlson_cols] = block
    return DischargeTable(
        patient=frame["patient_nbr"].to_numpy(),
        encounter=frame["encounter_id"].to_numpy(),
        values=values,
    )
