from __future__ import annotations

import pytest

from fhir_mappings import UnitError, default_code_table, default_unit_table, variable

UNITS = default_unit_table()
CODES = default_code_table()


@pytest.mark.parametrize(
    ("var", "value", "unit", "expected"),
    [
        ("Temp", 98.6, "[degF]", 37.0),
        ("Temp", 37.2, "Cel", 37.2),
        ("Temp", 37.2, "°C", 37.2),
        ("Creatinine", 88.4, "umol/L", 1.0),
        ("Glucose", 5.55, "mmol/L", 100.0),
        ("Bilirubin_total", 17.1, "umol/L", 1.0),
        ("Calcium", 2.5, "mmol/L", 10.0),
        ("Hgb", 120, "g/L", 12.0),
        ("WBC", 7.5, "10*9/L", 7.5),
        ("Platelets", 250, "10*3/uL", 250),
        ("FiO2", 40, "%", 0.4),
        ("FiO2", 0.4, "1", 0.4),
        ("SBP", 120, "mmHg", 120),
        ("HR", 80, "beats/min", 80),
        ("Potassium", 4.1, "mEq/L", 4.1),
        ("pH", 7.4, None, 7.4),
    ],
)
def test_converts_to_the_canonical_unit(var: str, value: float, unit: str | None, expected: float) -> None:
    assert UNITS.to_canonical(var, value, unit) == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize(
    ("var", "unit"),
    [("Calcium", "U/L"), ("Glucose", "g"), ("HR", None), ("Temp", "mmHg"), ("Creatinine", "%")],
)
def test_refuses_units_it_cannot_convert(var: str, unit: str | None) -> None:
    with pytest.raises(UnitError):
        UNITS.to_canonical(var, 1.0, unit)


def test_canonical_units_pass_unchanged() -> None:
    for row in CODES.rows:
        canonical = variable(row.variable).unit
        assert UNITS.to_canonical(row.variable, 3.25, canonical) == 3.25


def test_pulse_oximetry_is_spo2_and_lab_2708_6_is_sao2() -> None:
    loinc = "http://loinc.org"
    pulse_ox = [(loinc, "59408-5"), (loinc, "2708-6")]
    assert CODES.match(pulse_ox, frozenset({"vital-signs"})).variable == "O2Sat"
    assert CODES.match([(loinc, "2708-6")], frozenset({"laboratory"})).variable == "SaO2"
    assert CODES.match([(loinc, "2708-6")], frozenset({"vital-signs"})).variable == "O2Sat"
    assert CODES.match([(loinc, "8867-4")], frozenset()).variable == "HR"
    assert CODES.match([("http://example.org/local", "8867-4")], frozenset()).variable is None


def test_every_clinical_variable_has_a_loinc_code() -> None:
    from fhir_mappings import CLINICAL_VARIABLES

    assert {r.variable for r in CODES.rows} == set(CLINICAL_VARIABLES)
