"""The readmission model's data rules and `cds evaluate readmission` on a file in the dataset's layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import readmission_cohort, readmission_feature_spec
from models import ModelRegistry, RiskModel, evaluate_readmission, load_readmission_data
from testkit.readmission_rows import row
from tests.conftest import DATA_DIR, need


def test_cohort_keeps_first_encounters_and_drops_death_and_hospice() -> None:
    frame = pd.DataFrame(
        [
            row(encounter_id=5, patient_nbr=1, readmitted="<30"),
            row(encounter_id=3, patient_nbr=1, readmitted="NO"),  # earlier: this one is kept
            row(encounter_id=7, patient_nbr=2, discharge_disposition_id=11),  # expired
            row(encounter_id=8, patient_nbr=3, discharge_disposition_id=13),  # hospice
            row(encounter_id=9, patient_nbr=4),
        ]
    )
    cohort = readmission_cohort(frame)
    assert cohort["encounter_id"].tolist() == [3, 9]


@pytest.mark.data
def test_cli_evaluates_any_file_in_the_layout(tmp_path: Path) -> None:
    path = need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US")
    frame = pd.read_csv(path, keep_default_na=False, na_values=["?", ""], low_memory=False)
    patients = frame["patient_nbr"].drop_duplicates().sample(4000, random_state=1)
    subset = frame[frame["patient_nbr"].isin(patients)]
    out = tmp_path / "held_back.csv.gz"
    subset.to_csv(out, index=False)  # '?' written back as empty: both read as missing
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds.cli",
            "evaluate",
            "readmission",
            "--data",
            str(out),
            "--report",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    spec = readmission_feature_spec()
    model = RiskModel(ModelRegistry().load("readmission", spec), spec)
    expected = evaluate_readmission(model, load_readmission_data(out, spec))
    assert metrics == expected
    assert metrics["encounters"] == len(readmission_cohort(subset))
    assert (
        0.5 < metrics["auroc"]["estimate"] < 0.9
        and metrics["auroc"]["ci95_low"] < metrics["auroc"]["estimate"] < metrics["auroc"]["ci95_high"]
    )
    assert metrics["lace_baseline"]["auroc"]["estimate"] < metrics["auroc"]["estimate"]
    assert {"brier", "ece", "intercept", "slope"} <= metrics["calibration"].keys()
    assert set(metrics["subgroups"]) == {"race", "sex", "age_band"}
    for name in ("roc.png", "pr.png", "calibration.png", "model_card.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == metrics
    assert "LACE" in (tmp_path / "report" / "model_card.md").read_text()


def test_the_committed_model_matches_its_manifest_and_scores_in_range() -> None:
    spec = readmission_feature_spec()
    model = RiskModel(ModelRegistry().load("readmission", spec), spec)
    manifest = model.manifest
    assert manifest.calibration.method == "platt" and 0 < manifest.threshold < 1
    assert manifest.risk_bands["moderate"] < manifest.risk_bands["high"] == manifest.threshold
    x = np.full((1, len(spec)), np.nan, dtype=np.float32)
    assert 0 < model.predict(x)[0] < 1
