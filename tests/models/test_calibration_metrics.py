from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.calibration import (
    brier_score,
    calibration_intercept_slope,
    calibration_report,
    expected_calibration_error,
    fit_isotonic,
    fit_platt,
)
from models.metrics import auroc, bootstrap_by_group, operating_point, subgroup_table
from models.report import (
    markdown_table,
    plot_calibration,
    plot_pr,
    plot_roc,
    plot_threshold_curve,
    write_model_card,
)


def simulated(
    n: int = 20000, seed: int = 0, *, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes drawn from true probabilities; predictions distorted by a temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.5, 1.2, n)
    truth = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < truth).astype(int)
    pred = 1 / (1 + np.exp(-z * temperature))
    return y, pred, truth


def test_well_calibrated_predictions_have_slope_one_intercept_zero() -> None:
    y, pred, _ = simulated()
    intercept, slope = calibration_intercept_slope(y, pred)
    assert slope == pytest.approx(1.0, abs=0.08) and intercept == pytest.approx(0.0, abs=0.06)
    assert expected_calibration_error(y, pred) < 0.02


def test_overconfident_predictions_have_slope_below_one_and_recalibration_fixes_them() -> None:
    y, pred, _ = simulated(temperature=2.0)
    _, slope = calibration_intercept_slope(y, pred)
    assert slope == pytest.approx(0.5, abs=0.06)
    y2, pred2, _ = simulated(seed=1, temperature=2.0)  # fit on one sample, check on another
    for fit in (fit_platt, fit_isotonic):
        cal = fit(pred, y)
        fixed = np.interp(pred2, cal.x, cal.y)
        report = calibration_report(y2, fixed)
        assert report.slope == pytest.approx(1.0, abs=0.12), fit.__name__
        assert report.brier < brier_score(y2, pred2)
        assert auroc(y2, fixed) == pytest.approx(auroc(y2, pred2), abs=0.01)  # ranking kept


def test_operating_point_and_grouped_bootstrap() -> None:
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.8, 0.1, 0.2, 0.7, 0.3, 0.05])
    op = operating_point(y, p, 0.5)
    assert (op.sensitivity, op.specificity, op.ppv) == (
        pytest.approx(2 / 3),
        pytest.approx(0.8),
        pytest.approx(2 / 3),
    )
    y, pred, _ = simulated(4000)
    groups = np.repeat(np.arange(400), 10)
    interval = bootstrap_by_group(lambda rows: auroc(y[rows], pred[rows]), groups, replicates=100)
    assert interval.low < interval.estimate < interval.high and interval.replicates == 100
    assert 0.01 < interval.high - interval.low < 0.15


def test_subgroup_gap() -> None:
    y, pred, _ = simulated(6000)
    rng = np.random.default_rng(3)
    noisy = np.where(np.arange(6000) < 3000, pred, rng.random(6000))  # second half: no signal
    table = subgroup_table(
        y, noisy, {"half": {"first": np.arange(6000) < 3000, "second": np.arange(6000) >= 3000}}, 0.2
    )
    half = table["half"]
    assert half["groups"]["second"]["auroc"] == pytest.approx(0.5, abs=0.06)
    assert half["largest_auroc_gap"] > 0.2


def test_report_files(tmp_path: Path) -> None:
    y, pred, _ = simulated(3000)
    files = [
        plot_roc(tmp_path / "roc.png", {"model": (y, pred)}, "ROC"),
        plot_pr(tmp_path / "pr.png", {"model": (y, pred)}, "PR"),
        plot_calibration(tmp_path / "cal.png", y, pred, "Calibration"),
        plot_threshold_curve(
            tmp_path / "u.png", [0.01, 0.1, 0.5], [0.1, 0.3, 0.2], "U", "utility", marker=0.1
        ),
    ]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = write_model_card(
        tmp_path / "card.md", "Card", [("Metrics", markdown_table(["a", "b"], [[1, None]]))]
    )
    assert card.read_text().startswith("# Card") and "| 1 |  |" in card.read_text()
