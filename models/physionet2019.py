"""The PhysioNet/CinC Challenge 2019 scoring rules, reimplemented (vectorised).

Faithful to the challenge's `evaluate_sepsis_score.py`:
- utility: onset t_sepsis = first row labelled 1 + 6; a positive prediction earns up to 1 at
  t_sepsis - 6, rising linearly from 0 at t_sepsis - 12 (floored at the false-positive cost
  -0.05 earlier) and falling to 0 at t_sepsis + 3; a missed row after t_sepsis - 6 costs down
  to -2 at t_sepsis + 3; rows after t_sepsis + 3 do not count; for a non-septic patient every
  positive row costs 0.05. Normalised as (observed - inaction) / (best - inaction), where best
  alarms exactly on t_sepsis - 12 .. t_sepsis + 3 and inaction never alarms.
- AUROC/AUPRC: pooled over all rows; thresholds are the unique probabilities high to low with
  1 prepended when absent and 0 dropped when it is the lowest; a row is positive at p >= t;
  TPR/TNR/PPV default to 1 on an empty denominator; AUROC is the trapezoid over (TPR, TNR),
  AUPRC the step sum of dTPR x PPV.
Rows are positions within each patient's record (the scorer's t), not ICULOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DT_EARLY",
    "DT_LATE",
    "DT_OPTIMAL",
    "UtilityTable",
    "accuracy_f_measure",
    "challenge_auc",
    "normalized_utility",
    "utility_table",
]

DT_EARLY, DT_OPTIMAL, DT_LATE = -12, -6, 3
MAX_U_TP, MIN_U_FN, U_FP, U_TN = 1.0, -2.0, -0.05, 0.0


@dataclass(frozen=True)
class UtilityTable:
    """Per-row utility of predicting 1 and of predicting 0, and of the best prediction."""

    if_positive: np.ndarray
    if_negative: np.ndarray
    best: np.ndarray  # 0/1: the reference "best" prediction per row

    def total(self, predictions: np.ndarray) -> float:
        return float(np.where(predictions.astype(bool), self.if_positive, self.if_negative).sum())

    def normalized(self, predictions: np.ndarray) -> float:
        observed = self.total(predictions)
        best = self.total(self.best)
        inaction = float(self.if_negative.sum())
        if best == inaction:
            return float("nan")
        return (observed - inaction) / (best - inaction)


def utility_table(labels: np.ndarray, patient: np.ndarray) -> UtilityTable:
    """`labels` and `patient` row-aligned, each patient's rows contiguous and in time order."""
    labels = np.asarray(labels).astype(np.int8)
    n = len(labels)
    starts = np.ones(n, dtype=bool)
    if n > 1:
        starts[1:] = patient[1:] != patient[:-1]
    group = np.cumsum(starts) - 1
    first_row = np.flatnonzero(starts)
    t = np.arange(n) - first_row[group]  # row position within the patient
    # First labelled row per patient (or none).
    big = np.iinfo(np.int64).max
    first_pos = np.full(len(first_row), big, dtype=np.int64)
    pos_rows = np.flatnonzero(labels == 1)
    np.minimum.at(first_pos, group[pos_rows], t[pos_rows])
    septic = (first_pos != big)[group]
    t_sepsis = np.where(septic, first_pos[group] - DT_OPTIMAL, 0)
    k = (t - t_sepsis).astype(np.float64)

    m1 = MAX_U_TP / (DT_OPTIMAL - DT_EARLY)
    b1 = -m1 * DT_EARLY
    m2 = -MAX_U_TP / (DT_LATE - DT_OPTIMAL)
    b2 = -m2 * DT_LATE
    m3 = MIN_U_FN / (DT_LATE - DT_OPTIMAL)
    b3 = -m3 * DT_OPTIMAL

    early = k <= DT_OPTIMAL
    window = (k > DT_OPTIMAL) & (k <= DT_LATE)
    pos = np.zeros(n)
    neg = np.zeros(n)
    pos[early] = np.maximum(m1 * k[early] + b1, U_FP)
    pos[window] = m2 * k[window] + b2
    neg[window] = m3 * k[window] + b3
    # Non-septic patients: every row counts.
    pos = np.where(septic, pos, U_FP)
    neg = np.where(septic, neg, U_TN)
    best = (septic & (k >= DT_EARLY) & (k <= DT_LATE)).astype(np.int8)
    return UtilityTable(pos, neg, best)


def normalized_utility(labels: np.ndarray, predictions: np.ndarray, patient: np.ndarray) -> float:
    return utility_table(labels, patient).normalized(predictions)


def challenge_auc(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """(AUROC, AUPRC) as the challenge scorer computes them."""
    labels = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.unique(p)[::-1]
    if len(thresholds) == 0 or thresholds[0] != 1:
        thresholds = np.insert(thresholds, 0, 1.0)
    if thresholds[-1] == 0:
        thresholds = thresholds[:-1]
    order = np.sort(p)
    pos_sorted = np.sort(p[labels])
    n, n_pos = len(p), int(labels.sum())
    n_neg = n - n_pos
    # Rows with p >= threshold, counted from the top.
    at_or_above = n - np.searchsorted(order, thresholds, side="left")
    tp = (n_pos - np.searchsorted(pos_sorted, thresholds, side="left")).astype(np.float64)
    fp = at_or_above - tp
    fn = n_pos - tp
    tn = n_neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(tp + fn > 0, tp / (tp + fn), 1.0)
        tnr = np.where(fp + tn > 0, tn / (fp + tn), 1.0)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    d_tpr = np.diff(tpr)
    auroc = float(np.sum(0.5 * d_tpr * (tnr[1:] + tnr[:-1])))
    auprc = float(np.sum(d_tpr * ppv[1:]))
    return auroc, auprc


def accuracy_f_measure(labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
    y = np.asarray(labels).astype(bool)
    p = np.asarray(predictions).astype(bool)
    tp = int((y & p).sum())
    fp = int((~y & p).sum())
    fn = int((y & ~p).sum())
    tn = int((~y & ~p).sum())
    total = tp + fp + fn + tn
    accuracy = (tp + tn) / total if total else 1.0
    f_measure = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return accuracy, f_measure
