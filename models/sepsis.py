"""The sepsis model: PhysioNet 2019 files -> features -> XGBoost, scoring and evaluation.

Every hour is scored from data up to that hour only: the features are causal (see
fhir_mappings.features), so scoring a whole stay at once equals scoring it hour by hour.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import (
    FeatureSpec,
    build_features,
    physionet_to_table,
    sepsis_feature_spec,
)

from .bands import BandReport, band_report, with_interrupt_band
from .baselines import BASELINES, baseline_scores
from .calibration import calibration_report, fit_isotonic
from .datasets import default_sepsis_path, read_physionet
from .device import choose_device
from .drift_reference import holdout_source, reference_from
from .manifest import Calibration, ModelManifest
from .physionet2019 import accuracy_f_measure, challenge_auc, utility_table
from .registration import register_version
from .registry import ModelRegistry
from .score import RiskModel
from .sepsis_evaluation import sepsis_evaluation, write_sepsis_report
from .task import EvaluateOptions, RiskTask, TrainOptions
from .train import patient_split, train_booster

__all__ = [
    "CV_FOLDS",
    "HORIZON_HOURS",
    "SEPSIS_OUTCOME",
    "SEPSIS_PARAMS",
    "SEPSIS_ROUNDS",
    "SepsisData",
    "best_threshold",
    "development_split",
    "evaluate_sepsis",
    "grouped_folds",
    "load_sepsis_data",
    "sepsis_data",
    "out_of_fold",
    "score_sepsis",
    "sepsis_metrics",
    "train_sepsis",
]

SEPSIS_OUTCOME = ("http://snomed.info/sct", "91302008", "Sepsis")
HORIZON_HOURS = 6.0  # SepsisLabel is 1 from six hours before clinical onset
# The longest ICU stay in the training data (PhysioNet 2019 set A: ICULOS at most 336 h, two
# weeks; tests/models check it against the data). A clock beyond it is not scored: the model never
# saw such an hour, and such clocks mostly come from a missing ICU transfer or a wrong start.
TRAINED_MAX_ICU_HOURS = 336


@dataclass(frozen=True)
class SepsisData:
    frame: pd.DataFrame  # as read
    features: np.ndarray  # (rows, features) float32, one row per input row
    label: np.ndarray | None  # SepsisLabel per input row
    patient: np.ndarray  # per input row
    hour: np.ndarray  # per input row (the file's own row index per patient)
    baselines: dict[str, np.ndarray] | None = None  # clinical score per input row, when asked for


def load_sepsis_data(
    path: Path | str,
    spec: FeatureSpec,
    *,
    patients: int | None = None,
    baselines: bool = False,
    only: np.ndarray | None = None,
) -> SepsisData:
    """`only`: keep these patient ids (e.g. the held-out test patients)."""
    frame = read_physionet(path)
    if patients is not None:
        keep = np.unique(frame["patient"].to_numpy())[:patients]
        frame = frame[frame["patient"].isin(keep)].reset_index(drop=True)
    if only is not None:
        frame = frame[frame["patient"].isin(only)].reset_index(drop=True)
    return sepsis_data(frame, spec, baselines=baselines)


def sepsis_data(frame: pd.DataFrame, spec: FeatureSpec, *, baselines: bool = False) -> SepsisData:
    """Features (and optionally the clinical baselines) of a frame in PhysioNet 2019 layout, sorted
    by patient and hour: the file reader's output, or a site's canonical hourly table."""
    tab = physionet_to_table(frame)
    features = build_features(tab.table, spec)
    real = tab.source_row >= 0
    order = np.argsort(tab.source_row[real], kind="stable")
    by_input = features[real][order]  # back to the input's row order
    scores = None
    if baselines:
        scores = {name: v[real][order] for name, v in baseline_scores(tab.table).items()}
    label = frame["SepsisLabel"].to_numpy(dtype=np.int8) if "SepsisLabel" in frame else None
    hour = frame["hour"].to_numpy() if "hour" in frame else frame["ICULOS"].to_numpy()
    return SepsisData(frame, by_input, label, frame["patient"].to_numpy(), hour, scores)


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


def sepsis_metrics(
    probability: np.ndarray, label: np.ndarray, patient: np.ndarray, threshold: float
) -> dict[str, Any]:
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


# Fixed by experiments/tune_sepsis.py (patient-grouped CV on set A; see docs/sepsis-model.md).
SEPSIS_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": ["logloss", "aucpr"],
    "tree_method": "hist",
    "eta": 0.05,
    "max_depth": 5,
    "min_child_weight": 20.0,
    "subsample": 0.8,
    "colsample_bytree": 0.5,
    "lambda": 1.0,
    "max_bin": 128,
    # Imbalance: no re-weighting. Rows are about 2 % positive, but the probability is then
    # calibrated and the alert threshold is set on utility, which is where the asymmetry of a
    # missed septic patient lives; weighting would only be undone by the calibration.
    "scale_pos_weight": 1.0,
}
SEPSIS_ROUNDS = 250
CV_FOLDS = 4
TEST_FRACTION = 0.2


def development_split(patient: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(development, held-out test) patient ids: the split `cds evaluate --holdout` re-derives."""
    dev, test = patient_split(patient, (1 - TEST_FRACTION, TEST_FRACTION), seed)
    return dev, test


def grouped_folds(patient: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k disjoint sets of patient ids covering all patients (patient-grouped CV)."""
    return patient_split(patient, (1.0,) * k, seed + 1)


def out_of_fold(
    x: np.ndarray,
    y: np.ndarray,
    patient: np.ndarray,
    *,
    params: dict[str, Any],
    rounds: int,
    folds: int,
    seed: int,
    device: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Raw probabilities for every row from a model that never saw that row's patient."""
    oof = np.full(len(y), np.nan)
    for i, ids in enumerate(grouped_folds(patient, folds, seed)):
        held = np.isin(patient, ids)
        trained = train_booster(
            x[~held],
            y[~held],
            params={**params, "seed": seed + i},
            num_boost_round=rounds,
            progress=progress,
            description=f"sepsis fold {i + 1}/{folds}",
            device=device,
        )
        oof[held] = trained.booster.inplace_predict(x[held], missing=np.nan)
    return oof


def train_sepsis(
    data_path: Path | str,
    registry: ModelRegistry,
    *,
    seed: int = 2019,
    num_boost_round: int = SEPSIS_ROUNDS,
    patients: int | None = None,
    progress: bool = True,
    activate: bool = True,
    device: str | None = None,
    folds: int = CV_FOLDS,
) -> ModelManifest:
    """Development/test split by patient; patient-grouped CV on development gives out-of-fold
    probabilities, on which the isotonic calibration and the utility-maximising threshold are
    fitted; the final booster is trained on all development patients with the same settings
    and judged once on the held-out test patients."""
    spec = sepsis_feature_spec()
    data = load_sepsis_data(data_path, spec, patients=patients)
    if data.label is None:
        raise ValueError("training data has no SepsisLabel column")
    dev_ids, test_ids = development_split(data.patient, seed)
    dev, test = np.isin(data.patient, dev_ids), np.isin(data.patient, test_ids)
    params = {**SEPSIS_PARAMS, "seed": seed}

    started = time.perf_counter()
    oof_raw = out_of_fold(
        data.features[dev],
        data.label[dev],
        data.patient[dev],
        params=params,
        rounds=num_boost_round,
        folds=folds,
        seed=seed,
        device=device,
        progress=progress,
    )
    calibration = fit_isotonic(oof_raw, data.label[dev])
    model_cal = _calibrator(calibration)
    oof = model_cal(oof_raw)
    threshold, oof_utility = best_threshold(oof, data.label[dev], data.patient[dev])
    # Each band's PPV and sensitivity on the out-of-fold predictions the threshold was chosen on.
    bands = with_interrupt_band(_base_bands(threshold), oof, data.label[dev], threshold)
    bands_measured = band_report(
        bands,
        oof,
        data.label[dev],
        measured_on=f"out-of-fold predictions on the development patients ({folds}-fold, patient-grouped), "
        "per scored ICU hour",
    )
    trained = train_booster(
        data.features[dev],
        data.label[dev],
        params=params,
        num_boost_round=num_boost_round,
        progress=progress,
        description="sepsis final",
        device=device,
    )
    train_seconds = time.perf_counter() - started

    p_test = model_cal(
        np.asarray(trained.booster.inplace_predict(data.features[test], missing=np.nan), dtype=np.float64)
    )
    test_metrics = sepsis_metrics(p_test, data.label[test], data.patient[test], threshold)
    oof_auroc, _ = challenge_auc(data.label[dev], oof)
    cal = calibration_report(data.label[test], p_test).as_dict()

    manifest, _ = register_version(
        registry,
        name="sepsis",
        title="Sepsis risk (XGBoost, calibrated)",
        outcome="Sepsis (Sepsis-3) onset within the next 6 hours, or ongoing",
        horizon_hours=HORIZON_HOURS,
        spec=spec,
        model_bytes=trained.model_bytes(),
        data_path=data_path,
        data_label=str(data_path),
        rows=int(len(data.label)),
        patients=int(len(np.unique(data.patient))),
        split=f"patients {1 - TEST_FRACTION:.0%} development / {TEST_FRACTION:.0%} held-out test, "
        f"seed {seed}; "
        f"{folds}-fold patient-grouped CV on development for calibration and threshold",
        params=trained.params,
        num_boost_round=trained.num_boost_round,
        threshold=threshold,
        risk_bands=bands,
        band_report=bands_measured,
        calibration=calibration,
        metrics={
            "test": {**test_metrics, "calibration": cal},
            "out_of_fold": {"auroc": round(oof_auroc, 4), "utility_at_threshold": round(oof_utility, 4)},
            "train_seconds": round(train_seconds, 1),
            "tuning": "experiments/tune_sepsis.py (patient-grouped CV on set A); parameters fixed in "
            "models/sepsis.py",
            "excluded_features": "ICULOS and HospAdmTime (ICU clock); EtCO2 (never recorded in set A)",
        },
        device=trained.device,
        seed=seed,
        activate=activate,
        reference=reference_from(
            data.features[test], p_test, spec.names, source=holdout_source(data_path, seed), seed=seed
        ),
    )
    return manifest


def _base_bands(threshold: float) -> dict[str, float]:
    return {"low": 0.0, "moderate": threshold / 2, "high": threshold}


def measure_sepsis_bands(model: RiskModel, path: Path | str) -> tuple[dict[str, float], BandReport]:
    """For a registered version without a band report: the held-out test patients (same data and
    seed as its training), scored by the registered model. Its out-of-fold predictions were not
    kept, so this is the one split of set A it never learned from."""
    patient = read_physionet(path)["patient"].to_numpy()
    test_ids = development_split(patient, model.manifest.seed)[1]
    data = load_sepsis_data(path, model.spec, only=test_ids)
    if data.label is None:
        raise ValueError("the data has no SepsisLabel column")
    p = score_sepsis(model, data)
    threshold = model.threshold
    bands = with_interrupt_band(_base_bands(threshold), p, data.label, threshold)
    report = band_report(
        bands,
        p,
        data.label,
        measured_on=f"held-out test patients ({TEST_FRACTION:.0%} of {Path(path).name}, seed "
        f"{model.manifest.seed}), per scored ICU hour; measured after training by `cds models bands sepsis`",
    )
    return bands, report


def _calibrator(calibration: Calibration) -> Callable[[np.ndarray], np.ndarray]:
    """The same interpolation `RiskModel.calibrate` serves with."""
    x, y = np.asarray(calibration.x, dtype=np.float64), np.asarray(calibration.y, dtype=np.float64)
    return lambda raw: np.interp(np.asarray(raw, dtype=np.float64), x, y)


def score_sepsis(model: RiskModel, data: SepsisData) -> np.ndarray:
    return model.predict(data.features)


def evaluate_sepsis(
    model: RiskModel,
    data: SepsisData,
    *,
    report: Path | None = None,
    replicates: int = 200,
    data_label: str = "",
) -> dict[str, Any]:
    """The challenge metrics at the stored threshold, plus (when `data` carries baselines) the
    full clinical evaluation; `report` also writes metrics.json, model_card.md and the plots."""
    if data.label is None:
        raise ValueError("evaluation data has no SepsisLabel column")
    probability = score_sepsis(model, data)
    metrics: dict[str, Any] = sepsis_metrics(probability, data.label, data.patient, model.threshold)
    metrics["model"] = f"{model.name}@{model.version}"
    if data.baselines is None:
        return metrics
    cuts = {b.name: b.alert_at for b in BASELINES}
    columns = {c: data.frame[c].to_numpy(dtype=np.float64) for c in ("Gender", "Age", "Unit1", "Unit2")}
    metrics.update(
        sepsis_evaluation(
            probability,
            data.label,
            data.patient,
            model.threshold,
            subgroup_columns=columns,
            baselines={k: (v, cuts[k]) for k, v in data.baselines.items()},
            replicates=replicates,
        )
    )
    if report is not None:
        write_sepsis_report(
            report,
            metrics,
            probability=probability,
            label=data.label,
            patient=data.patient,
            baselines=data.baselines,
            model_label=f"{model.manifest.title} v{model.version}",
            data_label=data_label or "the given data",
        )
    return metrics


# --- the task value: how the CLI, the server and the hook reach this model -----------------------


def _train_sepsis(path: Path, registry: ModelRegistry, options: TrainOptions) -> ModelManifest:
    return train_sepsis(
        path,
        registry,
        seed=options.seed,
        patients=options.patients,
        num_boost_round=options.rounds or SEPSIS_ROUNDS,
        activate=options.activate,
        device=choose_device(options.device),
    )


def _score_sepsis(model: RiskModel, path: Path) -> Iterator[str]:
    data = load_sepsis_data(path, model.spec)
    probability = score_sepsis(model, data)
    for patient, hour, p in zip(data.patient.tolist(), data.hour.tolist(), probability.tolist(), strict=True):
        yield json.dumps({"patient": patient, "hour": int(hour), "probability": p})


def _evaluate_sepsis(model: RiskModel, path: Path, options: EvaluateOptions) -> dict[str, Any]:
    only = None
    if options.holdout:
        only = development_split(read_physionet(path)["patient"].to_numpy(), model.manifest.seed)[1]
    data = load_sepsis_data(path, model.spec, baselines=True, only=only)
    label = path.name + (" (held-out test patients)" if options.holdout else "")
    return evaluate_sepsis(
        model, data, report=options.report, replicates=options.replicates or 200, data_label=label
    )


def _holdout_rows(path: Path, spec: FeatureSpec, seed: int) -> np.ndarray:
    """The held-out test patients' rows (the split `train_sepsis` makes with `seed`)."""
    only = development_split(read_physionet(path)["patient"].to_numpy(), seed)[1]
    return load_sepsis_data(path, spec, only=only).features


def _serving_row(table: Any, spec: FeatureSpec) -> np.ndarray:
    """The hour being scored: the stay's last row, computed alone (bit for bit the batch path's)."""
    return build_features(table, spec, rows=[len(table) - 1] if len(table) else [])


SEPSIS_TASK = RiskTask(
    name="sepsis",
    outcome=SEPSIS_OUTCOME,
    feature_spec=sepsis_feature_spec,
    serving_row=_serving_row,
    default_data=default_sepsis_path,
    data_help="PhysioNet 2019 layout: a parquet file like setA.parquet or a directory of .psv files",
    train=_train_sepsis,
    score_lines=_score_sepsis,
    evaluate=_evaluate_sepsis,
    holdout_rows=_holdout_rows,
    measure_bands=measure_sepsis_bands,
)
