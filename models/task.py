"""One value per model: `RiskTask` binds a model's name and outcome, its feature spec, the builder
that turns its canonical table into the row a service scores, and how it is trained, scored and
evaluated from a training file. The CLI, the server and the services look a task up by name
(`models.catalog`) instead of branching on it.

A third model is one task module (its `RiskTask` value, training and evaluation), one hook module
(its `Service`: prefetch, FHIR -> canonical table, card wording) and its tables in fhir_mappings;
the path from a canonical table to a card and a RiskAssessment (`hooks.scoring`) and the
registration of a trained version (`models.registration`) are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fhir_mappings import FeatureSpec

if TYPE_CHECKING:
    from .bands import BandReport
    from .manifest import ModelManifest
    from .registry import ModelRegistry
    from .score import RiskModel

__all__ = ["EvaluateOptions", "RiskTask", "TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    seed: int = 2019
    activate: bool = True
    patients: int | None = None  # the first N patients only (quick runs)
    rounds: int | None = None  # None: the model's tuned number
    device: str = "auto"  # auto | cpu | cuda (models.device.choose_device)


@dataclass(frozen=True)
class EvaluateOptions:
    report: Path | None = None  # directory for metrics.json, the model card and plots
    replicates: int | None = None  # bootstrap replicates; None: the model's default
    holdout: bool = False  # only the patients the model held out (same data and seed as training)


@dataclass(frozen=True)
class RiskTask:
    name: str
    # What the probability is about: the RiskAssessment's prediction.outcome (system, code, display).
    outcome: tuple[str, str, str]
    feature_spec: Callable[[], FeatureSpec]
    # The canonical table of one patient's stay -> the one feature row a service scores now.
    serving_row: Callable[[Any, FeatureSpec], np.ndarray]
    default_data: Callable[[Path], Path]  # data_dir -> the training file
    data_help: str
    train: Callable[[Path, ModelRegistry, TrainOptions], ModelManifest]
    score_lines: Callable[[RiskModel, Path], Iterator[str]]  # one JSON line per scored row
    evaluate: Callable[[RiskModel, Path, EvaluateOptions], dict[str, Any]]
    # (training file, spec, seed) -> the feature rows of the held-out test patients (drift reference).
    holdout_rows: Callable[[Path, FeatureSpec, int], np.ndarray]
    # A registered model's bands measured again from its data (for versions trained before
    # band reports): the bands, with a very-high band where the data shows one, and their report.
    measure_bands: Callable[[RiskModel, Path], tuple[dict[str, float], BandReport]]
