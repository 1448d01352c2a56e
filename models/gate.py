"""The promotion gate: may a candidate version replace (or challenge) the champion?

Each check compares the candidate with the active version on the same held-out patients, or checks
the candidate alone: not worse beyond a tolerance in hour-level AUROC, normalised utility at its
own threshold, calibration slope and intercept (distance from 1 and 0); the largest subgroup
AUROC gap (sex, age band, ICU type) within a bound; every golden-set case in its expected band
(models/golden.py); loads and scores as the server loads it (`cds` adds that check). Pure given the
scores: the CLI loads the data, this module judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import calibration_report
from .errors import ModelError
from .golden import GoldenResult
from .metrics import subgroup_table
from .physionet2019 import challenge_auc, utility_table
from .score import RiskModel
from .task import EvaluateOptions, RiskTask

__all__ = [
    "GateCheck",
    "GatePolicy",
    "GateReport",
    "golden_check",
    "held_out_metrics",
    "judge",
    "sepsis_held_out_pair",
    "task_held_out_pair",
]


@dataclass(frozen=True)
class GatePolicy:
    """Tolerances: how much worse than the champion a candidate may be (defaults measured against
    the bootstrap spread of set A's held-out patients: AUROC CI half-width ~0.01)."""

    auroc_drop: float = 0.01
    utility_drop: float = 0.03
    slope_drift: float = 0.15  # |slope - 1| may grow by this much
    intercept_drift: float = 0.15  # |intercept| may grow by this much
    subgroup_gap: float = 0.12  # the largest subgroup AUROC gap allowed (absolute) ...
    subgroup_gap_drift: float = 0.02  # ... or this much above the champion's gap on the same patients


@dataclass(frozen=True)
class GateCheck:
    name: str
    active: float | str | None
    candidate: float | str | None
    bound: str
    passed: bool
    why: str = ""


@dataclass
class GateReport:
    model: str
    candidate: str
    active: str | None
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.why}" for c in self.checks if not c.passed]

    def table(self) -> str:
        """The checks as a fixed-width table for the terminal."""
        head = ("check", f"active v{self.active}" if self.active else "active", f"v{self.candidate}", "bound")
        rows = [head] + [
            (c.name, _fmt(c.active), _fmt(c.candidate), c.bound + ("" if c.passed else "  FAIL"))
            for c in self.checks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures())
        return "\n".join([*lines, f"gate {verdict}"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "candidate": self.candidate,
            "active": self.active,
            "passed": self.passed,
            "checks": [c.__dict__ for c in self.checks],
        }


def _fmt(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def held_out_metrics(
    probability: np.ndarray,
    label: np.ndarray,
    patient: np.ndarray,
    threshold: float,
    subgroups: Mapping[str, Mapping[str, np.ndarray]],
    *,
    utility: bool = True,
) -> dict[str, float | None]:
    """What the gate compares, for one version on the held-out rows (`utility`: the PhysioNet
    utility, the sepsis task's; None for another model)."""
    label = np.asarray(label).astype(np.int8)
    p = np.asarray(probability, dtype=np.float64)
    auroc, _ = challenge_auc(label, p)
    cal = calibration_report(label, p)
    table = subgroup_table(label, p, subgroups, threshold)
    gaps = [g["largest_auroc_gap"] for g in table.values() if isinstance(g, dict)]
    found = [float(g) for g in gaps if g is not None]
    return {
        "auroc": round(float(auroc), 4),
        "utility": round(utility_table(label, patient).normalized(p >= threshold), 4) if utility else None,
        "calibration_slope": round(float(cal.slope), 4),
        "calibration_intercept": round(float(cal.intercept), 4),
        "subgroup_auroc_gap": round(max(found), 4) if found else None,
    }


def sepsis_held_out_pair(
    active: RiskModel | None,
    candidate: RiskModel,
    data_path: Path | str,
    *,
    patients: int | None = None,
    seed: int | None = None,
) -> tuple[dict[str, float | None] | None, dict[str, float | None], int]:
    """Both versions scored on the same held-out patients of `data_path`: a site version's held-out
    site patients (models/site.py `site_holdout`: the half its fit never saw, so the champion and
    the candidate are judged where the site will use them), otherwise the development split's test
    patients of the candidate's seed, or `seed`; returns (active metrics, candidate metrics, patients)."""
    from .datasets import read_physionet
    from .sepsis import development_split, sepsis_data
    from .sepsis_evaluation import sepsis_subgroups
    from .site import site_holdout

    frame = read_physionet(data_path)  # once: a Bulk export is mapped on every read
    ids = frame["patient"].to_numpy()
    held = site_holdout(candidate.manifest, data_path, ids) if seed is None else None
    if held is None:
        held = development_split(ids, candidate.manifest.seed if seed is None else seed)[1]
    if patients is not None:
        held = np.sort(held)[:patients]
    data = sepsis_data(frame[frame["patient"].isin(held)].reset_index(drop=True), candidate.spec)
    if data.label is None:
        raise ModelError("the gate's data has no SepsisLabel column")
    columns = {c: data.frame[c].to_numpy(dtype=np.float64) for c in ("Gender", "Age", "Unit1", "Unit2")}
    groups = sepsis_subgroups(columns)

    def metrics(model: RiskModel) -> dict[str, float | None]:
        p = model.predict(data.features)
        return held_out_metrics(p, data.label, data.patient, model.threshold, groups)  # type: ignore[arg-type]

    return (
        metrics(active) if active is not None else None,
        metrics(candidate),
        int(len(np.unique(data.patient))),
    )


def task_held_out_pair(
    task: RiskTask,
    active: RiskModel | None,
    candidate: RiskModel,
    data_path: Path,
    *,
    replicates: int = 20,
) -> tuple[dict[str, float | None] | None, dict[str, float | None], int]:
    """For a model without its own pair evaluation (readmission): the task's `--holdout`
    evaluation of each version, which splits by the version's seed, so the seeds must agree."""
    if active is not None and active.manifest.seed != candidate.manifest.seed:
        raise ModelError(
            f"v{active.version} and v{candidate.version} hold out different patients (seeds "
            f"{active.manifest.seed} and {candidate.manifest.seed}): no comparison on the same patients"
        )
    options = EvaluateOptions(holdout=True, replicates=replicates)

    def metrics(model: RiskModel) -> tuple[dict[str, float | None], int]:
        found = task.evaluate(model, data_path, options)
        auroc = found.get("auroc")
        cal = found.get("calibration") or {}
        gap = found.get("largest_subgroup_auroc_gap")
        return {
            "auroc": float(auroc["estimate"] if isinstance(auroc, dict) else auroc)
            if auroc is not None
            else None,
            "utility": None,  # the PhysioNet utility is the sepsis task's
            "calibration_slope": cal.get("slope"),
            "calibration_intercept": cal.get("intercept"),
            "subgroup_auroc_gap": gap.get("gap") if isinstance(gap, dict) else gap,
        }, int(found.get("patients") or found.get("encounters") or 0)

    c, n = metrics(candidate)
    return (metrics(active)[0] if active is not None else None), c, n


def _not_worse(
    name: str, active: float | None, candidate: float | None, drop: float, *, higher_is_better: bool = True
) -> GateCheck:
    if candidate is None and active is None:
        return GateCheck(name, active, candidate, "not defined for this model", True)
    if candidate is None:
        return GateCheck(name, active, candidate, f">= active - {drop}", False, "could not be computed")
    if active is None:
        return GateCheck(name, active, candidate, "no active version", True)
    if higher_is_better:
        ok = candidate >= active - drop
        return GateCheck(
            name,
            active,
            candidate,
            f">= active - {drop}",
            ok,
            "" if ok else f"{candidate:.4f} is more than {drop} below the active {active:.4f}",
        )
    ok = candidate <= active + drop
    return GateCheck(
        name,
        active,
        candidate,
        f"<= active + {drop}",
        ok,
        "" if ok else f"{candidate:.4f} is more than {drop} above the active {active:.4f}",
    )


def judge(
    report: GateReport,
    active: Mapping[str, float | None] | None,
    candidate: Mapping[str, float | None],
    policy: GatePolicy = GatePolicy(),
) -> GateReport:
    """Add the held-out comparison's checks to `report`."""
    a = active or {}
    auroc = "AUROC (hour)" if report.model == "sepsis" else "AUROC"
    report.checks.append(_not_worse(auroc, a.get("auroc"), candidate["auroc"], policy.auroc_drop))
    report.checks.append(_not_worse("utility", a.get("utility"), candidate["utility"], policy.utility_drop))
    slope_a, slope_c = a.get("calibration_slope"), candidate["calibration_slope"]
    report.checks.append(
        _not_worse(
            "|calibration slope - 1|",
            None if slope_a is None else round(abs(slope_a - 1.0), 4),
            None if slope_c is None else round(abs(slope_c - 1.0), 4),
            policy.slope_drift,
            higher_is_better=False,
        )
    )
    int_a, int_c = a.get("calibration_intercept"), candidate["calibration_intercept"]
    report.checks.append(
        _not_worse(
            "|calibration intercept|",
            None if int_a is None else round(abs(int_a), 4),
            None if int_c is None else round(abs(int_c), 4),
            policy.intercept_drift,
            higher_is_better=False,
        )
    )
    # Within the bound, or no wider than the champion's own gap on the same patients (a small
    # held-out set has wide subgroup AUROCs: an equal candidate must not be refused for them).
    gap, active_gap = candidate["subgroup_auroc_gap"], a.get("subgroup_auroc_gap")
    allowed = max(policy.subgroup_gap, (active_gap or 0.0) + policy.subgroup_gap_drift)
    ok = gap is None or gap <= allowed
    report.checks.append(
        GateCheck(
            "largest subgroup AUROC gap",
            active_gap,
            gap,
            f"<= max({policy.subgroup_gap}, active + {policy.subgroup_gap_drift})",
            ok,
            "" if ok else f"{gap:.4f} exceeds {allowed:.4f}",
        )
    )
    return report


def golden_check(results: Sequence[GoldenResult]) -> GateCheck:
    """Every golden case in one of its expected bands."""
    wrong = [r for r in results if not r.ok]
    passed = len(results) - len(wrong)
    why = "; ".join(f"{r.case} got {r.band} (expected {'/'.join(r.expected)})" for r in wrong[:5])
    return GateCheck(
        "golden set",
        None,
        f"{passed}/{len(results)}",
        "all cases in band",
        not wrong and bool(results),
        why or ("" if results else "no cases"),
    )
