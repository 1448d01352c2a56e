"""The sepsis model judged like a clinical study: official utility and hour-level AUROC/AUPRC,
patient-level operating point, warning time, alert burden, calibration, subgroups, clinical
baselines on the same rows, and patient-bootstrap intervals; plus the report files.

Inputs are row-aligned arrays in time order per patient (each hour scored from data up to that
hour: the features are causal). Pure except `write_sepsis_report`, which writes files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import calibration_report
from .metrics import bootstrap_by_group, subgroup_table
from .physionet2019 import DT_OPTIMAL, challenge_auc, utility_table
from .report import (
    markdown_table,
    plot_calibration,
    plot_pr,
    plot_roc,
    plot_threshold_curve,
    write_model_card,
)

__all__ = [
    "alert_burden",
    "patient_operating_point",
    "sepsis_evaluation",
    "sepsis_subgroups",
    "utility_by_patient_bootstrap",
    "write_sepsis_report",
]

AGE_BANDS = ((0, 45, "<45"), (45, 65, "45-64"), (65, 80, "65-79"), (80, 200, ">=80"))


def _positions(patient: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group index per row, row position within patient, first row of each group)."""
    starts = np.ones(len(patient), dtype=bool)
    if len(patient) > 1:
        starts[1:] = patient[1:] != patient[:-1]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    return group, np.arange(len(patient)) - first[group], first


def patient_operating_point(label: np.ndarray, alarm: np.ndarray, patient: np.ndarray) -> dict[str, Any]:
    """A septic patient counts as detected when an alarm fires at or before clinical onset
    (first labelled hour + 6, the scorer's t_sepsis); a non-septic patient with any alarm is a
    false positive. Warning time: onset minus the first alarm, for detected patients."""
    group, pos, first = _positions(patient)
    g = len(first)
    septic = np.zeros(g, dtype=bool)
    np.logical_or.at(septic, group, label.astype(bool))
    big = np.iinfo(np.int64).max
    first_label = np.full(g, big, dtype=np.int64)
    np.minimum.at(first_label, group[label == 1], pos[label == 1])
    onset = first_label - DT_OPTIMAL
    first_alarm_before_onset = np.full(g, big, dtype=np.int64)
    eligible = alarm.astype(bool) & (pos <= onset[group])
    np.minimum.at(first_alarm_before_onset, group[eligible], pos[eligible])
    any_alarm = np.zeros(g, dtype=bool)
    np.logical_or.at(any_alarm, group, alarm.astype(bool))
    detected = septic & (first_alarm_before_onset != big)
    tp, fn = int(detected.sum()), int((septic & ~detected).sum())
    fp, tn = int((~septic & any_alarm).sum()), int((~septic & ~any_alarm).sum())
    warning = (onset - first_alarm_before_onset)[detected].astype(np.float64)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "patients": g,
        "septic_patients": int(septic.sum()),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "median_hours_warning_before_onset": float(np.median(warning)) if len(warning) else None,
        "warning_hours_iqr": [float(np.percentile(warning, 25)), float(np.percentile(warning, 75))]
        if len(warning)
        else None,
    }


def alert_burden(alarm: np.ndarray, patient: np.ndarray) -> dict[str, float]:
    """Alerts (an alarm that starts after a quiet hour or at the first hour) per 100 patient-days."""
    alarm = alarm.astype(bool)
    group, pos, _ = _positions(patient)
    previous = np.r_[False, alarm[:-1]] & (pos > 0)
    alerts = int((alarm & ~previous).sum())
    days = len(alarm) / 24.0
    return {
        "alerts": alerts,
        "patient_days": round(days, 1),
        "alerts_per_100_patient_days": round(100 * alerts / days, 2) if days else float("nan"),
        "alarm_hours_fraction": round(float(alarm.mean()), 4) if len(alarm) else float("nan"),
    }


def utility_by_patient_bootstrap(
    label: np.ndarray, alarm: np.ndarray, patient: np.ndarray, *, replicates: int = 200, seed: int = 0
) -> dict[str, float]:
    """Normalised utility with a 95 % interval from resampling patients: the utility's numerator
    and denominator are sums over patients, so each replicate re-adds per-patient totals."""
    table = utility_table(label, patient)
    group, _, first = _positions(patient)
    g = len(first)
    observed = np.bincount(
        group, weights=np.where(alarm.astype(bool), table.if_positive, table.if_negative), minlength=g
    )
    best = np.bincount(
        group, weights=np.where(table.best.astype(bool), table.if_positive, table.if_negative), minlength=g
    )
    inaction = np.bincount(group, weights=table.if_negative, minlength=g)

    def normalised(weights: np.ndarray) -> float:
        denominator = weights @ best - weights @ inaction
        return float((weights @ observed - weights @ inaction) / denominator) if denominator else float("nan")

    rng = np.random.default_rng(seed)
    values = [
        normalised(np.bincount(rng.integers(0, g, g), minlength=g).astype(np.float64))
        for _ in range(replicates)
    ]
    values = [v for v in values if np.isfinite(v)]
    low, high = np.percentile(values, [2.5, 97.5]) if values else (np.nan, np.nan)
    return {
        "estimate": round(normalised(np.ones(g)), 4),
        "ci95_low": round(float(low), 4),
        "ci95_high": round(float(high), 4),
        "replicates": len(values),
    }


def _auroc_interval(
    label: np.ndarray, score: np.ndarray, patient: np.ndarray, replicates: int, seed: int
) -> dict[str, float]:
    def stat(rows: np.ndarray) -> float:
        y = label[rows]
        return challenge_auc(y, score[rows])[0] if 0 < y.sum() < len(y) else float("nan")

    return bootstrap_by_group(stat, patient, replicates=replicates, seed=seed).as_dict()


def sepsis_subgroups(frame_columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Masks by sex, age band and ICU type from the input columns `Gender`, `Age`, `Unit1`, `Unit2`."""
    gender, age = frame_columns["Gender"], frame_columns["Age"]
    unit1, unit2 = frame_columns["Unit1"], frame_columns["Unit2"]
    return {
        "sex": {"female": gender == 0, "male": gender == 1},
        "age": {name: (age >= lo) & (age < hi) for lo, hi, name in AGE_BANDS},
        "icu_type": {"MICU": unit1 == 1, "SICU": unit2 == 1, "unrecorded": ~((unit1 == 1) | (unit2 == 1))},
    }


def _score_metrics(
    label: np.ndarray, score: np.ndarray, patient: np.ndarray, alert_at: float
) -> dict[str, Any]:
    # The scorer's curve assumes probabilities in (0, 1] (it never calls p = 0 positive): a
    # monotone rescale into (0, 1) keeps the ranking and lets a score of 0 count.
    top = float(score.max()) if len(score) else 0.0
    auroc, auprc = challenge_auc(label, (score + 1.0) / (top + 2.0))
    table = utility_table(label, patient)
    cuts = np.unique(score)
    best = max(((float(c), table.normalized(score >= c)) for c in cuts), key=lambda t: t[1])
    return {
        "auroc": round(auroc, 4),
        "auprc": round(auprc, 4),
        "alert_at": alert_at,
        "utility_at_alert_cut": round(table.normalized(score >= alert_at), 4),
        "best_cut_on_these_rows": best[0],
        "utility_at_best_cut": round(best[1], 4),
    }


def sepsis_evaluation(
    probability: np.ndarray,
    label: np.ndarray,
    patient: np.ndarray,
    threshold: float,
    *,
    subgroup_columns: Mapping[str, np.ndarray] | None = None,
    baselines: Mapping[str, tuple[np.ndarray, float]] | None = None,
    replicates: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the model card reports, as one JSON-ready dict. `baselines`: name -> (score
    per row, published alert cut-off)."""
    label = np.asarray(label).astype(np.int8)
    p = np.asarray(probability, dtype=np.float64)
    alarm = p >= threshold
    auroc, auprc = challenge_auc(label, p)
    out: dict[str, Any] = {
        "rows": int(len(label)),
        "row_prevalence": round(float(label.mean()), 4),
        "threshold": threshold,
        "hour_level": {"auroc": round(auroc, 4), "auprc": round(auprc, 4)},
        "utility_ci": utility_by_patient_bootstrap(label, alarm, patient, replicates=replicates, seed=seed),
        "auroc_ci": _auroc_interval(label, p, patient, replicates, seed),
        "patient_level": patient_operating_point(label, alarm, patient),
        "alert_burden": alert_burden(alarm, patient),
        "calibration": calibration_report(label, p).as_dict(),
    }
    if subgroup_columns is not None:
        out["subgroups"] = subgroup_table(label, p, sepsis_subgroups(subgroup_columns), threshold)
    if baselines:
        out["baselines"] = {
            name: _score_metrics(label, s, patient, cut) for name, (s, cut) in baselines.items()
        }
        best = max(v["auroc"] for v in out["baselines"].values())
        out["auroc_margin_over_best_baseline"] = round(auroc - best, 4)
    return out


def _fmt(ci: Mapping[str, Any]) -> str:
    return f"{ci['estimate']:.3f} ({ci['ci95_low']:.3f}-{ci['ci95_high']:.3f})"


def _utility_curve(label: np.ndarray, p: np.ndarray, patient: np.ndarray) -> tuple[list[float], list[float]]:
    table = utility_table(label, patient)
    grid = np.unique(np.quantile(p, np.linspace(0.5, 0.999, 60)))
    return [float(t) for t in grid], [table.normalized(p >= t) for t in grid]


def write_sepsis_report(
    directory: Path,
    metrics: Mapping[str, Any],
    *,
    probability: np.ndarray,
    label: np.ndarray,
    patient: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    model_label: str,
    data_label: str,
) -> dict[str, Path]:
    """metrics.json, model_card.md and the PNG plots."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"metrics": directory / "metrics.json"}
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    curves = {"model": (label, probability), **{k: (label, v) for k, v in baselines.items()}}
    files["roc"] = plot_roc(directory / "roc.png", curves, "Sepsis, hour level")
    files["pr"] = plot_pr(directory / "pr.png", curves, "Sepsis, hour level")
    files["calibration"] = plot_calibration(
        directory / "calibration.png", label, probability, "Calibration (hour level)"
    )
    t, u = _utility_curve(label, probability, patient)
    files["utility"] = plot_threshold_curve(
        directory / "utility_vs_threshold.png",
        t,
        u,
        "PhysioNet 2019 utility",
        "normalised utility",
        marker=metrics["threshold"],
    )
    m = metrics
    pl, cal, burden = m["patient_level"], m["calibration"], m["alert_burden"]
    rows = [
        ["Normalised utility (PhysioNet 2019)", _fmt(m["utility_ci"])],
        ["Hour-level AUROC", _fmt(m["auroc_ci"])],
        ["Hour-level AUPRC", f"{m['hour_level']['auprc']:.3f} (row prevalence {m['row_prevalence']:.3f})"],
        [
            "Patient sensitivity / specificity / PPV at threshold",
            f"{pl['sensitivity']} / {pl['specificity']} / {pl['ppv']}",
        ],
        [
            "Median hours of warning before onset (IQR)",
            f"{pl['median_hours_warning_before_onset']} ({pl['warning_hours_iqr']})",
        ],
        ["Alerts per 100 patient-days", burden["alerts_per_100_patient_days"]],
    ]
    base_rows = [
        [
            k,
            v["auroc"],
            v["auprc"],
            f">= {v['alert_at']:g}",
            v["utility_at_alert_cut"],
            v["utility_at_best_cut"],
        ]
        for k, v in m.get("baselines", {}).items()
    ]
    sub_rows = []
    for grouping, block in m.get("subgroups", {}).items():
        for name, r in block["groups"].items():
            sub_rows.append(
                [
                    grouping,
                    name,
                    r["n"],
                    r["positives"],
                    r["auroc"],
                    r["sensitivity"],
                    r["false_positive_rate"],
                ]
            )
        sub_rows.append([grouping, "largest AUROC gap", "", "", block["largest_auroc_gap"], "", ""])
    sections = [
        (
            "Intended use",
            "Decision support for adult ICU patients: an hourly probability that Sepsis-3 onset is within "
            "the "
            "next 6 hours (or ongoing), shown to clinicians in a CDS Hooks card with its drivers. It "
            "prompts a bedside "
            "review; it does not diagnose sepsis and must not delay or replace clinical judgement, cultures "
            "or antibiotics.",
        ),
        (
            "Data",
            f"Evaluated on {data_label}: {m['rows']} hourly rows, {pl['patients']} patients, "
            f"{pl['septic_patients']} septic. "
            "Every hour is scored from data up to that hour only.",
        ),
        ("Metrics (95 % intervals by patient bootstrap)", markdown_table(["metric", "value"], rows)),
        (
            "Calibration",
            markdown_table(
                ["Brier", "ECE", "intercept", "slope"],
                [[cal["brier"], cal["ece"], cal["intercept"], cal["slope"]]],
            )
            + "\n\nSee calibration.png.",
        ),
        (
            "Clinical baselines on the same rows",
            markdown_table(
                [
                    "score",
                    "AUROC",
                    "AUPRC",
                    "published cut",
                    "utility at cut",
                    "utility at best cut (optimistic)",
                ],
                base_rows,
            )
            + f"\n\nAUROC margin over the best baseline: {m.get('auroc_margin_over_best_baseline')}.",
        ),
        (
            "Subgroups",
            markdown_table(
                ["grouping", "group", "rows", "positive rows", "AUROC", "sensitivity", "FPR"], sub_rows
            ),
        ),
        (
            "Limitations",
            "Trained on one hospital system (PhysioNet 2019 set A). Labels are the challenge's Sepsis-3 "
            "approximation. The bedside scores are partial (no GCS/AVPU, vasopressors, urine output). The "
            "utility rewards "
            "alarms that the ICU clock alone can produce; this model does not read ICULOS or HospAdmTime. "
            "EtCO2 is ignored "
            "(never recorded in set A).",
        ),
        (
            "What would make it unsafe",
            "Use outside adult ICUs; a site whose lab-ordering habits differ (the model reads how "
            "recently and how often labs were measured); a change in units or codes the mapping does not "
            "know; prevalence "
            "far from set A's without re-checking the threshold and calibration; treating a low score as "
            "ruling sepsis out; "
            "alert fatigue if the threshold is lowered without re-measuring alerts per 100 patient-days.",
        ),
    ]
    files["card"] = write_model_card(directory / "model_card.md", f"Model card: {model_label}", sections)
    return files
