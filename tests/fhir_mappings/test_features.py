from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import (
    CANONICAL_COLUMNS,
    CanonicalTable,
    Feature,
    MappingError,
    build_features,
    hourly_spec,
    physionet_to_table,
    sepsis_feature_spec,
)

SPEC = sepsis_feature_spec()


def table(
    patient: str, hr: list[float], lactate: list[float] | None = None, start: int = 1
) -> CanonicalTable:
    n = len(hr)
    values = np.full((n, len(CANONICAL_COLUMNS)), np.nan)
    values[:, CANONICAL_COLUMNS.index("HR")] = hr
    if lactate is not None:
        values[:, CANONICAL_COLUMNS.index("Lactate")] = lactate
    values[:, CANONICAL_COLUMNS.index("Age")] = 60
    return CanonicalTable(
        np.full(n, patient, dtype=object), np.arange(start, start + n, dtype=np.int32), values
    )


def col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, SPEC.names.index(name)]


nan = np.nan


def test_hand_computed_values() -> None:
    t = table("a", [80, nan, 90, nan, nan, 110, nan, nan], lactate=[nan, 2.0, nan, nan, 4.5, nan, nan, nan])
    x = build_features(t, SPEC)
    np.testing.assert_array_equal(col(x, "HR__last"), [80, 80, 90, 90, 90, 110, 110, 110])
    np.testing.assert_array_equal(col(x, "HR__hours_since"), [0, 1, 0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(col(x, "Lactate__hours_since"), [nan, 0, 1, 2, 0, 1, 2, 3])
    np.testing.assert_array_equal(col(x, "Lactate__delta_prev"), [nan, nan, nan, nan, 2.5, 2.5, 2.5, 2.5])
    # Window of 6 hours ending at row 5 covers rows 0..5: 80, 90, 110.
    assert col(x, "HR__mean_6h")[5] == pytest.approx(280 / 3, rel=1e-6)
    assert col(x, "HR__min_6h")[5] == 80 and col(x, "HR__max_6h")[5] == 110
    # Ending at row 7 the window is rows 2..7: 90 (t=-5), 110 (t=-2): slope 20/3 per hour.
    extra = hourly_spec(
        "t", (Feature("s", "slope", "HR", 6), Feature("c", "count", "HR", 6), Feature("sd", "std", "HR", 6))
    )
    y = build_features(t, extra)
    assert y[7, 0] == pytest.approx(20 / 3, rel=1e-6)
    assert np.isnan(y[0, 0])  # one point has no slope
    assert list(y[:, 1]) == [1, 1, 2, 2, 2, 3, 2, 2]
    assert y[5, 2] == pytest.approx(np.std([80, 90, 110]), rel=1e-6)
    # delta_6h at row 7: last 110 minus the value carried to row 1 (80).
    assert col(x, "HR__delta_6h")[7] == 30
    assert np.isnan(col(x, "HR__delta_6h")[5])  # row -1 does not exist
    clock = sepsis_feature_spec(include_clock=True)
    np.testing.assert_array_equal(build_features(t, clock)[:, clock.names.index("ICULOS")], np.arange(1, 9))
    assert "ICULOS" not in SPEC.names and "HospAdmTime" not in SPEC.names  # the served model has no clock
    # 24 h window at row 7 covers rows 0..7: 80, 90, 110.
    assert col(x, "HR__max_24h")[7] == 110 and col(x, "HR__count_24h")[7] == 3
    assert col(x, "HR__slope_24h")[7] == pytest.approx(
        np.polyfit([-7, -5, -2], [80, 90, 110], 1)[0], rel=1e-5
    )
    # Scores read the latest values carried forward: HR 110 > 90 is one SIRS criterion.
    np.testing.assert_array_equal(col(x, "sirs__last"), [0, 0, 0, 0, 0, 1, 1, 1])
    assert col(x, "sirs__max_24h")[7] == 1 and col(x, "sirs__min_24h")[7] == 0


def test_features_are_causal() -> None:
    rng = np.random.default_rng(0)
    hr = np.where(rng.random(40) < 0.3, np.nan, rng.normal(90, 15, 40))
    lac = np.where(rng.random(40) < 0.8, np.nan, rng.gamma(2, 1, 40))
    full = build_features(table("a", hr.tolist(), lac.tolist()), SPEC)
    for h in (1, 5, 17, 39):
        cut = build_features(table("a", hr[:h].tolist(), lac[:h].tolist()), SPEC)
        np.testing.assert_array_equal(cut, full[:h])


def test_patients_do_not_leak_into_each_other_and_batch_equals_single() -> None:
    a = table("a", [100, 101, nan, 103], lactate=[1, nan, nan, 2])
    b = table("b", [nan, nan, 60, nan, 62], lactate=[nan, 5, nan, nan, nan])
    both = CanonicalTable(
        np.concatenate([a.patient, b.patient]),
        np.concatenate([a.iculos, b.iculos]),
        np.vstack([a.values, b.values]),
    )
    xb = build_features(both, SPEC)
    np.testing.assert_array_equal(xb[:4], build_features(a, SPEC))
    np.testing.assert_array_equal(xb[4:], build_features(b, SPEC))
    assert np.isnan(col(xb, "HR__last")[4])  # b's first hour sees nothing of a


def test_leading_empty_hours_do_not_change_features() -> None:
    late = table("a", [88, nan, 93], lactate=[nan, 3, nan], start=4)
    early = table("a", [nan, nan, nan, 88, nan, 93], lactate=[nan, nan, nan, nan, 3, nan])
    np.testing.assert_array_equal(build_features(late, SPEC), build_features(early, SPEC)[3:])


def test_spec_hash_changes_with_the_features() -> None:
    other = hourly_spec("x", SPEC.features[:-1])
    assert other.spec_hash != SPEC.spec_hash
    assert hourly_spec("y", SPEC.features).spec_hash == SPEC.spec_hash
    with pytest.raises(ValueError):
        hourly_spec("z", (Feature("a", "nope", "HR"),))


def test_tabular_fills_gaps_and_normalises_like_the_fhir_path() -> None:
    frame = pd.DataFrame(
        {
            "patient": [1, 1, 1, 2],
            "ICULOS": [2, 3, 6, 1],
            "HR": [80, 81, 85, 70],
            "Age": [70.9, 70.9, 70.9, 95.2],
            "HospAdmTime": [-10.004, -10.004, -10.004, 0.0],
            "SepsisLabel": [0, 0, 1, 0],
        }
    )
    tab = physionet_to_table(frame)
    assert list(tab.table.iculos) == [2, 3, 4, 5, 6, 1]
    assert list(tab.source_row) == [0, 1, -1, -1, 2, 3]
    assert list(tab.label) == [0, 0, 0, 0, 1, 0]
    assert list(tab.table.column("Age")) == [70, 70, 70, 70, 70, 90]
    assert tab.table.column("HospAdmTime")[3] == -10.0
    with pytest.raises(MappingError):
        physionet_to_table(pd.DataFrame({"patient": [1, 1], "ICULOS": [2, 2]}))


def test_feature_families_separate_clock_and_measurement_habits() -> None:
    clock = sepsis_feature_spec(include_clock=True)
    families = {f.name: clock.family(f) for f in clock.features}
    assert families["ICULOS"] == "clock" and families["HospAdmTime"] == "clock"
    assert families["Lactate__hours_since"] == "measurement" and families["WBC__count_24h"] == "measurement"
    assert families["HR__mean_6h"] == "value" and families["Age"] == "demographic"
    kept = clock.columns(exclude_families=("clock", "measurement"))
    assert all(clock.family(clock.features[j]) in ("value", "demographic") for j in kept)
    assert len(SPEC.columns(exclude_families=("clock",))) == len(SPEC)


def _random_stays(seed: int) -> CanonicalTable:
    """Three stays (one starting late, one of a single hour) with gaps, in one table."""
    rng = np.random.default_rng(seed)
    parts = []
    for patient, n, start in (("a", 72, 1), ("b", 30, 9), ("c", 1, 1)):
        values = np.full((n, len(CANONICAL_COLUMNS)), np.nan)
        for j in range(len(CANONICAL_COLUMNS)):
            measured = rng.random(n) < rng.uniform(0.05, 0.9)
            values[measured, j] = rng.normal(50, 20, int(measured.sum()))
        parts.append(
            CanonicalTable(
                np.full(n, patient, dtype=object), np.arange(start, start + n, dtype=np.int32), values
            )
        )
    return CanonicalTable(
        np.concatenate([p.patient for p in parts]),
        np.concatenate([p.iculos for p in parts]),
        np.vstack([p.values for p in parts]),
    )


@pytest.mark.parametrize("spec", [SPEC, sepsis_feature_spec(include_clock=True)], ids=["served", "clock"])
def test_one_row_alone_is_bit_for_bit_the_batch_row(spec) -> None:
    for seed in range(3):
        t = _random_stays(seed)
        batch = build_features(t, spec)
        assert np.isfinite(batch).any(axis=0).sum() > len(spec) // 2  # the data exercises most features
        for r in range(len(t)):
            alone = build_features(t, spec, rows=[r])
            assert alone.shape == (1, len(spec))
            assert alone.tobytes() == batch[r : r + 1].tobytes(), (seed, r)
        some = [len(t) - 1, 0, 40, 72, 101]  # any order, across stays
        assert build_features(t, spec, rows=some).tobytes() == batch[some].tobytes()
    assert build_features(t, spec, rows=[]).shape == (0, len(spec))
    with pytest.raises(IndexError):
        build_features(t, spec, rows=[len(t)])
