"""Site go-live: local validation, local recalibration and adaptation of a model on a hospital's
own labelled data, each judged on site patients the fit never saw.

The machinery is shared by the models: the site's patients are split once by the site's seed into
a fit part and a held-out part (`site_split`); recalibration and adaptation learn only from the fit
part, and base / recalibrated / adapted are compared on the same held-out patients with paired
patient-bootstrap intervals (`compare_on_holdout`); every result can be registered as a
`candidate` version (never activated here) whose manifest carries its lineage
(`register_site_version`). What differs per model is a `SiteTask` value: how its site table is
read and validated, what the comparison measures, how the map and threshold are refitted and how
adaptation ranks its candidates. This module holds the sepsis one (`SEPSIS_SITE`: the PhysioNet
2019 layout, `patient`, `hour`, the 40 variables, `SepsisLabel`, as a file `read_physionet` reads
or the canonical hourly table a FHIR Bulk export maps to); models/site_readmission.py the
readmission one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from fhir_mappings import FeatureSpec

from .calibration import calibration_report, fit_small_sample_map
from .datasets import data_fingerprint, read_physionet
from .distributed import train_on
from .errors import DatasetError, ModelError
from .manifest import Calibration, ModelManifest
from .physionet2019 import challenge_auc, utility_table
from .registration import register_version
from .registry import ModelRegistry
from .report import markdown_table
from .score import RiskModel
from .sepsis import SepsisData, best_threshold, development_split, evaluate_sepsis, sepsis_data
from .sepsis_evaluation import alert_burden, patient_operating_point
from .train import patient_split

__all__ = [
    "CONTINUE_ROUNDS",
    "POOLED_SITE_WEIGHT",
    "SEPSIS_MEASURES",
    "SEPSIS_SITE",
    "SITE_FOLDS",
    "SITE_HOLDOUT_FRACTION",
    "AdaptationResult",
    "HoldoutMeasures",
    "Recalibration",
    "SiteData",
    "SiteResult",
    "SiteRows",
    "SiteSplit",
    "SiteTask",
    "Statistic",
    "adapt_site",
    "base_development_data",
    "compare_on_holdout",
    "comparison_table",
    "delta_text",
    "frame_fingerprint",
    "golive_check",
    "interval_text",
    "load_site",
    "recalibrate_site",
    "register_site_version",
    "site_holdout",
    "site_split",
    "site_table_seed",
    "threshold_for_alert_rate",
    "validate_site",
    "write_golive",
    "write_site_report",
]

SITE_HOLDOUT_FRACTION = 0.5
SITE_FOLDS = 3
CONTINUE_ROUNDS = (25, 50, 100, 150)  # extra rounds tried when continuing the base booster
POOLED_SITE_WEIGHT = 3.0


# --- the site's data -----------------------------------------------------------------------------


class SiteRows(Protocol):
    """What the shared go-live steps read of a task's site data (SepsisData, ReadmissionData)."""

    @property
    def features(self) -> np.ndarray: ...
    @property
    def label(self) -> np.ndarray | None: ...
    @property
    def patient(self) -> np.ndarray: ...


@dataclass(frozen=True)
class SiteData:
    data: SiteRows
    fingerprint: str  # sha256 of the table (or of the file it was read from)
    label: str  # how reports name it (a path, never patient data)


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of a table's columns and values, independent of how it was stored."""
    h = hashlib.sha256(json.dumps(list(map(str, frame.columns))).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _ids_fingerprint(ids: np.ndarray) -> str:
    """sha256 of a set of patient ids: set A's integers, or the pseudonyms `cds site import` writes."""
    ordered = np.sort(np.asarray(ids))
    if ordered.dtype.kind in "iu":
        return hashlib.sha256(ordered.astype(np.int64).tobytes()).hexdigest()
    return hashlib.sha256("\n".join(map(str, ordered)).encode()).hexdigest()


def load_site(source: Path | str | pd.DataFrame, spec: Any, *, label: str = "") -> SiteData:
    """A site's labelled table from a file/directory in PhysioNet layout or from a DataFrame."""
    if isinstance(source, pd.DataFrame):
        frame = source.sort_values(["patient", "hour"], kind="stable").reset_index(drop=True)
        fingerprint, name = frame_fingerprint(frame), label or "site table"
    else:
        frame = read_physionet(source)
        fingerprint, name = data_fingerprint(source), label or str(source)
    if "SepsisLabel" not in frame:
        raise DatasetError(f"{name} has no SepsisLabel column: a site's go-live data needs outcomes")
    return SiteData(sepsis_data(frame, spec, baselines=True), fingerprint, name)


@dataclass(frozen=True)
class SiteSplit:
    """The site's patients: `fit` (recalibration/adaptation learn here) and `holdout` (judged here)."""

    seed: int
    fit: np.ndarray
    holdout: np.ndarray

    def lineage(self) -> dict[str, Any]:
        return {
            "site_split_seed": self.seed,
            "fit_patients": len(self.fit),
            "holdout_patients": len(self.holdout),
            "fit_patients_sha256": _ids_fingerprint(self.fit),
            "holdout_patients_sha256": _ids_fingerprint(self.holdout),
        }


def site_split(patient: np.ndarray, seed: int, holdout_fraction: float = SITE_HOLDOUT_FRACTION) -> SiteSplit:
    fit, holdout = patient_split(patient, (1 - holdout_fraction, holdout_fraction), seed)
    if len(fit) == 0 or len(holdout) == 0:
        raise DatasetError("the site's data has too few patients to hold some out")
    return SiteSplit(seed, fit, holdout)


def site_table_seed(manifest: ModelManifest) -> int | None:
    """The site split seed of a version fitted on a site table (`cds site recalibrate|adapt`); None
    for any other, a version retrained from served records included (its held-out patients are
    served records, not a table's: the gate judges it as a trained version)."""
    lineage = manifest.training_data.get("lineage") or {}
    if "site_split_seed" in lineage and "site_data_sha256" in lineage:
        return int(lineage["site_split_seed"])
    return None


def site_holdout(manifest: ModelManifest, data_path: Path | str, patient: np.ndarray) -> np.ndarray | None:
    """The held-out site patients of a site version (the half its recalibration or adaptation never
    saw), re-derived from its lineage, for judging it (`cds models promote`'s gate); None when the
    version is not a site version. Other data is refused: the version's fit patients are known only
    by their fingerprint, so on any other table the gate could not keep them out."""
    seed = site_table_seed(manifest)
    if seed is None:
        return None
    lineage = manifest.training_data["lineage"]
    if data_fingerprint(data_path) != lineage.get("site_data_sha256"):
        raise ModelError(
            f"v{manifest.version} was fitted on site data {manifest.training_data.get('path')!s} "
            f"(sha256 {str(lineage.get('site_data_sha256'))[:12]}...); {data_path} is not that table, so its "
            "fit patients could not be kept out: gate it on the site data it was fitted on"
        )
    split = site_split(patient, seed)
    if _ids_fingerprint(split.holdout) != lineage.get("holdout_patients_sha256"):
        raise ModelError(f"the held-out site patients of v{manifest.version} could not be re-derived")
    return split.holdout


def _subset(data: SepsisData, ids: np.ndarray) -> SepsisData:
    keep = np.isin(data.patient, ids)
    return SepsisData(
        data.frame[keep].reset_index(drop=True),
        data.features[keep],
        None if data.label is None else data.label[keep],
        data.patient[keep],
        data.hour[keep],
        None if data.baselines is None else {k: v[keep] for k, v in data.baselines.items()},
    )


def _labels(data: SiteRows) -> np.ndarray:
    if data.label is None:
        raise DatasetError("the site's data has no outcome labels")
    return data.label


def _raw(model: RiskModel, x: np.ndarray) -> np.ndarray:
    raw: np.ndarray = 1.0 / (1.0 + np.exp(-model.margin(x)))
    return raw


def _interp(calibration: Calibration, raw: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.interp(raw, np.asarray(calibration.x), np.asarray(calibration.y))
    return out


# --- 1. local validation ---------------------------------------------------------------------------


GOLIVE_AUROC_DROP = 0.03  # beyond it, adaptation is recommended
GOLIVE_UTILITY_DROP = 0.05
GOLIVE_SLOPE = (0.8, 1.25)  # calibration slope outside it: recalibration is recommended
GOLIVE_INTERCEPT = 0.25


def golive_check(name: str, site: Any, reference: Any, ok: bool, advice: str) -> dict[str, Any]:
    """One row of the go-live checks: the site's figure, the reference it is held to, and the next
    command when it fails."""
    return {"check": name, "site": site, "reference": reference, "ok": bool(ok), "if_not": advice}


def _golive_checks(metrics: Mapping[str, Any], manifest: ModelManifest) -> list[dict[str, Any]]:
    own = manifest.metrics.get("test", {})
    cal = metrics["calibration"]
    checks: list[dict[str, Any]] = []

    def add(name: str, value: Any, reference: Any, ok: bool, advice: str) -> None:
        checks.append(golive_check(name, value, reference, ok, advice))

    if "auroc" in own:
        add(
            "hour AUROC within 0.03 of the model's own held-out test",
            metrics["auroc_ci"]["estimate"],
            own["auroc"],
            metrics["auroc_ci"]["estimate"] >= own["auroc"] - GOLIVE_AUROC_DROP,
            "adapt the model (cds site adapt)",
        )
    if "utility" in own:
        add(
            "normalised utility within 0.05 of the model's own held-out test",
            metrics["utility_ci"]["estimate"],
            own["utility"],
            metrics["utility_ci"]["estimate"] >= own["utility"] - GOLIVE_UTILITY_DROP,
            "adapt or recalibrate (cds site adapt / recalibrate)",
        )
    add(
        "calibration slope in [0.8, 1.25]",
        cal["slope"],
        "1",
        GOLIVE_SLOPE[0] <= cal["slope"] <= GOLIVE_SLOPE[1],
        "recalibrate (cds site recalibrate)",
    )
    add(
        "calibration intercept within +-0.25",
        cal["intercept"],
        "0",
        abs(cal["intercept"]) <= GOLIVE_INTERCEPT,
        "recalibrate (cds site recalibrate)",
    )
    return checks


def _write_html(markdown_path: Path) -> Path:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_path.read_text())
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Go-live report</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .5em}img{max-width:30em}</style></head><body>"
        f"{body}</body></html>\n"
    )
    path = markdown_path.with_suffix(".html")
    path.write_text(html)
    return path


def validate_site(model: RiskModel, site: SiteData, out: Path, *, replicates: int = 200) -> dict[str, Any]:
    """The full clinical evaluation of `model` on all of the site's patients (it never saw them),
    plus the go-live checks against the model's own held-out figures; writes metrics.json, the model
    card, the plots and golive.md / golive.html to `out`."""
    assert isinstance(site.data, SepsisData)
    metrics = evaluate_sepsis(model, site.data, report=out, replicates=replicates, data_label=site.label)
    checks = _golive_checks(metrics, model.manifest)
    pl, burden = metrics["patient_level"], metrics["alert_burden"]
    write_golive(
        out,
        model,
        site,
        metrics,
        checks,
        intro=f"{metrics['rows']} hourly rows, {pl['patients']} patients, {pl['septic_patients']} septic; "
        f"site data sha256 `{site.fingerprint[:16]}`. "
        "Every hour is scored from data up to that hour only.",
        headline=[
            ["normalised utility", interval_text(metrics["utility_ci"])],
            ["hour AUROC", interval_text(metrics["auroc_ci"])],
            ["hour AUPRC", metrics["hour_level"]["auprc"]],
            ["alerts per 100 patient-days", burden["alerts_per_100_patient_days"]],
            ["patient sensitivity / PPV", f"{pl['sensitivity']} / {pl['ppv']}"],
        ],
        closing=[
            "The full evaluation (calibration, subgroups, clinical baselines) is in model_card.md "
            "and metrics.json.",
            "![ROC](roc.png) ![calibration](calibration.png) ![utility](utility_vs_threshold.png)",
        ],
    )
    return metrics


def write_golive(
    out: Path,
    model: RiskModel,
    site: SiteData,
    metrics: dict[str, Any],
    checks: list[dict[str, Any]],
    *,
    intro: str,
    headline: Sequence[Sequence[Any]],
    closing: Sequence[str],
) -> None:
    """Add the go-live block to `metrics` and write metrics.json, golive.md and golive.html: the
    checks (with the next command for each failure), then the task's headline figures."""
    metrics["golive"] = {
        "model": f"{model.name}@{model.version}",
        "site_data_sha256": site.fingerprint,
        "checks": checks,
        "ready": all(c["ok"] for c in checks),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = [[c["check"], c["site"], c["reference"], "yes" if c["ok"] else "NO", c["if_not"]] for c in checks]
    text = "\n\n".join(
        [
            f"# Go-live report: {model.manifest.title} v{model.version} on {site.label}",
            intro,
            "## Go-live checks",
            markdown_table(["check", "site", "model's own test", "passes", "if not"], rows),
            f"Ready without local changes: **{'yes' if metrics['golive']['ready'] else 'no'}**.",
            "## Headline figures (95 % patient-bootstrap intervals)",
            markdown_table(["metric", "value"], [list(r) for r in headline]),
            *closing,
        ]
    )
    (out / "golive.md").write_text(text + "\n")
    _write_html(out / "golive.md")


def interval_text(ci: Mapping[str, Any]) -> str:
    """An estimate with its 95 % interval, as the reports print it."""
    return f"{ci['estimate']:.3f} ({ci['ci95_low']:.3f}-{ci['ci95_high']:.3f})"


# --- side-by-side comparison on held-out site patients ---------------------------------------------


Statistic = Callable[[np.ndarray, np.ndarray], float]
"""One metric of one version on a patient resample: (the resample's rows, each held-out patient's
weight in it) -> the value; the estimate is the statistic on all rows with every weight 1."""


@dataclass(frozen=True)
class HoldoutMeasures:
    """What a task's side-by-side comparison measures on held-out patients. `statistics(label,
    patient)` returns, for one version's probabilities and threshold, its bootstrapped metrics (the
    same patient resamples serve every version, so differences to the reference get paired
    intervals); `point(label, patient, probability, threshold)` the figures shown without intervals;
    `columns` the Markdown table's (header, cell from a version's entry); `rows` what one row is."""

    statistics: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray, float], dict[str, Statistic]]]
    point: Callable[[np.ndarray, np.ndarray, np.ndarray, float], dict[str, Any]]
    columns: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...]
    rows: str = "hours"


def _patient_index(patient: np.ndarray) -> tuple[np.ndarray, int]:
    starts = np.r_[True, patient[1:] != patient[:-1]] if len(patient) else np.zeros(0, dtype=bool)
    return np.cumsum(starts) - 1, int(starts.sum())


def _sepsis_statistics(
    label: np.ndarray, patient: np.ndarray
) -> Callable[[np.ndarray, float], dict[str, Statistic]]:
    """Hour AUROC and normalised utility (per-patient utility sums, so a resample is a weighted sum)."""
    table = utility_table(label, patient)
    group, g = _patient_index(patient)
    best = np.bincount(
        group, weights=np.where(table.best == 1, table.if_positive, table.if_negative), minlength=g
    )
    inaction = np.bincount(group, weights=table.if_negative, minlength=g)

    def for_model(p: np.ndarray, threshold: float) -> dict[str, Statistic]:
        observed = np.bincount(
            group, weights=np.where(p >= threshold, table.if_positive, table.if_negative), minlength=g
        )

        def auroc(rows: np.ndarray, w: np.ndarray) -> float:
            y = label[rows]
            return challenge_auc(y, p[rows])[0] if 0 < y.sum() < len(y) else float("nan")

        def utility(rows: np.ndarray, w: np.ndarray) -> float:
            d = w @ best - w @ inaction
            return float((w @ observed - w @ inaction) / d) if d else float("nan")

        return {"auroc": auroc, "utility": utility}

    return for_model


def _sepsis_point(label: np.ndarray, patient: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    alarm = p >= threshold
    return {
        "auprc": round(challenge_auc(label, p)[1], 4),
        "calibration": calibration_report(label, p).as_dict(),
        "alerts_per_100_patient_days": alert_burden(alarm, patient)["alerts_per_100_patient_days"],
        "patient_sensitivity": patient_operating_point(label, alarm, patient)["sensitivity"],
    }


def delta_text(entry: Mapping[str, Any], metric: str) -> str:
    """A version's paired difference to the reference in `metric` (empty for the reference itself)."""
    delta = next((v for k, v in entry.items() if k.startswith("minus_")), None)
    return interval_text(delta[metric]) if delta else ""


SEPSIS_MEASURES = HoldoutMeasures(
    statistics=_sepsis_statistics,
    point=_sepsis_point,
    columns=(
        ("hour AUROC (95 % CI)", lambda m: interval_text(m["auroc"])),
        ("utility (95 % CI)", lambda m: interval_text(m["utility"])),
        ("utility minus base (paired CI)", lambda m: delta_text(m, "utility")),
        ("AUPRC", lambda m: m["auprc"]),
        ("cal. slope", lambda m: m["calibration"]["slope"]),
        ("cal. intercept", lambda m: m["calibration"]["intercept"]),
        ("alerts / 100 patient-days", lambda m: m["alerts_per_100_patient_days"]),
    ),
)


def compare_on_holdout(
    probabilities: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    label: np.ndarray,
    patient: np.ndarray,
    *,
    replicates: int = 200,
    seed: int = 0,
    reference: str = "base",
    measures: HoldoutMeasures = SEPSIS_MEASURES,
) -> dict[str, Any]:
    """Each model's bootstrapped metrics (sepsis: hour AUROC and normalised utility) with 95 %
    intervals from the same patient resamples (so differences to `reference` get paired
    intervals), plus the task's point figures (AUPRC, calibration, alert burden). A patient's rows
    must be adjacent (in time order per patient for sepsis)."""
    label = np.asarray(label).astype(np.int8)
    patient = np.asarray(patient)
    _, g = _patient_index(patient)
    if g != len(np.unique(patient)):
        raise DatasetError("the held-out rows must be grouped by patient")
    first = np.flatnonzero(np.r_[True, patient[1:] != patient[:-1]])
    ends = np.r_[first[1:], len(patient)]
    statistics = measures.statistics(label, patient)
    per_model = {k: statistics(p, thresholds[k]) for k, p in probabilities.items()}

    rng = np.random.default_rng(seed)
    boot: dict[str, dict[str, list[float]]] = {k: {m: [] for m in s} for k, s in per_model.items()}
    for _ in range(replicates):
        pick = rng.integers(0, g, g)
        w = np.bincount(pick, minlength=g).astype(np.float64)
        rows = np.concatenate([np.arange(first[i], ends[i]) for i in pick])
        for k, stats in per_model.items():
            for m, statistic in stats.items():
                boot[k][m].append(statistic(rows, w))

    def interval(values: Sequence[float], estimate: float) -> dict[str, float]:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        low, high = np.percentile(v, [2.5, 97.5]) if len(v) else (np.nan, np.nan)
        return {
            "estimate": round(estimate, 4),
            "ci95_low": round(float(low), 4),
            "ci95_high": round(float(high), 4),
        }

    out: dict[str, Any] = {"patients": g, "rows": int(len(label)), "replicates": replicates, "models": {}}
    every, ones = np.arange(len(label)), np.ones(g)
    for k, p in probabilities.items():
        entry: dict[str, Any] = {"threshold": float(thresholds[k])}
        for m, statistic in per_model[k].items():
            entry[m] = interval(boot[k][m], statistic(every, ones))
        entry.update(measures.point(label, patient, p, thresholds[k]))
        if k != reference and reference in probabilities:
            entry["minus_" + reference] = {
                m: interval(
                    np.subtract(boot[k][m], boot[reference][m]).tolist(),
                    entry[m]["estimate"] - out["models"][reference][m]["estimate"],
                )
                for m in per_model[k]
            }
        out["models"][k] = entry
    return out


def comparison_table(comparison: Mapping[str, Any], measures: HoldoutMeasures = SEPSIS_MEASURES) -> str:
    """The side-by-side table (Markdown), one row per model, in the task's columns."""
    rows = [[name, *(cell(m) for _, cell in measures.columns)] for name, m in comparison["models"].items()]
    return markdown_table(["model", *(header for header, _ in measures.columns)], rows)


# --- 2. local recalibration ------------------------------------------------------------------------


def threshold_for_alert_rate(probability: np.ndarray, patient: np.ndarray, target: float) -> float:
    """The lowest threshold whose alerts per 100 patient-days do not exceed `target` (on a grid
    of the probability's quantiles; alerts fall, though not strictly, as the threshold rises)."""
    grid = np.unique(np.quantile(probability, np.linspace(0.0, 1.0, 1001)))
    chosen = float(grid[-1]) + 1e-12
    for t in grid[::-1]:
        if alert_burden(probability >= t, patient)["alerts_per_100_patient_days"] <= target:
            chosen = float(t)
        else:
            break
    return chosen


@dataclass(frozen=True)
class Recalibration:
    calibration: Calibration
    threshold: float
    rule: str  # which map, and how the threshold was chosen
    fit_figures: dict[str, float]  # the threshold's figures on the fit patients (kept in the manifest)
    bands: dict[str, float] | None = None  # the version's risk bands; None: low / threshold / 2 / threshold


def _fit_map_and_threshold(
    raw: np.ndarray, label: np.ndarray, patient: np.ndarray, target_alerts: float | None
) -> Recalibration:
    calibration, how = fit_small_sample_map(raw, label, patient)
    p = _interp(calibration, raw)
    threshold, fit_utility = best_threshold(p, label, patient)
    rule = "utility-maximising on the site's fit patients"
    if target_alerts is not None:
        threshold = threshold_for_alert_rate(p, patient, target_alerts)
        fit_utility = utility_table(label, patient).normalized(p >= threshold)
        rule = f"at most {target_alerts:g} alerts per 100 patient-days on the site's fit patients"
    return Recalibration(
        calibration,
        threshold,
        f"{how}; threshold {rule}",
        {"fit_utility_at_threshold": round(float(fit_utility), 4)},
    )


@dataclass(frozen=True)
class SiteTask:
    """What site go-live needs from one model: how its site table is read (`load(source, spec,
    label)`) and validated (`validate(model, site, out, replicates)`), what the held-out comparison
    measures, how the calibration map and threshold are refitted on fit patients (`refit(raw,
    label, patient, target)`), and how adaptation ranks its candidates out of fold (`select(raw,
    label, patient)`, higher is better, named `select_metric`)."""

    name: str
    load: Callable[[Path | str | pd.DataFrame, FeatureSpec, str], SiteData]
    validate: Callable[[RiskModel, SiteData, Path, int], dict[str, Any]]
    measures: HoldoutMeasures
    refit: Callable[[np.ndarray, np.ndarray, np.ndarray, float | None], Recalibration]
    select: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    select_metric: str
    continue_rounds: tuple[int, ...]
    retrains_from_served: bool = False  # `cds site retrain` (served RiskAssessments + outcomes)
    # (model, its training file, spec, patients, seed) -> its development rows for `pooled`; None: no `pooled`
    development_data: Callable[[RiskModel, Path, FeatureSpec, int | None, int], SepsisData] | None = None


@dataclass(frozen=True)
class SiteResult:
    """What a recalibration or adaptation produced and how it compared on held-out site patients."""

    kind: str  # recalibrated | adapted
    split: SiteSplit
    recalibration: Recalibration
    comparison: dict[str, Any]
    model_bytes: bytes
    params: dict[str, Any]
    num_boost_round: int
    device: str
    selection: dict[str, Any] = field(default_factory=dict)
    fit_rows: int = 0
    measures: HoldoutMeasures = SEPSIS_MEASURES  # how `comparison` was measured (its table's columns)


def recalibrate_site(
    model: RiskModel,
    site: SiteData,
    *,
    seed: int = 2019,
    target_alerts_per_100_days: float | None = None,
    replicates: int = 200,
    task: SiteTask | None = None,
) -> SiteResult:
    """Refit the calibration map (on the booster's raw output; sepsis: isotonic) and the alert
    threshold on the site's fit patients; compare with the base model on the held-out patients.
    `task`: the model's go-live value (default: sepsis)."""
    task = task or SEPSIS_SITE
    data = site.data
    label = _labels(data)
    split = site_split(data.patient, seed)
    fit, hold = np.isin(data.patient, split.fit), np.isin(data.patient, split.holdout)
    recal = task.refit(
        _raw(model, data.features[fit]), label[fit], data.patient[fit], target_alerts_per_100_days
    )
    raw_hold = _raw(model, data.features[hold])
    comparison = compare_on_holdout(
        {"base": model.calibrate(raw_hold), "recalibrated": _interp(recal.calibration, raw_hold)},
        {"base": model.threshold, "recalibrated": recal.threshold},
        label[hold],
        data.patient[hold],
        replicates=replicates,
        measures=task.measures,
    )
    return SiteResult(
        "recalibrated",
        split,
        recal,
        comparison,
        bytes(model.booster.save_raw(raw_format="ubj")),
        dict(model.manifest.params),
        model.manifest.num_boost_round,
        model.manifest.device,
        fit_rows=int(fit.sum()),
        measures=task.measures,
    )


# --- 3. adaptation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptationResult:
    site: SiteResult
    recalibrated: Recalibration  # the recalibrated base, fitted on the same fit patients


def _best_utility(raw: np.ndarray, label: np.ndarray, patient: np.ndarray) -> float:
    return round(best_threshold(raw, label, patient)[1], 4)


def adapt_site(
    model: RiskModel,
    site: SiteData,
    *,
    seed: int = 2019,
    base_data: SepsisData | None = None,
    continue_rounds: Sequence[int] | None = None,
    site_weight: float = POOLED_SITE_WEIGHT,
    folds: int = SITE_FOLDS,
    target_alerts_per_100_days: float | None = None,
    replicates: int = 200,
    device: str | None = None,
    progress: bool = False,
    scheduler: str | None = None,
    task: SiteTask | None = None,
) -> AdaptationResult:
    """Train a site candidate and choose how by patient-grouped CV inside the site's fit patients:
    `continue` (more boosting rounds from the base booster on site data; the number of rounds is
    chosen too, default the task's) against `pooled` (the base model's own development patients,
    `base_data`, plus the site's with weight `site_weight`, trained afresh with the base's settings;
    skipped without `base_data`). The winner by the task's out-of-fold score (sepsis: utility) is
    refitted on all fit patients, calibrated and thresholded on its out-of-fold probabilities, and
    compared with the base and the recalibrated base on the held-out patients. `scheduler`: a Dask
    scheduler address to train on (xgboost.dask). `task`: the model's go-live value (default: sepsis)."""
    task = task or SEPSIS_SITE
    continue_rounds = tuple(continue_rounds or task.continue_rounds)
    data = site.data
    label = _labels(data)
    split = site_split(data.patient, seed)
    fit, hold = np.isin(data.patient, split.fit), np.isin(data.patient, split.holdout)
    x, y, pid = data.features[fit], label[fit], data.patient[fit]
    params = {k: v for k, v in model.manifest.params.items() if k != "device"}
    base_rounds = model.booster.num_boosted_rounds()
    extra = max(continue_rounds)
    fold_ids = patient_split(pid, (1.0,) * folds, seed + 1)
    oof_continue = {r: np.full(len(y), np.nan) for r in continue_rounds}
    oof_pooled = np.full(len(y), np.nan)
    trained_device = "cpu"
    for i, ids in enumerate(fold_ids):
        held = np.isin(pid, ids)
        cont = train_on(
            scheduler,
            x[~held],
            y[~held],
            params={**params, "seed": seed + i},
            num_boost_round=extra,
            xgb_model=model.booster,
            device=device,
            progress=progress,
            description=f"site continue fold {i + 1}/{folds}",
        )
        trained_device = cont.device
        for r in continue_rounds:
            oof_continue[r][held] = cont.booster.inplace_predict(
                x[held], iteration_range=(0, base_rounds + r), missing=np.nan
            )
        if base_data is not None:
            pooled = _train_pooled(
                base_data,
                x[~held],
                y[~held],
                params,
                model.manifest.num_boost_round,
                site_weight,
                seed + i,
                device,
                progress,
                f"site pooled fold {i + 1}/{folds}",
                scheduler,
            )
            oof_pooled[held] = pooled.booster.inplace_predict(x[held], missing=np.nan)
    base_raw_fit = _raw(model, x)
    candidates: dict[str, np.ndarray] = {f"continue+{r}": v for r, v in oof_continue.items()}
    if base_data is not None:
        candidates[f"pooled(w={site_weight:g})"] = oof_pooled
    scores = {k: round(task.select(v, y, pid), 4) for k, v in candidates.items()}
    aurocs = {k: round(challenge_auc(y, v)[0], 4) for k, v in candidates.items()}
    chosen = max(scores, key=lambda k: (scores[k], aurocs[k]))
    metric = task.select_metric
    selection = {
        "folds": folds,
        f"out_of_fold_{metric}": scores,
        "out_of_fold_auroc": aurocs,
        "base_on_fit_patients": {
            metric: round(task.select(base_raw_fit, y, pid), 4),
            "auroc": round(challenge_auc(y, base_raw_fit)[0], 4),
        },
        "chosen": chosen,
    }
    if chosen.startswith("continue"):
        rounds = int(chosen.split("+")[1])
        final = train_on(
            scheduler,
            x,
            y,
            params={**params, "seed": seed},
            num_boost_round=rounds,
            xgb_model=model.booster,
            device=device,
            progress=progress,
            description="site continue final",
        )
    else:
        assert base_data is not None
        final = _train_pooled(
            base_data,
            x,
            y,
            params,
            model.manifest.num_boost_round,
            site_weight,
            seed,
            device,
            progress,
            "site pooled final",
            scheduler,
        )
    adapted = task.refit(candidates[chosen], y, pid, target_alerts_per_100_days)
    recal = task.refit(base_raw_fit, y, pid, target_alerts_per_100_days)
    xh = data.features[hold]
    raw_hold = _raw(model, xh)
    adapted_raw = np.asarray(final.booster.inplace_predict(xh, missing=np.nan), dtype=np.float64)
    comparison = compare_on_holdout(
        {
            "base": model.calibrate(raw_hold),
            "recalibrated": _interp(recal.calibration, raw_hold),
            "adapted": _interp(adapted.calibration, adapted_raw),
        },
        {"base": model.threshold, "recalibrated": recal.threshold, "adapted": adapted.threshold},
        label[hold],
        data.patient[hold],
        replicates=replicates,
        measures=task.measures,
    )
    result = SiteResult(
        "adapted",
        split,
        adapted,
        comparison,
        final.model_bytes(),
        {k: v for k, v in final.params.items() if k != "device"},
        final.num_boost_round,
        trained_device,
        selection,
        int(fit.sum()),
        task.measures,
    )
    return AdaptationResult(result, recal)


def _train_pooled(
    base: SepsisData,
    x_site: np.ndarray,
    y_site: np.ndarray,
    params: dict[str, Any],
    rounds: int,
    site_weight: float,
    seed: int,
    device: str | None,
    progress: bool,
    description: str,
    scheduler: str | None = None,
) -> Any:
    x = np.concatenate([base.features, x_site])
    y = np.concatenate([_labels(base), y_site])
    w = np.concatenate([np.ones(len(base.features)), np.full(len(x_site), site_weight)])
    return train_on(
        scheduler,
        x,
        y,
        params={**params, "seed": seed},
        num_boost_round=rounds,
        weight=w,
        device=device,
        progress=progress,
        description=description,
    )


def base_development_data(
    model: RiskModel, path: Path | str, spec: Any, *, patients: int | None = None, seed: int = 0
) -> SepsisData:
    """The base model's own development patients (never its held-out test patients), optionally a
    random `patients` of them: the `pooled` strategy's base part."""
    frame = read_physionet(path)
    dev = development_split(frame["patient"].to_numpy(), model.manifest.seed)[0]
    if patients is not None and patients < len(dev):
        dev = np.sort(np.random.default_rng(seed).choice(dev, patients, replace=False))
    frame = frame[frame["patient"].isin(dev)].reset_index(drop=True)
    return sepsis_data(frame, spec)


# --- registration ----------------------------------------------------------------------------------


def register_site_version(
    registry: ModelRegistry, model: RiskModel, site: SiteData, result: SiteResult, *, command: str
) -> ModelManifest:
    """Register a recalibrated or adapted version as a candidate (not served until promoted),
    with its lineage: parent version and model hash, the site data's fingerprint, counts and seed."""
    base = model.manifest
    recal = result.recalibration
    lineage = {
        "kind": result.kind,
        "parent_version": base.version,
        "parent_model_sha256": base.model_sha256,
        "parent_training_data_sha256": base.training_data.get("sha256"),
        "site_data_sha256": site.fingerprint,
        "site_rows": int(len(site.data.patient)),
        "site_patients": int(len(np.unique(site.data.patient))),
        "fit_rows": result.fit_rows,
        **result.split.lineage(),
        "threshold_rule": recal.rule,
        "status": "candidate",
    }
    if result.selection:
        lineage["selection"] = result.selection
    threshold = recal.threshold
    given = Path(site.label)
    data_path = str(given.resolve()) if given.exists() else site.label  # the gate finds it from anywhere
    manifest, _ = register_version(
        registry,
        name=base.name,
        title=base.title + (" - site-recalibrated" if result.kind == "recalibrated" else " - site-adapted"),
        outcome=base.outcome,
        horizon_hours=base.horizon_hours,
        spec=model.spec,
        model_bytes=result.model_bytes,
        data_path=data_path,
        data_label=site.label,
        data_sha256=site.fingerprint,
        rows=int(len(site.data.patient)),
        patients=int(len(np.unique(site.data.patient))),
        split=f"site patients {1 - SITE_HOLDOUT_FRACTION:.0%} fit / {SITE_HOLDOUT_FRACTION:.0%} held-out, "
        f"seed {result.split.seed}",
        params=result.params,
        num_boost_round=result.num_boost_round,
        threshold=threshold,
        risk_bands=recal.bands or {"low": 0.0, "moderate": threshold / 2, "high": threshold},
        calibration=recal.calibration,
        metrics={"site_holdout": result.comparison, **recal.fit_figures},
        device=result.device,
        seed=result.split.seed,
        activate=False,
        parent_version=base.version,
        created_by=command,
        lineage=lineage,
    )
    return manifest


def write_site_report(out: Path, title: str, result: SiteResult) -> Path:
    """comparison.json and comparison.md: the side-by-side table on held-out site patients."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(
        json.dumps(
            {"comparison": result.comparison, "selection": result.selection, **result.split.lineage()},
            indent=2,
        )
        + "\n"
    )
    text = "\n\n".join(
        [
            f"# {title}",
            f"Held-out site patients: {result.comparison['patients']} "
            f"({result.comparison['rows']} {result.measures.rows}), "
            f"split seed {result.split.seed}; fitted on {len(result.split.fit)} other site patients. "
            f"Threshold rule: {result.recalibration.rule}.",
            comparison_table(result.comparison, result.measures),
            *(
                [f"Selection (patient-grouped CV inside the fit patients): `{json.dumps(result.selection)}`"]
                if result.selection
                else []
            ),
        ]
    )
    path = out / "comparison.md"
    path.write_text(text + "\n")
    return path


def _sepsis_select(raw: np.ndarray, label: np.ndarray, patient: np.ndarray) -> float:
    return _best_utility(raw, label, patient)


def _validate_sepsis(model: RiskModel, site: SiteData, out: Path, replicates: int) -> dict[str, Any]:
    return validate_site(model, site, out, replicates=replicates)


def _load_sepsis(source: Path | str | pd.DataFrame, spec: FeatureSpec, label: str) -> SiteData:
    return load_site(source, spec, label=label)


def _sepsis_development_data(
    model: RiskModel, path: Path, spec: FeatureSpec, patients: int | None, seed: int
) -> SepsisData:
    return base_development_data(model, path, spec, patients=patients, seed=seed)


SEPSIS_SITE = SiteTask(
    name="sepsis",
    load=_load_sepsis,
    validate=_validate_sepsis,
    measures=SEPSIS_MEASURES,
    refit=_fit_map_and_threshold,
    select=_sepsis_select,
    select_metric="utility",
    continue_rounds=CONTINUE_ROUNDS,
    retrains_from_served=True,
    development_data=_sepsis_development_data,
)
