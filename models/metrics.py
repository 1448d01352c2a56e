"""Model-agnostic evaluation: discrimination, operating points, patient-grouped bootstrap
intervals, and subgroup gaps. Inputs are plain arrays; nothing here knows a dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "BootstrapInterval",
    "OperatingPoint",
    "auprc",
    "auroc",
    "bootstrap_by_group",
    "operating_point",
    "subgroup_table",
]


def auroc(label: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(label)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def auprc(label: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(label)
    if y.max() == 0:
        return float("nan")
    return float(average_precision_score(y, p))


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    flagged_fraction: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def operating_point(label: np.ndarray, p: np.ndarray, threshold: float) -> OperatingPoint:
    y = np.asarray(label).astype(bool)
    flag = np.asarray(p) >= threshold
    tp, fp = np.sum(flag & y), np.sum(flag & ~y)
    fn, tn = np.sum(~flag & y), np.sum(~flag & ~y)

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

    return OperatingPoint(
        threshold,
        ratio(tp, tp + fn),
        ratio(tn, tn + fp),
        ratio(tp, tp + fp),
        ratio(tn, tn + fn),
        float(flag.mean()),
    )


@dataclass(frozen=True)
class BootstrapInterval:
    estimate: float
    low: float
    high: float
    replicates: int

    def as_dict(self) -> dict[str, float]:
        return {
            "estimate": round(self.estimate, 4),
            "ci95_low": round(self.low, 4),
            "ci95_high": round(self.high, 4),
            "replicates": self.replicates,
        }


def bootstrap_by_group(
    statistic: Callable[[np.ndarray], float],
    groups: np.ndarray,
    *,
    replicates: int = 200,
    seed: int = 0,
) -> BootstrapInterval:
    """95 % percentile interval of `statistic(row_indices)`, resampling whole groups (patients)
    with replacement: hours of one patient are not independent."""
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(unique)))
    ends = np.append(starts[1:], len(order))
    rng = np.random.default_rng(seed)
    estimate = statistic(np.arange(len(groups)))
    values = []
    for _ in range(replicates):
        pick = rng.integers(0, len(unique), len(unique))
        rows = np.concatenate([order[starts[g] : ends[g]] for g in pick])
        value = statistic(rows)
        if np.isfinite(value):
            values.append(value)
    low, high = np.percentile(values, [2.5, 97.5]) if values else (np.nan, np.nan)
    return BootstrapInterval(float(estimate), float(low), float(high), len(values))


def subgroup_table(
    label: np.ndarray,
    p: np.ndarray,
    subgroups: Mapping[str, Mapping[str, np.ndarray]],
    threshold: float,
    *,
    min_positives: int = 10,
) -> dict[str, object]:
    """Per subgroup: size, positives, AUROC, sensitivity and false-positive rate at the threshold;
    and per grouping the largest AUROC gap between its subgroups with enough positives."""
    out: dict[str, object] = {}
    for grouping, masks in subgroups.items():
        rows = {}
        for name, mask in masks.items():
            y, q = np.asarray(label)[mask], np.asarray(p)[mask]
            op = operating_point(y, q, threshold)
            rows[name] = {
                "n": int(mask.sum()),
                "positives": int(y.sum()),
                "auroc": round(auroc(y, q), 4) if y.sum() >= min_positives else None,
                "sensitivity": round(op.sensitivity, 4),
                "false_positive_rate": round(1 - op.specificity, 4),
            }
        aucs = [r["auroc"] for r in rows.values() if r["auroc"] is not None]
        out[grouping] = {
            "groups": rows,
            "largest_auroc_gap": round(max(aucs) - min(aucs), 4) if len(aucs) > 1 else None,
        }
    return out
