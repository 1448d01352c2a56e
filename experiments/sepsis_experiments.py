"""Shared helpers for the sepsis tuning and sensitivity scripts (not part of the package)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_mappings import FeatureSpec, sepsis_feature_spec  # noqa: E402
from models import (  # noqa: E402
    SepsisData,
    best_threshold,
    challenge_auc,
    default_sepsis_path,
    load_sepsis_data,
    train_booster,
    utility_table,
)


def load(path: Path | None = None) -> tuple[SepsisData, FeatureSpec]:
    """Set A with the served features plus the clock features (so ablations are column drops)."""
    spec = sepsis_feature_spec(include_clock=True)
    return load_sepsis_data(
        path or default_sepsis_path(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"), spec
    ), spec


def fit_predict(x_train, y_train, x_test, params, rounds):  # type: ignore[no-untyped-def]
    trained = train_booster(x_train, y_train, params=params, num_boost_round=rounds, progress=False)
    return np.asarray(trained.booster.inplace_predict(x_test, missing=np.nan), dtype=np.float64)


def judge(p: np.ndarray, y: np.ndarray, patient: np.ndarray, threshold: float) -> dict[str, float]:
    auroc, auprc = challenge_auc(y, p)
    return {
        "auroc": round(auroc, 4),
        "auprc": round(auprc, 4),
        "utility": round(utility_table(y, patient).normalized(p >= threshold), 4),
    }


def threshold_on(p: np.ndarray, y: np.ndarray, patient: np.ndarray) -> float:
    return best_threshold(p, y, patient)[0]
