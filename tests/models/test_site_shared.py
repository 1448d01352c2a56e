"""The parts of site go-live the models share, on synthetic scores (no dataset needed): the paired
held-out comparison under each task's measures, its table, the readmission refit and the lookup."""

from __future__ import annotations

import numpy as np
import pytest

from models import DatasetError, ModelError
from models.metrics import auprc, auroc
from models.site import SEPSIS_MEASURES, SEPSIS_SITE, compare_on_holdout, comparison_table, site_split
from models.site_readmission import READMISSION_MEASURES, READMISSION_SITE, refit_readmission
from models.site_tasks import SITE_TASKS, site_task


def _discharges(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.1).astype(np.int8)
    score = np.clip(0.08 + 0.1 * label + rng.normal(0, 0.08, n), 0.001, 0.999)
    return label, score, np.arange(100, 100 + n)


def test_readmission_comparison_estimates_are_the_plain_metrics_and_a_copy_pairs_to_zero() -> None:
    label, p, patient = _discharges()
    worse = np.clip(p + np.random.default_rng(1).normal(0, 0.03, len(p)), 0.001, 0.999)
    out = compare_on_holdout(
        {"base": p, "same": p.copy(), "noisier": worse},
        {"base": 0.15, "same": 0.15, "noisier": 0.15},
        label,
        patient,
        replicates=50,
        measures=READMISSION_MEASURES,
    )
    base = out["models"]["base"]
    assert base["auroc"]["estimate"] == round(auroc(label, p), 4)
    assert base["auprc"]["estimate"] == round(auprc(label, p), 4)
    assert base["flagged_per_100_discharges"] == round(100 * float((p >= 0.15).mean()), 2)
    assert base["auroc"]["ci95_low"] < base["auroc"]["estimate"] < base["auroc"]["ci95_high"]
    same = out["models"]["same"]["minus_base"]
    assert same["auroc"] == {"estimate": 0.0, "ci95_low": 0.0, "ci95_high": 0.0} == same["auprc"]
    # The same resamples for both: the paired interval of a small change is narrower than either own.
    delta = out["models"]["noisier"]["minus_base"]["auroc"]
    assert delta["estimate"] < 0 and delta["ci95_high"] - delta["ci95_low"] < (
        base["auroc"]["ci95_high"] - base["auroc"]["ci95_low"]
    )
    assert "minus_base" not in base and out["patients"] == out["rows"] == len(label)


def test_the_same_seed_gives_the_same_intervals_and_the_tasks_measure_differently() -> None:
    label, p, patient = _discharges(600)
    args = ({"base": p}, {"base": 0.15}, label, patient)
    a = compare_on_holdout(*args, replicates=20, seed=4, measures=READMISSION_MEASURES)
    assert a == compare_on_holdout(*args, replicates=20, seed=4, measures=READMISSION_MEASURES)
    assert a != compare_on_holdout(*args, replicates=20, seed=5, measures=READMISSION_MEASURES)
    sepsis = compare_on_holdout(*args, replicates=20, seed=4, measures=SEPSIS_MEASURES)
    assert {"auroc", "utility", "alerts_per_100_patient_days"} <= sepsis["models"]["base"].keys()
    assert {"auroc", "auprc", "flagged_per_100_discharges"} <= a["models"]["base"].keys()


def test_rows_of_one_patient_must_be_adjacent() -> None:
    label, p, _ = _discharges(10)
    patient = np.array([1, 1, 2, 2, 1, 3, 3, 4, 4, 5])
    with pytest.raises(DatasetError, match="grouped by patient"):
        compare_on_holdout({"base": p}, {"base": 0.1}, label, patient, replicates=2)


def test_the_table_has_the_tasks_columns() -> None:
    label, p, patient = _discharges(500)
    out = compare_on_holdout(
        {"base": p, "recalibrated": p * 0.9},
        {"base": 0.15, "recalibrated": 0.14},
        label,
        patient,
        replicates=10,
        measures=READMISSION_MEASURES,
    )
    lines = comparison_table(out, READMISSION_MEASURES).splitlines()
    assert lines[0].startswith("| model | AUROC (95 % CI) | AUROC minus base (paired CI) | AUPRC")
    assert "flagged / 100 discharges" in lines[0] and len(lines) == 4
    assert lines[2].startswith("| base |") and lines[3].startswith("| recalibrated |")
    assert "utility" in comparison_table(
        compare_on_holdout({"base": p}, {"base": 0.15}, label, patient, replicates=5), SEPSIS_MEASURES
    )


def test_readmission_refit_flags_the_chosen_share_of_fit_discharges() -> None:
    label, p, patient = _discharges(4000, seed=2)
    raw = p**1.5  # a miscalibrated score with the same ranking
    own = refit_readmission(raw, label, patient, None)
    calibrated = np.interp(raw, own.calibration.x, own.calibration.y)
    assert abs(float((calibrated >= own.threshold).mean()) - 0.2) < 0.005
    assert abs(calibrated.mean() - label.mean()) < 0.01  # the map fixes the miscalibration
    assert own.bands is not None and own.bands["high"] == pytest.approx(own.threshold)
    assert own.bands["moderate"] < own.threshold and "model's own share" in own.rule
    five = refit_readmission(raw, label, patient, 5.0)
    assert five.threshold > own.threshold and abs(five.fit_figures["fit_flagged_fraction"] - 0.05) < 0.005
    with pytest.raises(DatasetError, match="between 0 and 100"):
        refit_readmission(raw, label, patient, 150.0)


def test_the_split_groups_by_patient_whatever_the_task() -> None:
    patient = np.repeat(np.arange(50), 3)  # three rows per patient
    split = site_split(patient, 11)
    assert not set(split.fit) & set(split.holdout) and len(split.fit) + len(split.holdout) == 50
    lineage = split.lineage()
    assert lineage["site_split_seed"] == 11 and lineage["holdout_patients"] == len(split.holdout)


def test_site_go_live_is_looked_up_by_model_name() -> None:
    assert set(SITE_TASKS) == {"sepsis", "readmission"}
    assert site_task("readmission") is READMISSION_SITE and site_task("sepsis") is SEPSIS_SITE
    assert SEPSIS_SITE.retrains_from_served and not READMISSION_SITE.retrains_from_served
    assert READMISSION_SITE.development_data is None and SEPSIS_SITE.development_data is not None
    with pytest.raises(ModelError, match="readmission, sepsis only, not ecg"):
        site_task("ecg")


def test_the_simulated_readmission_site_keeps_each_patient_on_one_side() -> None:
    import pandas as pd

    from benchmarks.readmission_site import by_first_intake
    from fhir_mappings import readmission_cohort
    from testkit.readmission_rows import row

    frame = pd.DataFrame(
        [
            row(encounter_id=1, patient_nbr=10, admission_source_id=7),
            row(encounter_id=2, patient_nbr=10, admission_source_id=1),  # later: patient 10 stays ER
            row(encounter_id=3, patient_nbr=20, admission_source_id=1),
            row(encounter_id=4, patient_nbr=20, admission_source_id=7),
            row(encounter_id=5, patient_nbr=30, admission_source_id=4),
            row(encounter_id=6, patient_nbr=40, admission_source_id=7),
        ]
    )
    er, others = by_first_intake(frame)
    assert er.tolist() == [10, 40] and others.tolist() == [20, 30]
    site = readmission_cohort(frame[frame["patient_nbr"].isin(others)])
    assert set(site["admission_source_id"]) == {1, 4}  # the cohort's first discharge of each is not ER
