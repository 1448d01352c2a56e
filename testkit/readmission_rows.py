"""Hand-made Diabetes 130-US rows, for tests and the demo when the dataset is not there."""

from __future__ import annotations

from typing import Any

DRUGS = (
    "metformin repaglinide nateglinide chlorpropamide glimepiride acetohexamide glipizide glyburide "
    "tolbutamide pioglitazone rosiglitazone acarbose miglitol troglitazone tolazamide examide "
    "citoglipton insulin glyburide-metformin glipizide-metformin glimepiride-pioglitazone "
    "metformin-rosiglitazone metformin-pioglitazone"
).split()


def row(**changes: Any) -> dict[str, Any]:
    """An older man with heart failure, admitted through the ED, discharged to a nursing facility."""
    base: dict[str, Any] = {
        "encounter_id": 900001,
        "patient_nbr": 700001,
        "race": "Caucasian",
        "gender": "Male",
        "age": "[70-80)",
        "weight": None,
        "admission_type_id": 1,
        "discharge_disposition_id": 3,
        "admission_source_id": 7,
        "time_in_hospital": 6,
        "payer_code": None,
        "medical_specialty": None,
        "num_lab_procedures": 45,
        "num_procedures": 2,
        "num_medications": 18,
        "number_outpatient": 1,
        "number_emergency": 2,
        "number_inpatient": 2,
        "diag_1": "428",
        "diag_2": "250.43",
        "diag_3": "585",
        "number_diagnoses": 9,
        "max_glu_serum": ">300",
        "A1Cresult": ">8",
        "change": "Ch",
        "diabetesMed": "Yes",
        "readmitted": "<30",
    }
    base.update({d: "No" for d in DRUGS})
    base.update({"insulin": "Up", "metformin": "Steady", "glyburide-metformin": "Down"})
    base.update(changes)
    return base
