"""Bedside scores against hand-scored patients (published bands; missing inputs score 0)."""

from __future__ import annotations

import numpy as np

from fhir_mappings import mews, news2, qsofa, shock_index, sirs, sofa_partial

nan = np.nan


def a(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def test_qsofa_and_sirs() -> None:
    np.testing.assert_array_equal(qsofa(a(22, 21, nan), a(100, 101, 90)), [2, 0, 1])
    # temp, HR, RR/PaCO2, WBC: febrile tachycardic, hypocapnic leukopenic, all normal, nothing measured.
    got = sirs(
        a(38.5, 37, 37, nan), a(95, 80, 80, nan), a(18, 18, 18, nan), a(nan, 30, 40, nan), a(10, 3.5, 8, nan)
    )
    np.testing.assert_array_equal(got, [2, 2, 0, 0])


def test_news2_bands() -> None:
    # RR 8 (3), SpO2 91 (3), on O2 (2), SBP 90 (3), HR 131 (3), Temp 35.0 (3): the maximum.
    assert news2(a(8), a(91), a(0.4), a(90), a(131), a(35.0))[0] == 17
    # A healthy adult on room air.
    assert news2(a(16), a(98), a(0.21), a(120), a(70), a(37.0))[0] == 0
    # RR 21 (2), SpO2 94 (1), SBP 105 (1), HR 111 (2), Temp 38.1 (1); FiO2 unknown scores 0.
    assert news2(a(21), a(94), a(nan), a(105), a(111), a(38.1))[0] == 7


def test_mews_and_sofa_and_shock_index() -> None:
    # SBP 75 (2), HR 130 (3), RR 30 (3), Temp 38.5 (2).
    assert mews(a(75), a(130), a(30), a(38.5))[0] == 10
    assert mews(a(120), a(70), a(12), a(37))[0] == 0
    # Platelets 90 (2), bilirubin 2.0 (2), creatinine 3.5 (3), MAP 65 (1), SpO2/FiO2 = 94/0.5 = 188 (3).
    assert sofa_partial(a(90), a(2.0), a(3.5), a(65), a(94), a(0.5))[0] == 11
    assert sofa_partial(a(nan), a(nan), a(nan), a(nan), a(nan), a(nan))[0] == 0
    np.testing.assert_array_equal(shock_index(a(120, 80, 80), a(100, 0, nan)), [1.2, nan, nan])


def test_a_vanishing_blood_pressure_gives_no_shock_index_rather_than_an_overflow() -> None:
    """5e-324 mmHg passes the SBP range [0, 400] but HR / SBP would be ~1e308, which overflows the
    float32 feature matrix (found by the hostile-prefetch property test)."""
    with np.errstate(all="raise"):
        got = shock_index(np.array([100.0, 100.0, 100.0]), np.array([5e-324, 0.5, 1.0]))
    np.testing.assert_array_equal(got, [np.nan, np.nan, 100.0])
