"""The sepsis model: PhysioNet 2019 files -> features -> XGBoost, scoring and evaluation.

Every hour is scored from data up to that hour only: the features are causal (see
fhir_mappings.features), so scoring a whole stay at once equals scoring it hour by hour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from fhir_mappings import FEATURE_CODE_VERSION, FeatureSpec, build_features, physionet_to_table, sepsis_feature_spec

from .datasets import data_fingerprint, read_physionet
from .errors import ModelNotFound
from .manifest import FeatureEntry, ModelManifest
from .physionet2019 import accuracy_f_measure, challenge_auc, utility_table
from .registry import ModelRegistry
from .score import RiskModel
from .train import default_params, patient_split, train_booster

__all__ = [
    "HORIZON_HOURS",
    "SEPSIS_OUTCOME",
    "SepsisData",
    "best_threshold",
    "evaluate_sepsis",
    "load_sepsis_data",
    "score_sepsis",
    "sepsis_metrics",
    "train_sepsis",
]

SEPSIS_OUTCOME = ("http://snomed.info/sct", "91302008", "Sepsis")
HORIZON_HOURS = 6.0  # SepsisLabel is 1 from six hours before clinical onset


@dataclass(frozen=True)
class SepsisData:
    frame: pd.DataFrame  # as read
    features: np.ndarray  # (rows, features) float32, one row per input row
    label: np.ndarray | None  # SepsisLabel per input row
    patient: np.ndarray  # per input row
    hour: np.ndarray  # per input row (the file's own row index per patient)


def load_sepsis_data(path: Path | str, spec: FeatureSpec, *, patients: int | None = None) -> SepsisData:
    frame = read_physionet(path)
    if patients is not None:
        keep = np.unique(frame["patient"].to_numpy())[:patients]
        frame = frame[frame["patient"].isin(keep)].reset_index(drop=True)
    tab = physionet_to_table(frame)
    features = build_features(tab.table, spec)
    real = tab.source_row >= 0
    order = np.argsort(tab.source_row[real], kind="stable")
    by_input = features[real][order]  # back to the input's row order
    label = frame["SepsisLabel"].to_numpy(dtype=np.int8) if "SepsisLabel" in frame else None
    hour = frame["hour"].to_numpy() if "hour" in frame else frame["ICULOS"].to_numpy()
    return SepsisData(frame, by_input, label, frame["patient"].to_numpy(), hour)


def best_threshold(probability: np.ndarray, label: np.ndarray, patient: np.ndarray) -> tuple[float, float]:
    """The alert threshold that maximises normalised utility, and that utility."""
    table = utility_table(label, patient)
    inaction = float(table.if_negative.sum())
    best_total = table.total(table.best)
    gain = table.if_positive - table.if_negative  # what alarming on each row adds
    order = np.argsort(-probability, kind="stable")
    p_sorted = probability[order]
    cumulative = np.cumsum(gain[order])
    # Candidate thresholds: each distinct probability (alarm on all rows >= it).
    last_of_value = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    totals = inaction + cumulative[last_of_value]
    candidates = p_sorted[last_of_value]
    i = int(np.argmax(totals))
    utility = (totals[i] - inaction) / (best_total - inaction)
    return float(candidates[i]), float(utility)


def sepsis_metrics(probability: np.ndarray, label: np.ndarray, patient: np.ndarray, threshold: float) -> dict[str, Any]:
    predicted = (probability >= threshold).astype(np.int8)
    auroc, auprc = challenge_auc(label, probability)
    accuracy, f_measure = accuracy_f_measure(label, predicted)
    septic = pd.Series(label).groupby(patient).max()
    return {
        "rows": int(len(label)),
        "patients": int(len(septic)),
        "septic_patients": int(septic.sum()),
        "auroc": round(auroc, 4),
        "auprc": round(auprc, 4),
        "utility": round(utility_table(label, patient).normalized(predicted), 4),
        "accuracy": round(accuracy, 4),
        "f_measure": round(f_measure, 4),
        "threshold": threshold,
    }


def train_sepsis(
    data_path: Path | str,
    registry: ModelRegistry,
    *,
    seed: int = 2019,
    num_boost_round: int = 1500,
    patients: int | None = None,
    progress: bool = True,
    activate: bool = True,
    device: str | None = None,
) -> ModelManifest:
    spec = sepsis_feature_spec()
    data = load_sepsis_data(data_path, spec, patients=patients)
    if data.label is None:
        raise ValueError("training data has no SepsisLabel column")
    train_ids, valid_ids, test_ids = patient_split(data.patient, (0.7, 0.1, 0.2), seed)
    parts = {name: np.isin(data.patient, ids) for name, ids in (("train", train_ids), ("valid", valid_ids), ("test", test_ids))}

    started = time.perf_counter()
    trained = train_booster(
        data.features[parts["train"]],
        data.label[parts["train"]],
        params=default_params(seed),
        num_boost_round=num_boost_round,
        x_valid=data.features[parts["valid"]],
        y_valid=data.label[parts["valid"]],
        early_stopping_rounds=100,
        progress=progress,
        description="sepsis",
        device=device,
    )
    train_seconds = time.perf_counter() - started

    def predict(mask: np.ndarray) -> np.ndarray:
        return np.asarray(trained.booster.inplace_predict(data.features[mask], missing=np.nan), dtype=np.float64)

    p_valid = predict(parts["valid"])
    threshold, valid_utility = best_threshold(p_valid, data.label[parts["valid"]], data.patient[parts["valid"]])
    threshold = float(np.float32(threshold))
    p_test = predict(parts["test"])
    test_metrics = sepsis_metrics(p_test, data.label[parts["test"]], data.patient[parts["test"]], threshold)

    model_bytes = trained.model_bytes()
    manifest = ModelManifest(
        name="sepsis",
        version=registry.next_version("sepsis"),
        title="Sepsis risk (XGBoost)",
        outcome="Sepsis (Sepsis-3) onset within the next 6 hours, or ongoing",
        horizon_hours=HORIZON_HOURS,
        features=[FeatureEntry(name=f.name, label=f.label, unit=f.unit) for f in spec.features],
        feature_spec_hash=spec.spec_hash,
        feature_code_version=FEATURE_CODE_VERSION,
        model_sha256=trained.sha256(),
        training_data={
            "path": str(data_path),
            "sha256": data_fingerprint(data_path),
            "rows": int(len(data.label)),
            "patients": int(len(np.unique(data.patient))),
            "split": "patients 70/10/20 train/validation/test, seed " + str(seed),
        },
        params={k: v for k, v in trained.params.items() if k != "device"},
        num_boost_round=trained.num_boost_round,
        threshold=threshold,
        risk_bands={"low": 0.0, "moderate": threshold / 2, "high": threshold},
        metrics={
            "test": test_metrics,
            "validation_utility_at_threshold": round(valid_utility, 4),
            "train_seconds": round(train_seconds, 1),
        },
        xgboost_version=xgb.__version__,
        device=trained.device,
        seed=seed,
        parent_version=_active_or_none(registry, "sepsis"),
    )
    registry.register(manifest, model_bytes, activate=activate)
    return manifest


def _active_or_none(registry: ModelRegistry, name: str) -> str | None:
    try:
        return registry.active_version(name)
    except ModelNotFound:
        return None


def score_sepsis(model: RiskModel, data: SepsisData) -> np.ndarray:
    return model.predict(data.features)


def evaluate_sepsis(model: RiskModel, data: SepsisData) -> dict[str, Any]:
    if data.label is None:
        raise ValueError("evaluation data has no SepsisLabel column")
    probability = score_sepsis(model, data)
    metrics = sepsis_metrics(probability, data.label, data.patient, model.threshold)
    metrics["model"] = f"{model.name}@{model.version}"
    return metrics
