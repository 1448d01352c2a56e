"""Probability calibration: fitting (isotonic, Platt) and measuring (Brier, ECE, intercept, slope).

A fitted calibration is stored in the manifest as an interpolation table (x -> y), so serving
needs no scikit-learn object and no pickle: `RiskModel.calibrate` is one `np.interp`.
Intercept and slope follow Van Calster et al. (2016, 2019): slope from a logistic regression of
the outcome on logit(p); intercept (calibration-in-the-large) with logit(p) as a fixed offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .manifest import Calibration

__all__ = [
    "CalibrationReport",
    "ISOTONIC_MIN_POSITIVE_GROUPS",
    "brier_score",
    "calibration_intercept_slope",
    "calibration_report",
    "expected_calibration_error",
    "fit_isotonic",
    "fit_platt",
    "fit_small_sample_map",
    "reliability_curve",
]

_EPS = 1e-6
# Fewer patients with a positive outcome than this among those a map is fitted on: Platt, not isotonic.
ISOTONIC_MIN_POSITIVE_GROUPS = 200


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    logit: np.ndarray = np.log(p / (1 - p))
    return logit


def _sigmoid(z: np.ndarray) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return p


def fit_isotonic(raw: np.ndarray, label: np.ndarray, *, max_knots: int = 400) -> Calibration:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(raw, dtype=np.float64), np.asarray(label, dtype=np.float64))
    x, y = iso.X_thresholds_, iso.y_thresholds_
    if len(x) > max_knots:  # keep the manifest small: sample knots evenly by rank
        keep = np.unique(np.linspace(0, len(x) - 1, max_knots).round().astype(int))
        x, y = x[keep], y[keep]
    # Strictly increasing y keeps ranking (and AUROC) almost intact instead of flattening ties.
    y = np.maximum.accumulate(y + np.arange(len(y)) * 1e-9)
    return Calibration(method="isotonic", x=[float(v) for v in x], y=[float(min(v, 1.0)) for v in y])


def _logistic_fit(
    z: np.ndarray, y: np.ndarray, *, offset: np.ndarray | None = None, slope: bool = True
) -> tuple[float, float]:
    """Maximum likelihood (a, b) of P(y) = sigmoid(a + b z [+ offset]) by Newton's method."""
    a, b = 0.0, 1.0 if not slope else 0.0
    off = np.zeros_like(z) if offset is None else offset
    for _ in range(100):
        eta = a + (b * z if slope else 0.0) + off
        p = _sigmoid(eta)
        w = np.maximum(p * (1 - p), 1e-12)
        g_a = np.sum(y - p)
        if slope:
            g_b = np.sum((y - p) * z)
            h = np.array([[np.sum(w), np.sum(w * z)], [np.sum(w * z), np.sum(w * z * z)]])
            step = np.linalg.solve(h + 1e-9 * np.eye(2), np.array([g_a, g_b]))
            a, b = a + step[0], b + step[1]
            if np.max(np.abs(step)) < 1e-10:
                break
        else:
            step_a = g_a / np.sum(w)
            a += step_a
            if abs(step_a) < 1e-10:
                break
    return float(a), float(b)


def fit_platt(raw: np.ndarray, label: np.ndarray, *, knots: int = 200) -> Calibration:
    z = _logit(raw)
    a, b = _logistic_fit(z, np.asarray(label, dtype=np.float64))
    grid = _sigmoid(np.linspace(z.min() - 1, z.max() + 1, knots))
    x = np.concatenate([[0.0], grid, [1.0]])
    y = _sigmoid(a + b * _logit(x))
    return Calibration(method="platt", x=[float(v) for v in x], y=[float(v) for v in y])


def brier_score(label: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(label, dtype=np.float64)) ** 2))


def reliability_curve(
    label: np.ndarray, p: np.ndarray, *, bins: int = 10, strategy: str = "quantile"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed rate, count) per bin; quantile bins suit rare outcomes."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    else:
        edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=len(edges) - 1) / count
        rate = np.bincount(idx, weights=y, minlength=len(edges) - 1) / count
    keep = count > 0
    return mean_p[keep], rate[keep], count[keep]


def expected_calibration_error(
    label: np.ndarray, p: np.ndarray, *, bins: int = 10, strategy: str = "uniform"
) -> float:
    mean_p, rate, count = reliability_curve(label, p, bins=bins, strategy=strategy)
    return float(np.sum(count * np.abs(mean_p - rate)) / np.sum(count))


def calibration_intercept_slope(label: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    y = np.asarray(label, dtype=np.float64)
    z = _logit(p)
    _, slope = _logistic_fit(z, y)
    intercept, _ = _logistic_fit(z, y, offset=z, slope=False)
    return intercept, slope


@dataclass(frozen=True)
class CalibrationReport:
    brier: float
    ece: float
    intercept: float
    slope: float

    def as_dict(self) -> dict[str, float]:
        return {
            "brier": round(self.brier, 5),
            "ece": round(self.ece, 5),
            "intercept": round(self.intercept, 4),
            "slope": round(self.slope, 4),
        }


def calibration_report(label: np.ndarray, p: np.ndarray) -> CalibrationReport:
    intercept, slope = calibration_intercept_slope(label, p)
    return CalibrationReport(brier_score(label, p), expected_calibration_error(label, p), intercept, slope)


def fit_small_sample_map(raw: np.ndarray, label: np.ndarray, group: np.ndarray) -> tuple[Calibration, str]:
    """Isotonic when the rows' groups (patients) have the events for it, else Platt (two
    parameters), and which it was, in words: an isotonic map fitted on a small site's few septic
    patients overfits them (measured: 28 septic fit patients of set A gave a held-out calibration
    slope of 0.60, the Platt map 0.91; at 186 both hold, Platt a little closer to 1:
    benchmarks/calibration_maps.py). Hours of one patient are not independent events, so the count
    is of patients."""
    label = np.asarray(label)
    positive = int(len(np.unique(np.asarray(group)[label == 1])))
    if positive >= ISOTONIC_MIN_POSITIVE_GROUPS:
        return fit_isotonic(raw, label), f"isotonic map ({positive} patients with the outcome)"
    return fit_platt(raw, label), (
        f"Platt map ({positive} patients with the outcome, under the {ISOTONIC_MIN_POSITIVE_GROUPS} "
        "an isotonic map needs)"
    )
