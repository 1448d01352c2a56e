"""The 30-day readmission model: Diabetes 130-US -> discharge table -> features -> XGBoost,
calibrated, with a report (intervals by patient, calibration, subgroups, LACE-style baseline).

Cohort (Strack et al. 2014): each patient's first encounter, discharges to death or hospice
removed; label `readmitted == "<30"`. Any file in the dataset's layout (csv, csv.gz or parquet) works.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import (
    DischargeTable,
    FeatureSpec,
    build_readmission_features,
    diabetes130_to_table,
    readmission_cohort,
    readmission_feature_spec,
    readmitted_within_30_days,
)

from .bands import BandReport, band_report, with_interrupt_band
from .calibration import calibration_report, fit_platt
from .datasets import is_bulk_export
from .device import choose_device
from .drift_reference import holdout_source, reference_from
from .errors import DatasetError, ModelError
from .lace import LACE_DESCRIPTION, lace_score
from .manifest import ModelManifest
from .metrics import auprc, auroc, bootstrap_by_group, operating_point, subgroup_table
from .readmission_export import EXPORT_COHORT, read_readmission_export
from .registration import register_version
from .registry import ModelRegistry
from .report import markdown_table, plot_calibration, plot_pr, plot_roc, write_model_card
from .score import RiskModel
from .task import EvaluateOptions, RiskTask, TrainOptions
from .train import default_params, patient_split, train_booster

__all__ = [
    "DIABETES130_COHORT",
    "READMISSION_OUTCOME",
    "ReadmissionData",
    "default_readmission_path",
    "evaluate_readmission",
    "load_readmission_data",
    "read_diabetes130",
    "readmission_bands",
    "readmission_data",
    "readmission_params",
    "readmission_subgroups",
    "require_both_outcomes",
    "score_readmission",
    "train_readmission",
]

READMISSION_OUTCOME = ("http://snomed.info/sct", "417005", "Hospital re-admission")
HORIZON_DAYS = 30
READMISSION_ROUNDS = 3000  # the most boosting rounds; early stopping on the validation split decides
FLAGGED_FRACTION = 0.2  # the alert threshold flags this share of validation discharges


def default_readmission_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / "diabetes130" / "diabetic_data.csv.gz"


def read_diabetes130(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset not found: {path}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        frame = pd.read_parquet(path)
        # The csv's missing marker may have been kept as text; a real 'None' (test not done) stays.
        text = frame.select_dtypes(include=["object", "string"]).columns
        frame[text] = frame[text].replace({"?": np.nan, "": np.nan})
    elif name.endswith((".csv", ".csv.gz")):
        # '?' marks missing; 'None' is a real value (a test not done), not missing.
        frame = pd.read_csv(path, keep_default_na=False, na_values=["?", ""], low_memory=False)
    else:
        raise DatasetError(
            f"unsupported dataset format: {path.name} (csv, csv.gz or parquet in the Diabetes 130-US layout)"
        )
    if "patient_nbr" not in frame or "encounter_id" not in frame:
        raise DatasetError(f"{path} is not in the Diabetes 130-US layout: no patient_nbr/encounter_id column")
    return frame


DIABETES130_COHORT = (
    "Cohort as in training: each patient's first discharge, deaths and hospice discharges removed; "
    "features known at discharge only."
)


@dataclass(frozen=True)
class ReadmissionData:
    frame: pd.DataFrame  # the cohort rows as read (an export's: race, gender, age for subgroups)
    table: DischargeTable
    features: np.ndarray
    label: np.ndarray | None
    patient: np.ndarray
    cohort: str = DIABETES130_COHORT  # how reports describe the rows

    def subset(self, mask: np.ndarray) -> ReadmissionData:
        table = DischargeTable(self.table.patient[mask], self.table.encounter[mask], self.table.values[mask])
        label = self.label[mask] if self.label is not None else None
        frame = self.frame[mask].reset_index(drop=True)
        return ReadmissionData(frame, table, self.features[mask], label, self.patient[mask], self.cohort)


def load_readmission_data(path: Path | str, spec: FeatureSpec) -> ReadmissionData:
    """A file in the Diabetes 130-US layout, or a FHIR Bulk export directory (its discharges
    mapped as the hook maps them, outcomes from its own later inpatient Encounters)."""
    if is_bulk_export(path):
        export = read_readmission_export(path)
        table = export.table
        features = build_readmission_features(table, spec)
        return ReadmissionData(export.frame, table, features, export.label, table.patient, EXPORT_COHORT)
    return readmission_data(read_diabetes130(path), spec)


def require_both_outcomes(label: np.ndarray, name: str) -> None:
    """Discrimination and calibration need readmitted and not readmitted discharges; say so plainly."""
    readmitted = int(np.sum(label))
    if readmitted == 0 or readmitted == len(label):
        raise DatasetError(
            f"{name} has {len(label)} discharges with an outcome, {readmitted} readmitted within 30 days: "
            "the evaluation (AUROC, calibration) needs at least one readmitted and one not readmitted "
            "discharge"
        )


def readmission_data(frame: pd.DataFrame, spec: FeatureSpec) -> ReadmissionData:
    """The cohort, its discharge table and features from rows in the Diabetes 130-US layout."""
    if "patient_nbr" not in frame or "encounter_id" not in frame:
        raise DatasetError("not in the Diabetes 130-US layout: no patient_nbr/encounter_id column")
    cohort = readmission_cohort(frame)
    table = diabetes130_to_table(cohort)
    label = readmitted_within_30_days(cohort) if "readmitted" in cohort else None
    return ReadmissionData(
        cohort, table, build_readmission_features(table, spec), label, cohort["patient_nbr"].to_numpy()
    )


def readmission_params(seed: int) -> dict[str, Any]:
    """Shallow, strongly regularised trees: the signal is weak and spread over many fields."""
    return {
        **default_params(seed),
        "eval_metric": ["logloss", "auc"],
        "eta": 0.03,
        "max_depth": 3,
        "min_child_weight": 20.0,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "lambda": 5.0,
    }


def score_readmission(model: RiskModel, data: ReadmissionData) -> np.ndarray:
    return model.predict(data.features)


def readmission_subgroups(frame: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    race = (
        frame["race"].fillna("Unknown").astype(str)
        if "race" in frame
        else pd.Series("Unknown", index=frame.index)
    )
    sex = frame["gender"].astype(str)
    age = frame["age"].astype(str).str.extract(r"\[(\d+)")[0].astype(float)
    bands = {
        "<50": age < 50,
        "50-59": (age >= 50) & (age < 60),
        "60-69": (age >= 60) & (age < 70),
        "70-79": (age >= 70) & (age < 80),
        "80+": age >= 80,
    }
    return {
        "race": {r: (race == r).to_numpy() for r in sorted(race.unique())},
        "sex": {s: (sex == s).to_numpy() for s in sorted(sex.unique())},
        "age_band": {b: m.to_numpy() for b, m in bands.items() if m.any()},  # a small site may lack one
    }


def _ci(statistic: Any, patient: np.ndarray, replicates: int, seed: int) -> dict[str, float]:
    return bootstrap_by_group(statistic, patient, replicates=replicates, seed=seed).as_dict()


def readmission_report(
    probability: np.ndarray, data: ReadmissionData, threshold: float, *, replicates: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Discrimination with patient-bootstrap intervals, calibration, subgroups, LACE comparison."""
    if data.label is None:
        raise DatasetError("evaluation data has no `readmitted` column")
    y, patient = data.label, data.patient
    lace = lace_score(data.table)
    report: dict[str, Any] = {
        "encounters": int(len(y)),
        "patients": int(len(np.unique(patient))),
        "readmitted_30d": int(y.sum()),
        "prevalence": round(float(y.mean()), 4),
        "auroc": _ci(lambda i: auroc(y[i], probability[i]), patient, replicates, seed),
        "auprc": _ci(lambda i: auprc(y[i], probability[i]), patient, replicates, seed),
        "calibration": calibration_report(y, probability).as_dict(),
        "operating_point": operating_point(y, probability, threshold).as_dict(),
        "lace_baseline": {
            "definition": LACE_DESCRIPTION,
            "auroc": _ci(lambda i: auroc(y[i], lace[i]), patient, replicates, seed),
            "auprc": _ci(lambda i: auprc(y[i], lace[i]), patient, replicates, seed),
            "auroc_gain": _ci(
                lambda i: auroc(y[i], probability[i]) - auroc(y[i], lace[i]), patient, replicates, seed
            ),
        },
        "subgroups": subgroup_table(y, probability, readmission_subgroups(data.frame), threshold),
    }
    gaps = {k: v["largest_auroc_gap"] for k, v in report["subgroups"].items()}
    known = {k: v for k, v in gaps.items() if v is not None}
    report["largest_subgroup_auroc_gap"] = (
        {"grouping": max(known, key=lambda k: known[k]), "gap": max(known.values())} if known else None
    )
    return report


def write_readmission_report(
    report_dir: Path,
    probability: np.ndarray,
    data: ReadmissionData,
    report: dict[str, Any],
    model: str,
    note: str = "",
) -> Path:
    """metrics.json (the printed evaluation), model_card.md and the PNG plots."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    y = data.label
    assert y is not None
    lace = lace_score(data.table)
    plot_roc(
        report_dir / "roc.png",
        {"XGBoost": (y, probability), "LACE-style": (y, lace)},
        "30-day readmission: ROC",
    )
    plot_pr(
        report_dir / "pr.png",
        {"XGBoost": (y, probability), "LACE-style": (y, lace)},
        "30-day readmission: precision-recall",
    )
    plot_calibration(report_dir / "calibration.png", y, probability, "30-day readmission: calibration")
    return write_model_card(
        report_dir / "model_card.md",
        f"Model card: 30-day readmission ({model})",
        model_card_sections(report, note),
    )


def _fmt(ci: dict[str, float]) -> str:
    return f"{ci['estimate']:.3f} (95% CI {ci['ci95_low']:.3f}-{ci['ci95_high']:.3f})"


def model_card_sections(report: dict[str, Any], note: str = "") -> list[tuple[str, str]]:
    cal, op, lace = report["calibration"], report["operating_point"], report["lace_baseline"]
    sub_rows = []
    for grouping, block in report["subgroups"].items():
        for name, row in block["groups"].items():
            sub_rows.append(
                [
                    grouping,
                    name,
                    row["n"],
                    row["positives"],
                    row["auroc"],
                    row["sensitivity"],
                    row["false_positive_rate"],
                ]
            )
    auroc_est = report["auroc"]["estimate"]
    audit = (
        "AUROC is above 0.70: audit for leakage before use (see docs/readmission-model.md)."
        if auroc_est > 0.70
        else "AUROC is at or below 0.70, in the published range for this dataset; "
        "no sign of leakage from the score itself. "
        "Leakage controls: one encounter per patient (the first), split by patient, features known at "
        "discharge only, no `readmitted`-derived field and no later encounter of the same patient."
    )
    gap = report.get("largest_subgroup_auroc_gap")
    return [
        (
            "Intended use",
            "Estimates, at hospital discharge, the probability that an adult with diabetes is readmitted "
            "within 30 days, "
            "to prompt follow-up within 7 days. A decision aid, not a decision.",
        ),
        (
            "Data",
            f"{report['encounters']} discharges of {report['patients']} patients, {report['readmitted_30d']} "
            "readmitted within 30 days "
            f"(prevalence {report['prevalence']:.3f}). Cohort: first encounter per patient, discharges to "
            "death or hospice excluded. " + note,
        ),
        (
            "Discrimination",
            markdown_table(
                ["metric", "model", "LACE-style baseline"],
                [
                    ["AUROC", _fmt(report["auroc"]), _fmt(lace["auroc"])],
                    ["AUPRC", _fmt(report["auprc"]), _fmt(lace["auprc"])],
                    ["AUROC gain over baseline", _fmt(lace["auroc_gain"]), ""],
                ],
            )
            + "\n\nIntervals: 95 % percentile bootstrap over patients "
            + f"({report['auroc']['replicates']} replicates). Baseline: {lace['definition']}.",
        ),
        (
            "Calibration",
            markdown_table(
                ["Brier", "ECE (10 bins)", "intercept", "slope"],
                [[cal["brier"], cal["ece"], cal["intercept"], cal["slope"]]],
            ),
        ),
        ("Operating point", markdown_table(list(op.keys()), [list(op.values())])),
        (
            "Subgroups",
            markdown_table(
                ["grouping", "group", "n", "readmitted", "AUROC", "sensitivity", "false-positive rate"],
                sub_rows,
            )
            + (
                f"\n\nLargest AUROC gap: {gap['gap']:.3f} ({gap['grouping']}); AUROC is shown only for "
                "groups with at least 10 readmissions."
                if gap
                else ""
            ),
        ),
        (
            "Fairness note",
            "Race is not a model input (it is a social category that here mostly tracks access to care); "
            "it is used only to check performance by group, as are sex and age band.",
        ),
        ("Leakage audit", audit),
    ]


def train_readmission(
    data_path: Path | str,
    registry: ModelRegistry,
    *,
    seed: int = 2019,
    num_boost_round: int = READMISSION_ROUNDS,
    progress: bool = True,
    activate: bool = True,
    device: str | None = None,
    replicates: int = 500,
) -> ModelManifest:
    spec = readmission_feature_spec()
    data = load_readmission_data(data_path, spec)
    if data.label is None:
        raise DatasetError("training data has no `readmitted` column")
    train_ids, valid_ids, test_ids = patient_split(data.patient, (0.7, 0.1, 0.2), seed)
    parts = {
        name: np.isin(data.patient, ids)
        for name, ids in (("train", train_ids), ("valid", valid_ids), ("test", test_ids))
    }

    trained = train_booster(
        data.features[parts["train"]],
        data.label[parts["train"]],
        params=readmission_params(seed),
        num_boost_round=num_boost_round,
        x_valid=data.features[parts["valid"]],
        y_valid=data.label[parts["valid"]],
        early_stopping_rounds=300,
        progress=progress,
        description="readmission",
        device=device,
    )
    # Keep the best round only, so the stored file is exactly the model that is scored.
    booster = (
        trained.booster[: trained.booster.best_iteration + 1]
        if trained.booster.best_iteration is not None
        else trained.booster
    )
    booster.set_param({"device": "cpu"})

    def raw(mask: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(data.features[mask], missing=np.nan), dtype=np.float64)

    calibration = fit_platt(raw(parts["valid"]), data.label[parts["valid"]])
    x, yv = np.asarray(calibration.x), np.asarray(calibration.y)
    p_valid = np.interp(raw(parts["valid"]), x, yv)
    threshold = float(np.float32(np.quantile(p_valid, 1 - FLAGGED_FRACTION)))
    prevalence = float(data.label[parts["train"]].mean())
    bands = readmission_bands(prevalence, threshold, p_valid, data.label[parts["valid"]])
    bands_measured = band_report(
        bands, p_valid, data.label[parts["valid"]], measured_on=_VALIDATION_WORDS.format(seed=seed)
    )
    p_test = np.interp(raw(parts["test"]), x, yv)
    test = data.subset(parts["test"])
    report = readmission_report(p_test, test, threshold, replicates=replicates, seed=seed)

    manifest, target = register_version(
        registry,
        name="readmission",
        title="30-day readmission risk (XGBoost)",
        outcome="Unplanned readmission within 30 days of discharge (Diabetes 130-US definition)",
        horizon_hours=HORIZON_DAYS * 24.0,
        spec=spec,
        model_bytes=bytes(booster.save_raw(raw_format="ubj")),
        data_path=data_path,
        data_label=Path(data_path).name,
        rows=int(len(data.label)),
        patients=int(len(np.unique(data.patient))),
        split=f"patients 70/10/20 train/validation(early stopping, calibration, threshold)/test, seed {seed}",
        params=trained.params,
        num_boost_round=int(booster.num_boosted_rounds()),
        threshold=threshold,
        risk_bands=bands,
        band_report=bands_measured,
        calibration=calibration,
        metrics={"test": report, "flagged_fraction_target": FLAGGED_FRACTION},
        device=trained.device,
        seed=seed,
        activate=activate,
        reference=reference_from(
            data.features[parts["test"]],
            p_test,
            spec.names,
            source=holdout_source(data_path, seed),
            seed=seed,
        ),
    )
    note = f"Held-out test split (20 % of patients, seed {seed}) of {Path(data_path).name}."
    write_model_card(
        target / "model_card.md",
        "Model card: 30-day readmission (readmission v" + manifest.version + ")",
        model_card_sections(report, note),
    )
    return manifest


_VALIDATION_WORDS = (
    "validation patients (10 % of the patients, seed {seed}: the split that chose the threshold), "
    "one row per discharge"
)


def _base_bands(prevalence: float, threshold: float) -> dict[str, float]:
    return {"low": 0.0, "moderate": round(min(prevalence, threshold * 0.75), 6), "high": threshold}


def readmission_bands(
    prevalence: float, threshold: float, probability: np.ndarray, label: np.ndarray
) -> dict[str, float]:
    """low / moderate (from the prevalence, below the threshold) / high (the threshold), and a
    very-high band where the calibrated `probability` and `label` show one."""
    return with_interrupt_band(_base_bands(prevalence, threshold), probability, label, threshold)


def measure_readmission_bands(model: RiskModel, path: Path | str) -> tuple[dict[str, float], BandReport]:
    """For a registered version without a band report: its validation split (same data and seed
    as its training) scored by the registered model, as training measures it."""
    data = load_readmission_data(path, model.spec)
    if data.label is None:
        raise DatasetError("the data has no `readmitted` column")
    seed = model.manifest.seed
    train_ids, valid_ids, _ = patient_split(data.patient, (0.7, 0.1, 0.2), seed)
    valid, train = np.isin(data.patient, valid_ids), np.isin(data.patient, train_ids)
    p_valid = score_readmission(model, data.subset(valid))
    prevalence = float(data.label[train].mean())
    threshold = model.threshold
    bands = readmission_bands(prevalence, threshold, p_valid, data.label[valid])
    words = (
        _VALIDATION_WORDS.format(seed=seed) + "; measured after training by `cds models bands readmission`"
    )
    return bands, band_report(bands, p_valid, data.label[valid], measured_on=words)


def evaluate_readmission(
    model: RiskModel, data: ReadmissionData, *, report_dir: Path | None = None, replicates: int = 500
) -> dict[str, Any]:
    probability = score_readmission(model, data)
    report = readmission_report(probability, data, model.threshold, replicates=replicates)
    report["model"] = f"{model.name}@{model.version}"
    if report_dir is not None:
        write_readmission_report(report_dir, probability, data, report, report["model"])
    return report


# --- the task value: how the CLI, the server and the hook reach this model -----------------------


def _train_readmission(path: Path, registry: ModelRegistry, options: TrainOptions) -> ModelManifest:
    if options.patients is not None:
        raise ModelError(
            "--patients is for sepsis only: the readmission cohort is one discharge per patient already"
        )
    return train_readmission(
        path,
        registry,
        seed=options.seed,
        activate=options.activate,
        device=choose_device(options.device),
        num_boost_round=options.rounds or READMISSION_ROUNDS,
    )


def _score_readmission(model: RiskModel, path: Path) -> Iterator[str]:
    data = load_readmission_data(path, model.spec)
    probability = score_readmission(model, data)
    for patient, encounter, p in zip(
        data.patient.tolist(), data.table.encounter.tolist(), probability.tolist(), strict=True
    ):
        yield json.dumps({"patient": patient, "encounter": encounter, "probability": p})


def _holdout_rows(path: Path, spec: FeatureSpec, seed: int) -> np.ndarray:
    """The test patients' rows of the 70/10/20 split `train_readmission` makes with `seed`."""
    data = load_readmission_data(path, spec)
    test_ids = patient_split(data.patient, (0.7, 0.1, 0.2), seed)[2]
    return data.features[np.isin(data.patient, test_ids)]


def _evaluate_readmission(model: RiskModel, path: Path, options: EvaluateOptions) -> dict[str, Any]:
    data = load_readmission_data(path, model.spec)
    if data.label is not None:
        require_both_outcomes(data.label, str(path))
    if options.holdout:
        # The same 70/10/20 patient split `train_readmission` makes with the model's seed.
        test_ids = patient_split(data.patient, (0.7, 0.1, 0.2), model.manifest.seed)[2]
        data = data.subset(np.isin(data.patient, test_ids))
    return evaluate_readmission(model, data, report_dir=options.report, replicates=options.replicates or 500)


READMISSION_TASK = RiskTask(
    name="readmission",
    outcome=READMISSION_OUTCOME,
    feature_spec=readmission_feature_spec,
    serving_row=build_readmission_features,
    default_data=default_readmission_path,
    data_help="Diabetes 130-US layout: diabetic_data.csv or .csv.gz, or a FHIR Bulk export directory",
    train=_train_readmission,
    score_lines=_score_readmission,
    evaluate=_evaluate_readmission,
    holdout_rows=_holdout_rows,
    measure_bands=measure_readmission_bands,
)
