"""Training, evaluation, registry and explanation of the risk models.

Imports `fhir_mappings` (the feature code shared with serving); nothing here does HTTP.
"""

from __future__ import annotations

from .baselines import BASELINES, Baseline, baseline_scores
from .catalog import MODELS, model_task
from .datasets import DEFAULT_DATA_DIR, data_fingerprint, default_sepsis_path, read_physionet
from .device import choose_device, serving_device
from .errors import DatasetError, FeatureSchemaMismatch, ModelError, ModelNotFound
from .lace import LACE_DESCRIPTION, lace_score
from .manifest import Calibration, FeatureEntry, ModelManifest
from .physionet2019 import accuracy_f_measure, challenge_auc, normalized_utility, utility_table
from .readmission import (
    READMISSION_OUTCOME,
    READMISSION_TASK,
    ReadmissionData,
    default_readmission_path,
    evaluate_readmission,
    load_readmission_data,
    read_diabetes130,
    readmission_params,
    score_readmission,
    train_readmission,
)
from .registration import register_version
from .registry import DEFAULT_REGISTRY, LoadedArtifact, ModelRegistry
from .retrain import override_report, register_retrained, retrain_from_served, served_table
from .score import Contribution, Explanation, RiskModel
from .sepsis import (
    CV_FOLDS,
    HORIZON_HOURS,
    SEPSIS_OUTCOME,
    SEPSIS_PARAMS,
    SEPSIS_ROUNDS,
    SEPSIS_TASK,
    TRAINED_MAX_ICU_HOURS,
    SepsisData,
    best_threshold,
    development_split,
    evaluate_sepsis,
    grouped_folds,
    load_sepsis_data,
    out_of_fold,
    score_sepsis,
    sepsis_data,
    sepsis_metrics,
    train_sepsis,
)
from .sepsis_evaluation import (
    alert_burden,
    patient_operating_point,
    sepsis_evaluation,
    sepsis_subgroups,
    utility_by_patient_bootstrap,
    write_sepsis_report,
)
from .site import (
    SiteData,
    SiteResult,
    SiteSplit,
    adapt_site,
    compare_on_holdout,
    load_site,
    recalibrate_site,
    register_site_version,
    site_split,
    validate_site,
)
from .task import EvaluateOptions, RiskTask, TrainOptions
from .train import TrainedBooster, default_params, patient_split, train_booster

__all__ = [
    "BASELINES",
    "Baseline",
    "CV_FOLDS",
    "Calibration",
    "Contribution",
    "DEFAULT_DATA_DIR",
    "DEFAULT_REGISTRY",
    "DatasetError",
    "EvaluateOptions",
    "Explanation",
    "FeatureEntry",
    "FeatureSchemaMismatch",
    "HORIZON_HOURS",
    "LACE_DESCRIPTION",
    "LoadedArtifact",
    "MODELS",
    "ModelError",
    "ModelManifest",
    "ModelNotFound",
    "ModelRegistry",
    "READMISSION_OUTCOME",
    "READMISSION_TASK",
    "ReadmissionData",
    "RiskModel",
    "RiskTask",
    "SEPSIS_OUTCOME",
    "SEPSIS_PARAMS",
    "SEPSIS_ROUNDS",
    "SEPSIS_TASK",
    "SepsisData",
    "SiteData",
    "SiteResult",
    "SiteSplit",
    "TRAINED_MAX_ICU_HOURS",
    "TrainOptions",
    "TrainedBooster",
    "accuracy_f_measure",
    "adapt_site",
    "alert_burden",
    "baseline_scores",
    "best_threshold",
    "challenge_auc",
    "choose_device",
    "compare_on_holdout",
    "data_fingerprint",
    "default_params",
    "default_readmission_path",
    "default_sepsis_path",
    "development_split",
    "evaluate_readmission",
    "evaluate_sepsis",
    "grouped_folds",
    "lace_score",
    "load_readmission_data",
    "load_sepsis_data",
    "load_site",
    "model_task",
    "normalized_utility",
    "out_of_fold",
    "override_report",
    "patient_operating_point",
    "patient_split",
    "read_diabetes130",
    "read_physionet",
    "readmission_params",
    "recalibrate_site",
    "register_retrained",
    "register_site_version",
    "register_version",
    "retrain_from_served",
    "score_readmission",
    "score_sepsis",
    "sepsis_data",
    "sepsis_evaluation",
    "sepsis_metrics",
    "sepsis_subgroups",
    "served_table",
    "serving_device",
    "site_split",
    "train_booster",
    "train_readmission",
    "train_sepsis",
    "utility_by_patient_bootstrap",
    "utility_table",
    "validate_site",
    "write_sepsis_report",
]
