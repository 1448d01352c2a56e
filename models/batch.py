"""Many patients at once (the census sweep): the feature row each is scored on now, calibrated
probabilities and exact TreeSHAP, in batches, on the device `choose_device` picked.

The same code as one hook call, vectorised over patients: every stay's canonical table goes
through `build_features` (patients never see each other's rows, so a batch gives each patient
the bits it would get alone), its last row is the row scored, and XGBoost's `pred_contribs`
gives the contributions; `RiskModel.predict` and `explain` do the same for one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xgboost as xgb

from fhir_mappings import CanonicalTable, FeatureSpec, build_features

from .score import RiskModel

__all__ = ["BATCH_ROWS", "concat_tables", "last_rows", "predict_rows", "shap_rows"]

# Feature rows per XGBoost call; stays per feature-building chunk (all their hours are built).
BATCH_ROWS = 65_536
_CHUNK_STAYS = 64  # measured: 64 stays of 48 h build faster than 16, 128 or 1,024


def concat_tables(tables: Sequence[CanonicalTable]) -> CanonicalTable:
    """One table of several patients' stays (each table one patient, in order)."""
    return CanonicalTable(
        patient=np.concatenate([t.patient for t in tables]),
        iculos=np.concatenate([t.iculos for t in tables]),
        values=np.concatenate([t.values for t in tables]),
    )


def last_rows(
    tables: Sequence[CanonicalTable], spec: FeatureSpec, *, chunk: int = _CHUNK_STAYS, workers: int = 1
) -> np.ndarray:
    """(stays x features) float32: each stay's features at its last hour, in input order. Built in
    chunks of stays (small enough to stay in cache), computing only the last rows (bit for bit the
    batch rows), so memory grows with stays, not with their hours; `workers` threads build chunks
    side by side (NumPy releases the GIL; chunks never share a row, so the result is the same
    bits)."""
    out = np.empty((len(tables), len(spec)), dtype=np.float32)

    def build(a: int) -> None:
        part = tables[a : a + chunk]
        last = np.cumsum([len(t) for t in part]) - 1
        out[a : a + len(part)] = build_features(concat_tables(part), spec, rows=last)

    starts = range(0, len(tables), chunk)
    if workers <= 1 or len(tables) <= chunk:
        for a in starts:
            build(a)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(build, starts))
    return out


def _device_input(features: np.ndarray, device: str) -> object:
    """On a GPU, hand XGBoost device memory when CuPy is there (no copy per tree); else NumPy."""
    if device.startswith("cuda"):
        try:
            import cupy
        except ImportError:
            return features
        return cupy.asarray(features)
    return features


def predict_rows(model: RiskModel, features: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """Calibrated probabilities, one per row, `BATCH_ROWS` rows per call (as `RiskModel.predict`)."""
    out = np.empty(len(features), dtype=np.float64)
    for a in range(0, len(features), BATCH_ROWS):
        block = features[a : a + BATCH_ROWS]
        margin = model.booster.inplace_predict(
            _device_input(block, device), predict_type="margin", missing=np.nan
        )
        margin = np.asarray(margin.get() if hasattr(margin, "get") else margin, dtype=np.float64)
        out[a : a + len(block)] = model.calibrate(1.0 / (1.0 + np.exp(-margin)))
    return out


def shap_rows(model: RiskModel, features: np.ndarray) -> np.ndarray:
    """(rows x features + 1) exact TreeSHAP in log-odds, the base value last (as `RiskModel.explain`),
    on the booster's device."""
    out = np.empty((len(features), features.shape[1] + 1), dtype=np.float32)
    for a in range(0, len(features), BATCH_ROWS):
        block = np.asarray(features[a : a + BATCH_ROWS], dtype=np.float32)
        out[a : a + len(block)] = model.booster.predict(
            xgb.DMatrix(block, missing=np.nan), pred_contribs=True
        )
    return out
