"""Each model the product serves, as one value: its feature spec, where its data lives, and how it
is trained, scored and evaluated. The CLI and the server look a model up here by name instead of
branching on it, so adding a model is adding one entry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fhir_mappings import FeatureSpec, readmission_feature_spec, sepsis_feature_spec

from .datasets import default_sepsis_path, read_physionet
from .errors import ModelError
from .manifest import ModelManifest
from .readmission import (
    default_readmission_path,
    evaluate_readmission,
    load_readmission_data,
    score_readmission,
    train_readmission,
)
from .registry import ModelRegistry
from .score import RiskModel
from .sepsis import (
    SEPSIS_ROUNDS,
    development_split,
    evaluate_sepsis,
    load_sepsis_data,
    score_sepsis,
    train_sepsis,
)
from .train import patient_split

__all__ = ["MODELS", "EvaluateOptions", "ModelTask", "TrainOptions", "model_task"]


@dataclass(frozen=True)
class TrainOptions:
    seed: int = 2019
    activate: bool = True
    patients: int | None = None  # the first N patients only (quick runs)
    rounds: int | None = None  # None: the model's tuned number


@dataclass(frozen=True)
class EvaluateOptions:
    report: Path | None = None  # directory for metrics.json, the model card and plots
    replicates: int | None = None  # bootstrap replicates; None: the model's default
    holdout: bool = False  # only the patients the model held out (same data and seed as training)


@dataclass(frozen=True)
class ModelTask:
    name: str
    feature_spec: Callable[[], FeatureSpec]
    default_data: Callable[[Path], Path]  # data_dir -> the dataset file
    data_help: str
    train: Callable[[Path, ModelRegistry, TrainOptions], ModelManifest]
    score_lines: Callable[[RiskModel, Path], Iterator[str]]  # one JSON line per scored row
    evaluate: Callable[[RiskModel, Path, EvaluateOptions], dict[str, Any]]


# --- sepsis: one row per patient-hour -------------------------------------------------------------


def _train_sepsis(path: Path, registry: ModelRegistry, options: TrainOptions) -> ModelManifest:
    return train_sepsis(
        path,
        registry,
        seed=options.seed,
        patients=options.patients,
        num_boost_round=options.rounds or SEPSIS_ROUNDS,
        activate=options.activate,
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
    return evaluate_sepsis(model, data, report=options.report, replicates=options.replicates or 200, data_label=label)


# --- readmission: one row per index discharge ----------------------------------------------------


def _train_readmission(path: Path, registry: ModelRegistry, options: TrainOptions) -> ModelManifest:
    if options.patients is not None:
        raise ModelError("--patients is for sepsis only: the readmission cohort is one discharge per patient already")
    extra = {"num_boost_round": options.rounds} if options.rounds else {}
    return train_readmission(path, registry, seed=options.seed, activate=options.activate, **extra)


def _score_readmission(model: RiskModel, path: Path) -> Iterator[str]:
    data = load_readmission_data(path, model.spec)
    probability = score_readmission(model, data)
    for patient, encounter, p in zip(data.patient.tolist(), data.table.encounter.tolist(), probability.tolist(), strict=True):
        yield json.dumps({"patient": patient, "encounter": encounter, "probability": p})


def _evaluate_readmission(model: RiskModel, path: Path, options: EvaluateOptions) -> dict[str, Any]:
    data = load_readmission_data(path, model.spec)
    if options.holdout:
        # The same 70/10/20 patient split `train_readmission` makes with the model's seed.
        test_ids = patient_split(data.patient, (0.7, 0.1, 0.2), model.manifest.seed)[2]
        data = data.subset(np.isin(data.patient, test_ids))
    return evaluate_readmission(model, data, report_dir=options.report, replicates=options.replicates or 500)


MODELS: Mapping[str, ModelTask] = {
    task.name: task
    for task in (
        ModelTask(
            "sepsis",
            sepsis_feature_spec,
            default_sepsis_path,
            "PhysioNet 2019 layout: a parquet file like setA.parquet or a directory of .psv files",
            _train_sepsis,
            _score_sepsis,
            _evaluate_sepsis,
        ),
        ModelTask(
            "readmission",
            readmission_feature_spec,
            default_readmission_path,
            "Diabetes 130-US layout: diabetic_data.csv or .csv.gz",
            _train_readmission,
            _score_readmission,
            _evaluate_readmission,
        ),
    )
}


def model_task(name: str) -> ModelTask:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
