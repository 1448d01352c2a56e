"""Plausibility ranges (tables/variables.csv): a value no living patient can have is dropped and
counted, in the FHIR path and in the tabular (training) path alike, and never scored."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from demo_ehr import stay_to_fhir
from fhir_mappings import (
    CLINICAL_VARIABLES,
    GENERIC,
    PLAUSIBLE_RANGES,
    VARIABLES,
    MappingReport,
    PatientRecord,
    Pseudonymizer,
    measurements_from_observation,
    physionet_to_table,
    to_canonical,
    variable,
)
from tests.handmade import vital_sign

PSEUDO = Pseudonymizer(b"plausibility-key-0123456789")
ICU_START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _obs(loinc: str, value: object, unit: str, **quantity: object) -> dict:
    return vital_sign("o1", loinc, value, unit, "2026-03-01T10:00:00Z", **quantity)


def _map(obs: dict) -> tuple[list[float], MappingReport]:
    report = MappingReport()
    return [m.value for m in measurements_from_observation(obs, GENERIC, report)], report


def test_every_measured_variable_has_a_finite_range_from_the_table() -> None:
    for name in CLINICAL_VARIABLES:
        low, high = PLAUSIBLE_RANGES[name]
        assert math.isfinite(low) and math.isfinite(high) and low < high, name
        assert (variable(name).low, variable(name).high) == (low, high)
    assert {v.name for v in VARIABLES if v.low is not None} == set(CLINICAL_VARIABLES) | {
        "Age",
        "HospAdmTime",
    }
    assert PLAUSIBLE_RANGES["HR"] == (0, 300) and PLAUSIBLE_RANGES["pH"] == (6.5, 8.0)


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "variable_name"),
    [
        ("8867-4", -50, "/min", "HR"),
        ("8867-4", 1e308, "/min", "HR"),
        ("8867-4", -1e308, "/min", "HR"),
        ("8867-4", 10**400, "/min", "HR"),  # a JSON integer beyond any float
        ("8867-4", -(10**400), "/min", "HR"),
        ("8867-4", 301, "/min", "HR"),
        ("8310-5", 1e6, "Cel", "Temp"),
        ("8310-5", 98.6, "Cel", "Temp"),  # Fahrenheit sent as Celsius
        ("8310-5", 37.0, "[degF]", "Temp"),  # Celsius sent as Fahrenheit: 2.8 Cel
        ("8310-5", 1e308, "[degF]", "Temp"),  # overflows to inf in the conversion
        ("3150-0", 40, "1", "FiO2"),  # a percent sent as a fraction
        ("2744-1", 0, "[pH]", "pH"),
        ("2823-3", 27.5, "mmol/L", "Potassium"),
    ],
)
def test_impossible_values_are_dropped_and_counted(
    loinc: str, value: object, unit: str, variable_name: str
) -> None:
    values, report = _map(_obs(loinc, value, unit))
    assert values == [] and report.measurements == 0
    assert report.implausible == {variable_name: 1}
    assert report.as_dict()["implausible"] == {variable_name: 1}  # what reaches the hook log: a count


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "expected"),
    [
        ("8867-4", 300, "/min", 300.0),  # bounds are inside the range
        ("8867-4", 0, "/min", 0.0),
        ("8867-4", 280, "/min", 280.0),  # set A's highest heart rate
        ("8310-5", 20.9, "Cel", 20.9),  # deep hypothermia, as in set A
        ("8310-5", 107.6, "[degF]", 42.0),
        ("2524-7", 31, "mmol/L", 31.0),  # lactate
        ("2345-7", 2000, "mg/dL", 2000.0),  # hyperosmolar glucose
        ("3150-0", 40, "%", 0.4),
        ("2744-1", 6.62, "[pH]", 6.62),
    ],
)
def test_extreme_but_real_values_pass(loinc: str, value: float, unit: str, expected: float) -> None:
    values, report = _map(_obs(loinc, value, unit))
    assert values == pytest.approx([expected]) and not report.implausible


def _stay_rows() -> pd.DataFrame:
    """Six hours of one stay in set A's layout, some cells impossible."""
    rows = [
        {
            "patient": 7,
            "ICULOS": h,
            "HR": 90.0 + h,
            "Temp": 37.1,
            "Resp": 18.0,
            "FiO2": 0.4,
            "Potassium": 4.1,
            "Age": 67.3,
            "Gender": 0,
            "Unit1": 1,
            "Unit2": 0,
            "HospAdmTime": -3.2,
        }
        for h in range(1, 7)
    ]
    rows[1]["HR"] = -50.0
    rows[2]["Temp"] = 1e6
    rows[3]["FiO2"] = 10.0
    rows[4]["Potassium"] = 27.5
    rows[5]["HR"] = 1e308
    return pd.DataFrame(rows)


def test_the_fhir_path_and_the_tabular_path_drop_the_same_values() -> None:
    rows = _stay_rows()
    tab = physionet_to_table(rows)
    assert tab.implausible == {"HR": 2, "Temp": 1, "FiO2": 1, "Potassium": 1}
    frame = tab.table.to_frame()
    assert np.isnan(frame["HR"][[1, 5]]).all() and frame["HR"][[0, 2, 3, 4]].tolist() == [91, 93, 94, 95]
    assert np.isnan(frame["Temp"][2]) and np.isnan(frame["FiO2"][3]) and np.isnan(frame["Potassium"][4])

    stay = stay_to_fhir(rows, icu_start=ICU_START)
    record = PatientRecord(
        stay.patient_id, stay.patient, stay.encounter, stay.observations, {stay.location["id"]: stay.location}
    )
    mapped = to_canonical(record, as_of=ICU_START + timedelta(hours=5, minutes=45), pseudonymizer=PSEUDO)
    np.testing.assert_array_equal(mapped.table.values, tab.table.values)
    assert dict(mapped.report.implausible) == tab.implausible


def test_a_birth_date_after_the_icu_start_and_an_ancient_admission_are_dropped() -> None:
    rows = _stay_rows().iloc[:2]
    stay = stay_to_fhir(rows, icu_start=ICU_START)
    stay.patient["birthDate"] = "2027-01-01"
    stay.encounter["period"] = {"start": "1901-05-01T00:00:00Z"}
    old = {**stay.observations[0], "id": "ancient", "effectiveDateTime": "1950-01-01T00:00:00Z"}
    old["valueQuantity"] = {**old["valueQuantity"], "value": 150}
    record = PatientRecord(
        stay.patient_id,
        stay.patient,
        stay.encounter,
        [*stay.observations, old],
        {stay.location["id"]: stay.location},
    )
    mapped = to_canonical(record, as_of=ICU_START + timedelta(hours=1, minutes=45), pseudonymizer=PSEUDO)
    frame = mapped.table.to_frame()
    assert frame["Age"].isna().all() and frame["HospAdmTime"].isna().all()
    assert mapped.report.implausible == {"Age": 1, "HospAdmTime": 1, "HR": 1}  # HR: the -50 of hour 2
    assert mapped.report.skipped["before-stay"] == 1  # the 1950 value is not read into hour 1


@pytest.mark.data
def test_set_a_holds_only_the_documented_impossible_values(set_a: pd.DataFrame) -> None:
    """The committed model's training data: a range change that would drop real values fails here
    (see docs/mapping.md for the decision on each variable)."""
    tab = physionet_to_table(set_a)
    assert tab.implausible == {"BaseExcess": 1, "HCO3": 2, "FiO2": 2, "Chloride": 1, "Potassium": 1, "Hgb": 1}
