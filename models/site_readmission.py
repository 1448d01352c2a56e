"""Site go-live for the 30-day readmission model: its `SiteTask` value for the shared steps in
models/site.py (split, comparison, registration, reports).

A site's data is its discharges in the Diabetes 130-US layout (csv, csv.gz or parquet, with the
`readmitted` outcome), read through the same cohort rules as training: one discharge per patient
(the first), deaths and hospice discharges removed; or its FHIR Bulk export directory, every
discharge mapped as the hook maps it, the outcome from the export's own later inpatient stays
(models/readmission_export.py). The comparison measures AUROC and AUPRC with
paired patient-bootstrap intervals, calibration and the share of discharges flagged at the
threshold (the follow-up workload). Recalibration refits the Platt map (the model's own method)
and a threshold that flags the model's own share of the site's fit discharges, or the share the
site chooses; adaptation ranks its candidates by out-of-fold AUROC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import FeatureSpec

from .calibration import calibration_report, fit_platt
from .datasets import data_fingerprint, is_bulk_export
from .errors import DatasetError
from .gate import GatePolicy, held_out_metrics
from .manifest import ModelManifest
from .metrics import auprc, auroc, operating_point
from .readmission import (
    FLAGGED_FRACTION,
    ReadmissionData,
    evaluate_readmission,
    load_readmission_data,
    read_diabetes130,
    readmission_bands,
    readmission_data,
    readmission_subgroups,
    require_both_outcomes,
)
from .score import RiskModel
from .site import (
    GOLIVE_AUROC_DROP,
    GOLIVE_INTERCEPT,
    GOLIVE_SLOPE,
    HoldoutMeasures,
    Recalibration,
    SiteData,
    SiteTask,
    Statistic,
    delta_text,
    frame_fingerprint,
    golive_check,
    interval_text,
    site_holdout,
    site_table_seed,
    write_golive,
)

__all__ = [
    "FLAGGED_SHARE_TOLERANCE",
    "READMISSION_CONTINUE_ROUNDS",
    "READMISSION_MEASURES",
    "READMISSION_SITE",
    "load_readmission_site",
    "readmission_site_pair",
    "refit_readmission",
    "validate_readmission_site",
]

# Extra rounds tried by `continue` (the base learns at eta 0.03 with depth-3 trees, so a site needs
# more rounds than the sepsis model's to move it).
READMISSION_CONTINUE_ROUNDS = (50, 100, 200, 400)
# The flagged share may differ from the model's own by this fraction of it before the follow-up
# workload the site planned for is off enough to refit the threshold.
FLAGGED_SHARE_TOLERANCE = 0.5


def load_readmission_site(
    source: Path | str | pd.DataFrame, spec: FeatureSpec, *, label: str = ""
) -> SiteData:
    """A site's discharges with outcomes: a Diabetes 130-US file or DataFrame, or a FHIR Bulk export
    directory (`load_readmission_data`: the hook's mapping, outcomes from its later inpatient stays)."""
    if not isinstance(source, pd.DataFrame) and is_bulk_export(source):
        name = label or str(source)
        data = load_readmission_data(source, spec)
        assert data.label is not None
        require_both_outcomes(data.label, f"the export at {name}")
        return SiteData(data, data_fingerprint(source), name)
    if isinstance(source, pd.DataFrame):
        frame, fingerprint, name = source, frame_fingerprint(source), label or "site table"
    else:
        frame, fingerprint, name = read_diabetes130(source), data_fingerprint(source), label or str(source)
    if "readmitted" not in frame:
        raise DatasetError(f"{name} has no readmitted column: a site's go-live data needs outcomes")
    data = readmission_data(frame, spec)
    if len(data.patient) == 0:
        raise DatasetError(f"{name} has no discharge the readmission cohort keeps")
    return SiteData(data, fingerprint, name)


# --- the comparison on held-out site patients ------------------------------------------------------


def _statistics(label: np.ndarray, patient: np.ndarray) -> Any:
    def for_model(p: np.ndarray, threshold: float) -> dict[str, Statistic]:
        def auroc_of(rows: np.ndarray, w: np.ndarray) -> float:
            return auroc(label[rows], p[rows])

        def auprc_of(rows: np.ndarray, w: np.ndarray) -> float:
            return auprc(label[rows], p[rows])

        return {"auroc": auroc_of, "auprc": auprc_of}

    return for_model


def _point(label: np.ndarray, patient: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    op = operating_point(label, p, threshold)
    return {
        "calibration": calibration_report(label, p).as_dict(),
        "flagged_per_100_discharges": round(100 * op.flagged_fraction, 2),
        "sensitivity": round(op.sensitivity, 4),
        "ppv": round(op.ppv, 4),
    }


READMISSION_MEASURES = HoldoutMeasures(
    statistics=_statistics,
    point=_point,
    columns=(
        ("AUROC (95 % CI)", lambda m: interval_text(m["auroc"])),
        ("AUROC minus base (paired CI)", lambda m: delta_text(m, "auroc")),
        ("AUPRC (95 % CI)", lambda m: interval_text(m["auprc"])),
        ("AUPRC minus base (paired CI)", lambda m: delta_text(m, "auprc")),
        ("cal. slope", lambda m: m["calibration"]["slope"]),
        ("cal. intercept", lambda m: m["calibration"]["intercept"]),
        ("Brier", lambda m: m["calibration"]["brier"]),
        ("flagged / 100 discharges", lambda m: m["flagged_per_100_discharges"]),
        ("sensitivity", lambda m: m["sensitivity"]),
        ("PPV", lambda m: m["ppv"]),
    ),
    rows="discharges",
)


# --- recalibration ---------------------------------------------------------------------------------


def refit_readmission(
    raw: np.ndarray, label: np.ndarray, patient: np.ndarray, target_per_100: float | None
) -> Recalibration:
    """Platt map on the booster's raw output and a threshold flagging the model's own share of the
    fit discharges (or `target_per_100` of every 100), as training sets them on its validation split."""
    calibration = fit_platt(raw, label)
    p = np.interp(raw, np.asarray(calibration.x), np.asarray(calibration.y))
    share = FLAGGED_FRACTION if target_per_100 is None else target_per_100 / 100.0
    if not 0.0 < share < 1.0:
        raise DatasetError(
            f"the flagged share must be between 0 and 100 per 100 discharges, not {share * 100:g}"
        )
    threshold = float(np.float32(np.quantile(p, 1 - share)))
    rule = f"flags {share * 100:g} of every 100 of the site's fit discharges" + (
        " (the model's own share)" if target_per_100 is None else ""
    )
    op = operating_point(label, p, threshold)
    bands = readmission_bands(float(np.mean(label)), threshold, p, label)
    figures = {
        "fit_flagged_fraction": round(op.flagged_fraction, 4),
        "fit_sensitivity": round(op.sensitivity, 4),
        "fit_ppv": round(op.ppv, 4),
    }
    return Recalibration(calibration, threshold, rule, figures, bands)


def _select(raw: np.ndarray, label: np.ndarray, patient: np.ndarray) -> float:
    return auroc(label, raw)


# --- local validation ------------------------------------------------------------------------------


def _golive_checks(metrics: dict[str, Any], manifest: ModelManifest) -> list[dict[str, Any]]:
    own = manifest.metrics.get("test", {})
    cal, op, lace = metrics["calibration"], metrics["operating_point"], metrics["lace_baseline"]
    site_auroc = metrics["auroc"]["estimate"]
    checks: list[dict[str, Any]] = []
    if isinstance(own.get("auroc"), dict):
        reference = own["auroc"]["estimate"]
        checks.append(
            golive_check(
                f"AUROC within {GOLIVE_AUROC_DROP} of the model's own held-out test",
                site_auroc,
                reference,
                site_auroc >= reference - GOLIVE_AUROC_DROP,
                "adapt the model (cds site adapt readmission)",
            )
        )
    checks.append(
        golive_check(
            "AUROC above the LACE-style baseline (gain's 95 % interval above 0)",
            lace["auroc_gain"]["ci95_low"],
            "> 0",
            lace["auroc_gain"]["ci95_low"] > 0,
            "adapt the model (cds site adapt readmission); until then the LACE-style score ranks as well",
        )
    )
    checks.append(
        golive_check(
            f"calibration slope in [{GOLIVE_SLOPE[0]}, {GOLIVE_SLOPE[1]}]",
            cal["slope"],
            "1",
            GOLIVE_SLOPE[0] <= cal["slope"] <= GOLIVE_SLOPE[1],
            "recalibrate (cds site recalibrate readmission)",
        )
    )
    checks.append(
        golive_check(
            f"calibration intercept within +-{GOLIVE_INTERCEPT}",
            cal["intercept"],
            "0",
            abs(cal["intercept"]) <= GOLIVE_INTERCEPT,
            "recalibrate (cds site recalibrate readmission)",
        )
    )
    own_share = (own.get("operating_point") or {}).get("flagged_fraction", FLAGGED_FRACTION)
    low, high = own_share * (1 - FLAGGED_SHARE_TOLERANCE), own_share * (1 + FLAGGED_SHARE_TOLERANCE)
    checks.append(
        golive_check(
            f"share of discharges flagged within {FLAGGED_SHARE_TOLERANCE:.0%} of the model's own",
            op["flagged_fraction"],
            own_share,
            low <= op["flagged_fraction"] <= high,
            "refit the threshold for the site's follow-up capacity (cds site recalibrate readmission "
            "[--target-alerts N])",
        )
    )
    policy, gap = GatePolicy(), metrics.get("largest_subgroup_auroc_gap")
    own_gap = (own.get("largest_subgroup_auroc_gap") or {}).get("gap") or 0.0
    if gap is not None:
        bound = max(policy.subgroup_gap, own_gap + policy.subgroup_gap_drift)
        checks.append(
            golive_check(
                f"largest subgroup AUROC gap within the promotion gate's bound ({gap['grouping']})",
                gap["gap"],
                round(bound, 4),
                gap["gap"] <= bound,
                "review the subgroup table in model_card.md before go-live; "
                "adapt (cds site adapt readmission)",
            )
        )
    return checks


def validate_readmission_site(
    model: RiskModel, site: SiteData, out: Path, replicates: int = 200
) -> dict[str, Any]:
    """The readmission evaluation of `model` on all of the site's discharges (AUROC/AUPRC with
    patient-bootstrap intervals, calibration, operating point, subgroups, the LACE-style baseline)
    plus the go-live checks against the model's own held-out test figures; writes metrics.json, the
    model card, the plots and golive.md / golive.html to `out`."""
    data = site.data
    assert isinstance(data, ReadmissionData)
    metrics = evaluate_readmission(model, data, report_dir=out, replicates=replicates)
    checks = _golive_checks(metrics, model.manifest)
    op, cal, lace = metrics["operating_point"], metrics["calibration"], metrics["lace_baseline"]
    gap = metrics.get("largest_subgroup_auroc_gap")
    write_golive(
        out,
        model,
        site,
        metrics,
        checks,
        intro=f"{metrics['encounters']} discharges of {metrics['patients']} patients, "
        f"{metrics['readmitted_30d']} readmitted within 30 days (prevalence {metrics['prevalence']}); "
        f"site data sha256 `{site.fingerprint[:16]}`. {data.cohort}",
        headline=[
            ["AUROC", interval_text(metrics["auroc"])],
            ["AUPRC", interval_text(metrics["auprc"])],
            ["LACE-style baseline AUROC", interval_text(lace["auroc"])],
            ["AUROC gain over the baseline", interval_text(lace["auroc_gain"])],
            [
                "calibration slope / intercept / Brier",
                f"{cal['slope']} / {cal['intercept']} / {cal['brier']}",
            ],
            ["discharges flagged per 100 (at the threshold)", round(100 * op["flagged_fraction"], 2)],
            ["sensitivity / PPV at the threshold", f"{op['sensitivity']} / {op['ppv']}"],
            ["largest subgroup AUROC gap", f"{gap['gap']} ({gap['grouping']})" if gap else "-"],
        ],
        closing=[
            "The full evaluation (subgroups by race, sex and age band; the LACE-style baseline) is in "
            "model_card.md and metrics.json.",
            "![ROC](roc.png) ![precision-recall](pr.png) ![calibration](calibration.png)",
        ],
    )
    return metrics


def _load(source: Path | str | pd.DataFrame, spec: FeatureSpec, label: str) -> SiteData:
    return load_readmission_site(source, spec, label=label)


READMISSION_SITE = SiteTask(
    name="readmission",
    load=_load,
    validate=validate_readmission_site,
    measures=READMISSION_MEASURES,
    refit=refit_readmission,
    select=_select,
    select_metric="auroc",
    continue_rounds=READMISSION_CONTINUE_ROUNDS,
)


def readmission_site_pair(
    active: RiskModel | None, candidate: RiskModel, data_path: Path | str
) -> tuple[dict[str, float | None] | None, dict[str, float | None], int] | None:
    """The gate's comparison for a readmission site version: both versions on the held-out half of
    the site table it was fitted on (`site_holdout`: other data refused); None when the candidate
    is not a site version. Utility is the sepsis task's, so None here."""
    if site_table_seed(candidate.manifest) is None:
        return None
    site = load_readmission_site(data_path, candidate.spec)
    held = site_holdout(candidate.manifest, data_path, site.data.patient)
    assert held is not None
    data = site.data
    assert isinstance(data, ReadmissionData) and data.label is not None
    keep = np.isin(data.patient, held)
    x, y = data.features[keep], data.label[keep].astype(np.int8)
    groups = readmission_subgroups(data.frame[keep].reset_index(drop=True))

    patient = data.patient[keep]

    def metrics(model: RiskModel) -> dict[str, float | None]:
        return held_out_metrics(model.predict(x), y, patient, model.threshold, groups, utility=False)

    return (metrics(active) if active is not None else None), metrics(candidate), int(len(np.unique(held)))
