"""Readmission mapping: code tables, FHIR -> discharge table, and the one-mapping check
(features from a dataset row == features from the same row sent as FHIR)."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from demo_ehr import discharge_to_fhir
from fhir_mappings import (
    DISCHARGE_COLUMNS,
    DISCHARGE_GROUPS,
    DRUG_STATUSES,
    EPIC,
    GENERIC,
    ICD9,
    ICD10,
    SNOMED,
    CodeRow,
    Pseudonymizer,
    build_readmission_features,
    charlson_index,
    charlson_score,
    default_diagnosis_coder,
    diabetes130_to_table,
    discharge_to_table,
    readmission_cohort,
    readmission_feature_spec,
)
from testkit.readmission_rows import row
from tests.conftest import DATA_DIR, need

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
KEY = Pseudonymizer(b"readmission-test-key")


def to_table(res, now=NOW, profile=GENERIC):
    return discharge_to_table(res.record(), as_of=now, pseudonymizer=KEY, profile=profile).table


def value(table, name: str) -> float:
    return float(table.values[0, DISCHARGE_COLUMNS.index(name)])


@pytest.mark.parametrize(
    ("system", "code", "group", "charlson"),
    [
        (ICD9, "428.0", "heart_failure", {"heart_failure"}),
        (ICD9, "250.43", "diabetes_complicated", {"diabetes", "diabetes_complicated"}),
        (ICD9, "250.13", "diabetes_acute", {"diabetes"}),
        (ICD9, "V57", "rehabilitation", set()),
        (ICD9, "197.7", "neoplasm", {"metastatic_tumour"}),
        (ICD10, "E11.22", "diabetes_complicated", {"diabetes", "diabetes_complicated"}),
        (ICD10, "N18.4", "renal_failure", {"renal"}),
        (ICD10, "J44.1", "copd", {"chronic_pulmonary"}),
    ],
)
def test_codes_map_to_groups_and_charlson(system: str, code: str, group: str, charlson: set[str]) -> None:
    coder = default_diagnosis_coder()
    assert coder.group(system, code) == group
    assert coder.charlson(system, code) == charlson


def test_snomed_goes_through_the_mapping_table_and_charlson_keeps_the_severe_form() -> None:
    coder = default_diagnosis_coder()
    assert coder.best([(SNOMED, "84114007")]) == ("icd9", "428.0")
    assert coder.best([(SNOMED, "not-in-table")]) is None
    assert charlson_score({"diabetes", "diabetes_complicated", "renal"}) == 4  # 2 + 2, uncomplicated dropped
    assert charlson_score({"malignancy", "metastatic_tumour"}) == 6


def test_row_and_fhir_give_the_same_table_for_a_hand_made_row() -> None:
    r = row()
    expected = diabetes130_to_table(pd.DataFrame([r]))
    got = to_table(discharge_to_fhir(r, discharged_at=NOW))
    np.testing.assert_array_equal(got.values, expected.values)
    assert value(got, "discharge") == DISCHARGE_GROUPS.index("nursing_facility")
    assert value(got, "drug:insulin") == DRUG_STATUSES.index("Up")
    assert value(got, "drug:glyburide-metformin") == DRUG_STATUSES.index("Down")
    assert value(got, "n_inpatient") == 2 and value(got, "a1c") == 2 and value(got, "glucose") == 2
    assert charlson_index(got)[0] == 1 + 2 + 2  # heart failure, complicated diabetes, renal
    assert got.patient[0].startswith("pa-") and "700001" not in got.patient[0]


def test_fhir_coded_otherwise_maps_the_same() -> None:
    """SNOMED and ICD-10 diagnoses, HbA1c in mmol/mol, glucose in mmol/L, visits older than a year."""
    res = discharge_to_fhir(row(), discharged_at=NOW)
    res.conditions[0]["code"] = {"coding": [{"system": SNOMED, "code": "84114007"}]}  # heart failure
    res.conditions[1]["code"] = {"coding": [{"system": ICD10, "code": "E11.22"}]}
    a1c = next(o for o in res.observations if o["id"].endswith("-a1c"))
    a1c["code"]["coding"][0]["code"] = "4549-2"
    a1c["valueQuantity"] = {
        "value": 75,
        "unit": "mmol/mol",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/mol",
    }  # 9.0 %
    glucose = next(o for o in res.observations if o["id"].endswith("-glucose"))
    glucose["valueQuantity"] = {
        "value": 12.0,
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }  # 216 mg/dL
    old = dict(res.history[0], id="old-visit", period={"start": (NOW - timedelta(days=500)).isoformat()})
    res.history.append(old)
    table = to_table(res)
    assert value(table, "a1c") == 2 and value(table, "glucose") == 1
    assert value(table, "n_inpatient") + value(table, "n_emergency") + value(table, "n_outpatient") == 5
    assert value(table, "charlson:heart_failure") == 1 and value(table, "charlson:diabetes_complicated") == 1


def test_missing_items_stay_missing() -> None:
    r = row(
        A1Cresult="None",
        max_glu_serum="None",
        gender="Unknown/Invalid",
        diag_2=None,
        discharge_disposition_id=25,
    )
    table = to_table(discharge_to_fhir(r, discharged_at=NOW))
    np.testing.assert_array_equal(table.values, diabetes130_to_table(pd.DataFrame([r])).values)
    for name in ("a1c", "glucose", "sex", "dx2", "discharge"):
        assert math.isnan(value(table, name)), name


@pytest.mark.data
def test_features_from_rows_equal_features_from_fhir_for_many_rows() -> None:
    path = need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US")
    frame = pd.read_csv(path, keep_default_na=False, na_values=["?", ""], low_memory=False)
    cohort = readmission_cohort(frame).sample(1500, random_state=3).reset_index(drop=True)
    spec = readmission_feature_spec()
    from_rows = build_readmission_features(diabetes130_to_table(cohort), spec)
    for i, r in enumerate(cohort.to_dict("records")):
        from_fhir = build_readmission_features(to_table(discharge_to_fhir(r, discharged_at=NOW)), spec)
        np.testing.assert_array_equal(from_fhir[0], from_rows[i], err_msg=f"row {i}")


def test_the_vendor_profile_applies_to_the_discharge_mapping() -> None:
    """Epic's own patient classes count as visits and a site-local glucose code is read as glucose
    under the profiles that know them, and not under the generic one."""
    res = discharge_to_fhir(
        row(number_outpatient=0, number_emergency=0, number_inpatient=0), discharged_at=NOW
    )
    epic_class = {
        "system": "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260",
        "code": "4",
        "display": "HOV",
    }
    visit = dict(res.encounter, id="epic-hov", period={"start": (NOW - timedelta(days=40)).isoformat()})
    visit["class"] = epic_class
    res.history[:] = [visit]
    glucose = next(o for o in res.observations if o["id"].endswith("-glucose"))
    glucose["code"] = {"coding": [{"system": "http://site.example/CodeSystem/lab", "code": "GLU-S"}]}
    glucose["valueQuantity"] = {"value": 250, "unit": "mg/dL"}  # band 1 (200-300)
    site = dataclasses.replace(
        EPIC,
        codes=EPIC.codes.extended(
            [
                CodeRow(
                    variable="Glucose",
                    system="http://site.example/CodeSystem/lab",
                    code="GLU-S",
                    category=None,
                    priority=1,
                    display="serum glucose (site code)",
                    standard=False,
                )
            ]
        ),
    )
    generic = to_table(res, profile=GENERIC)
    local = to_table(res, profile=site)
    assert value(generic, "n_outpatient") == 0 and math.isnan(value(generic, "glucose"))
    assert value(local, "n_outpatient") == 1 and value(local, "glucose") == 1
    # Everything else reads the same under either profile.
    others = [i for i, c in enumerate(DISCHARGE_COLUMNS) if c not in {"n_outpatient", "glucose"}]
    np.testing.assert_array_equal(generic.values[:, others], local.values[:, others])
