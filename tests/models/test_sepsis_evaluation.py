"""The clinical evaluation pieces on hand-made patients, and the full report on set A."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fhir_mappings import CANONICAL_COLUMNS, CanonicalTable
from models import (
    alert_burden,
    baseline_scores,
    patient_operating_point,
    utility_by_patient_bootstrap,
    utility_table,
)


def test_patient_level_operating_point_and_warning_time() -> None:
    # Patient 1 septic: first label at row 8, onset (t_sepsis) at row 14; alarm from row 10.
    # Patient 2 septic, alarm only after onset: missed. Patient 3 non-septic with an alarm; 4 quiet.
    label = np.r_[np.zeros(8), np.ones(10), np.zeros(2), np.ones(18), np.zeros(10), np.zeros(10)].astype(
        np.int8
    )
    patient = np.repeat([1, 2, 3, 4], [18, 20, 10, 10])
    alarm = np.zeros(58, dtype=bool)
    alarm[10:18] = True  # patient 1
    alarm[18 + 19] = True  # patient 2 at row 19 > onset 2 + 6 = 8
    alarm[38 + 3] = True  # patient 3
    got = patient_operating_point(label, alarm, patient)
    assert (
        got["septic_patients"] == 2
        and got["sensitivity"] == 0.5
        and got["specificity"] == 0.5
        and got["ppv"] == 0.5
    )
    assert got["median_hours_warning_before_onset"] == 4.0  # onset row 14 - first alarm row 10
    burden = alert_burden(alarm, patient)
    assert burden["alerts"] == 3 and burden["alerts_per_100_patient_days"] == pytest.approx(
        100 * 3 / (58 / 24), abs=0.01
    )


def test_bootstrap_utility_estimate_is_the_official_utility() -> None:
    rng = np.random.default_rng(1)
    patient = np.repeat(np.arange(60), 30)
    label = np.zeros(1800, dtype=np.int8)
    for p in range(0, 60, 5):
        label[p * 30 + 20 : p * 30 + 30] = 1
    alarm = rng.random(1800) < 0.2
    got = utility_by_patient_bootstrap(label, alarm, patient, replicates=50, seed=3)
    assert got["estimate"] == round(utility_table(label, patient).normalized(alarm), 4)
    assert got["ci95_low"] <= got["estimate"] <= got["ci95_high"] and got["replicates"] == 50


def test_baselines_score_the_rows_the_model_scores() -> None:
    values = np.full((3, len(CANONICAL_COLUMNS)), np.nan)
    values[1, CANONICAL_COLUMNS.index("Resp")] = 24  # qSOFA 1, SIRS 1, NEWS2 2, MEWS 2
    values[2, CANONICAL_COLUMNS.index("SBP")] = 95  # qSOFA 2, NEWS2 2 + 2, MEWS 2 + 1
    scores = baseline_scores(
        CanonicalTable(np.array(["a"] * 3, dtype=object), np.arange(1, 4, dtype=np.int32), values)
    )
    np.testing.assert_array_equal(scores["qSOFA (partial)"], [0, 1, 2])
    np.testing.assert_array_equal(scores["NEWS2 (partial)"], [0, 2, 4])
    np.testing.assert_array_equal(scores["MEWS (partial)"], [0, 2, 3])


@pytest.mark.data
def test_cli_evaluate_writes_the_report(set_a_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cds.cli import app

    psv = tmp_path / "psv"
    psv.mkdir()
    import pandas as pd

    frame = pd.read_parquet(set_a_path)
    ids = frame["patient"].drop_duplicates().to_numpy()[:300]
    for pid in ids:
        rows = frame[frame["patient"] == pid].drop(columns=["patient", "hour"], errors="ignore")
        rows.to_csv(psv / f"p{int(pid):06d}.psv", sep="|", index=False, na_rep="NaN")
    result = CliRunner().invoke(
        app,
        ["evaluate", "sepsis", "--data", str(psv), "--report", str(tmp_path / "rep"), "--replicates", "20"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["patients"] == 300 and 0.5 < metrics["auroc_ci"]["estimate"] <= 1
    assert set(metrics["baselines"]) == {
        "qSOFA (partial)",
        "SIRS (no bands)",
        "NEWS2 (partial)",
        "MEWS (partial)",
        "SOFA (partial)",
    }
    assert {"sex", "age", "icu_type"} == set(metrics["subgroups"])
    written = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {
        "metrics.json",
        "model_card.md",
        "roc.png",
        "pr.png",
        "calibration.png",
        "utility_vs_threshold.png",
    } <= written
    card = (tmp_path / "rep" / "model_card.md").read_text()
    assert "What would make it unsafe" in card and "NEWS2" in card
