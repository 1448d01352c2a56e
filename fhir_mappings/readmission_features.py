"""Canonical discharge table -> readmission model features: one code for training and serving.

Every feature of a row is computed from that row only, with element-wise operations, so a table
of one encounter (a hook call) and a table of fifty thousand (training) give identical numbers.
The spec's hash (names, derivations and READMISSION_FEATURE_VERSION) goes into the manifest.

Race is deliberately not a feature: it is a social category, not a mechanism; in this data it
mostly stands in for access to care, and a model that used it would score two clinically
identical patients differently. It is kept beside the features for subgroup evaluation only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .diagnoses import CHARLSON_WEIGHTS, DIAGNOSIS_GROUPS
from .discharge_table import (
    ADMISSION_SOURCES,
    ADMISSION_TYPES,
    DISCHARGE_GROUPS,
    DRUG_COLUMNS,
    DischargeTable,
)
from .feature_spec import Feature, FeatureSpec

__all__ = [
    "READMISSION_FEATURE_VERSION",
    "build_readmission_features",
    "charlson_index",
    "lace_points",
    "readmission_feature_spec",
]

# Bump when the arithmetic behind a feature changes, so old models refuse to load.
READMISSION_FEATURE_VERSION = "r1"

_Column = Callable[[DischargeTable], np.ndarray]
_GROUP_LABELS = {
    "infectious": "an infection",
    "sepsis": "sepsis",
    "neoplasm": "a neoplasm",
    "endocrine": "an endocrine or metabolic disorder",
    "diabetes": "diabetes",
    "diabetes_complicated": "diabetes with organ complications",
    "diabetes_acute": "diabetic ketoacidosis or hyperosmolar state",
    "fluid_electrolyte": "a fluid or electrolyte disorder",
    "blood": "a blood disorder",
    "mental": "a mental health disorder",
    "nervous": "a nervous system disorder",
    "circulatory": "a circulatory disorder",
    "hypertension": "hypertension",
    "ischemic_heart": "ischaemic heart disease",
    "arrhythmia": "an arrhythmia",
    "heart_failure": "heart failure",
    "cerebrovascular": "cerebrovascular disease",
    "vascular": "arterial disease",
    "respiratory": "a respiratory disorder",
    "pneumonia": "pneumonia",
    "copd": "COPD",
    "digestive": "a digestive disorder",
    "liver": "liver disease",
    "genitourinary": "a genitourinary disorder",
    "renal_failure": "kidney failure",
    "urinary_other": "a urinary tract disorder",
    "pregnancy": "pregnancy",
    "skin": "a skin disorder",
    "cellulitis": "cellulitis or abscess",
    "skin_ulcer": "a chronic skin ulcer",
    "musculoskeletal": "a musculoskeletal disorder",
    "osteomyelitis": "osteomyelitis",
    "congenital_perinatal": "a congenital condition",
    "symptoms": "ill-defined symptoms",
    "injury": "an injury or poisoning",
    "complication": "a complication of care",
    "supplementary": "a supplementary (V) code",
    "rehabilitation": "rehabilitation care",
    "aftercare": "aftercare",
    "external_cause": "an external cause code",
}
_DISCHARGE_LABELS = {
    "home": "Discharged home (self care)",
    "home_health": "Discharged home with home health care",
    "nursing_facility": "Discharged to a nursing facility",
    "rehabilitation": "Discharged to inpatient rehabilitation",
    "inpatient_transfer": "Transferred to another inpatient facility",
    "left_against_advice": "Left against medical advice",
    "outpatient_referral": "Referred for outpatient services",
}


def _col(name: str) -> _Column:
    return lambda t: t.column(name)


def _is(name: str, index: int) -> _Column:
    def f(t: DischargeTable) -> np.ndarray:
        v = t.column(name)
        out: np.ndarray = (v == index).astype(np.float64)
        out[np.isnan(v)] = np.nan
        return out

    return f


def _in(name: str, indices: tuple[int, ...]) -> _Column:
    def f(t: DischargeTable) -> np.ndarray:
        v = t.column(name)
        out = np.isin(v, indices).astype(np.float64)
        out[np.isnan(v)] = np.nan
        return out

    return f


def _dx_primary(index: int) -> _Column:
    return lambda t: (t.column("dx1") == index).astype(np.float64)


def _dx_any(index: int) -> _Column:
    return lambda t: sum(
        ((t.column(f"dx{k}") == index).astype(np.float64) for k in (1, 2, 3)), np.zeros(len(t))
    )


def charlson_index(t: DischargeTable) -> np.ndarray:
    """Charlson score with the hierarchy rules (the severe form replaces the mild one)."""
    flags = {c: t.column(f"charlson:{c}") for c in CHARLSON_WEIGHTS}
    flags["diabetes"] = flags["diabetes"] * (1 - flags["diabetes_complicated"])
    flags["mild_liver"] = flags["mild_liver"] * (1 - flags["severe_liver"])
    flags["malignancy"] = flags["malignancy"] * (1 - flags["metastatic_tumour"])
    total = np.zeros(len(t))
    for c, w in CHARLSON_WEIGHTS.items():
        total = total + w * flags[c]
    return total


def lace_points(t: DischargeTable) -> np.ndarray:
    """A LACE-style score from the fields a discharge table has (van Walraven 2010 points):
    L length of stay, A emergent admission, C Charlson (from three diagnoses), E emergency
    visits (the past year here, not six months)."""
    los = t.column("los_days")
    l_pts = np.select([los < 1, los < 2, los < 3, los < 4, los < 7, los < 14], [0, 1, 2, 3, 4, 5], 7).astype(
        np.float64
    )
    l_pts[np.isnan(los)] = 0.0
    admission = t.column("admission_type")
    a_pts = np.where(
        np.isin(admission, (ADMISSION_TYPES.index("emergency"), ADMISSION_TYPES.index("urgent"))), 3.0, 0.0
    )
    c = charlson_index(t)
    c_pts = np.where(c >= 4, 5.0, c)
    e = t.column("n_emergency")
    e_pts = np.where(np.isnan(e), 0.0, np.minimum(e, 4.0))
    return l_pts + a_pts + c_pts + e_pts


def _drug_count(t: DischargeTable) -> np.ndarray:
    return sum(((t.column(f"drug:{d}") > 0).astype(np.float64) for d in DRUG_COLUMNS), np.zeros(len(t)))


def _drug_any(code: float) -> _Column:
    return lambda t: np.max(np.stack([(t.column(f"drug:{d}") == code) for d in DRUG_COLUMNS]), axis=0).astype(
        np.float64
    )


def _sum(*names: str) -> _Column:
    def f(t: DischargeTable) -> np.ndarray:
        total = np.zeros(len(t))
        for n in names:
            total = total + t.column(n)
        return total

    return f


def _definitions() -> list[tuple[str, str, str, _Column]]:
    """(name, label, unit, derivation). Units name how the card words a value."""
    out: list[tuple[str, str, str, _Column]] = [
        ("age", "Age", "age-band", _col("age")),
        ("sex", "Sex", "sex", _col("sex")),
        (
            "admission_emergent",
            "Emergency or urgent admission",
            "flag",
            _in("admission_type", (ADMISSION_TYPES.index("emergency"), ADMISSION_TYPES.index("urgent"))),
        ),
        (
            "admission_elective",
            "Elective admission",
            "flag",
            _is("admission_type", ADMISSION_TYPES.index("elective")),
        ),
        (
            "admitted_from_ed",
            "Admitted through the emergency department",
            "flag",
            _is("admission_source", ADMISSION_SOURCES.index("emergency_department")),
        ),
        (
            "admitted_by_transfer",
            "Admitted by transfer from another facility",
            "flag",
            _in(
                "admission_source",
                (ADMISSION_SOURCES.index("transfer_hospital"), ADMISSION_SOURCES.index("transfer_facility")),
            ),
        ),
        (
            "admitted_by_referral",
            "Admitted on referral",
            "flag",
            _is("admission_source", ADMISSION_SOURCES.index("referral")),
        ),
    ]
    for group, label in _DISCHARGE_LABELS.items():
        out.append((f"discharge_{group}", label, "flag", _is("discharge", DISCHARGE_GROUPS.index(group))))
    out += [
        ("los_days", "Length of stay", "d", _col("los_days")),
        ("n_lab_tests", "Laboratory tests this stay", "count", _col("n_lab_tests")),
        ("n_procedures", "Procedures this stay", "count", _col("n_procedures")),
        ("n_medications", "Distinct medications this stay", "count", _col("n_medications")),
        ("n_outpatient", "Outpatient visits in the past year", "count", _col("n_outpatient")),
        ("n_emergency", "Emergency visits in the past year", "count", _col("n_emergency")),
        ("n_inpatient", "Hospital admissions in the past year", "count", _col("n_inpatient")),
        (
            "n_prior_visits",
            "All visits in the past year",
            "count",
            _sum("n_outpatient", "n_emergency", "n_inpatient"),
        ),
        ("n_diagnoses", "Diagnoses recorded this stay", "count", _col("n_diagnoses")),
        ("charlson_index", "Charlson comorbidity index", "points", charlson_index),
        ("lace_points", "LACE-style score", "points", lace_points),
    ]
    for i, group in enumerate(DIAGNOSIS_GROUPS):
        out.append(
            (f"dx_primary:{group}", f"Principal diagnosis is {_GROUP_LABELS[group]}", "flag", _dx_primary(i))
        )
    for i, group in enumerate(DIAGNOSIS_GROUPS):
        out.append((f"dx_any:{group}", f"Diagnoses of {_GROUP_LABELS[group]}", "count", _dx_any(i)))
    for category in CHARLSON_WEIGHTS:
        out.append(
            (
                f"charlson:{category}",
                f"Comorbidity: {category.replace('_', ' ')}",
                "flag",
                _col(f"charlson:{category}"),
            )
        )
    out += [
        ("a1c", "Highest HbA1c", "band-a1c", _col("a1c")),
        ("glucose", "Highest serum glucose", "band-glucose", _col("glucose")),
        ("n_diabetes_drugs", "Diabetes medications", "count", _drug_count),
        ("diabetes_dose_up", "A diabetes medication dose was increased", "flag", _drug_any(2.0)),
        ("diabetes_dose_down", "A diabetes medication dose was decreased", "flag", _drug_any(3.0)),
    ]
    for drug in DRUG_COLUMNS:
        out.append(
            (f"drug:{drug}", drug.replace("-", " / ").capitalize(), "drug-status", _col(f"drug:{drug}"))
        )
    return out


_DEFINITIONS = _definitions()


def readmission_feature_spec() -> FeatureSpec:
    features = tuple(
        Feature(name, "static", f"{READMISSION_FEATURE_VERSION}:{name}", None, label, unit)
        for name, label, unit, _ in _DEFINITIONS
    )
    # `variable` names the derivation (`r1:<name>`); with the op it is part of the spec's hash.
    return FeatureSpec("readmission", features, READMISSION_FEATURE_VERSION, ops=frozenset({"static"}))


def build_readmission_features(table: DischargeTable, spec: FeatureSpec) -> np.ndarray:
    """(encounters x features) float32 matrix in `spec` order; NaN where unknown."""
    derivations = {name: f for name, _, _, f in _DEFINITIONS}
    out = np.full((len(table), len(spec)), np.nan, dtype=np.float32)
    for j, name in enumerate(spec.names):
        out[:, j] = derivations[name](table)
    return out
