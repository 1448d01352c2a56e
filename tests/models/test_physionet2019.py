"""The challenge scoring rules, checked against a plain row-by-row reading of the published rules
and against the worked examples in the challenge scorer's documentation."""

from __future__ import annotations

import numpy as np
import pytest

from models import accuracy_f_measure, best_threshold, challenge_auc, normalized_utility, utility_table


def reference_patient_utility(labels: list[int], preds: list[int]) -> float:
    """Row by row, as the rules are written: onset = first label + 6; windows -12/-6/+3."""
    septic = any(labels)
    t_sepsis = labels.index(1) + 6 if septic else None
    total = 0.0
    for t, p in enumerate(preds):
        if not septic:
            total += -0.05 if p else 0.0
            continue
        k = t - t_sepsis
        if k > 3:
            continue
        if p:
            total += max((k + 12) / 6, -0.05) if k <= -6 else (3 - k) / 9
        elif k > -6:
            total += -2 * (k + 6) / 9
    return total


def reference_normalized(patients: list[tuple[list[int], list[int]]]) -> float:
    observed = best = inaction = 0.0
    for labels, preds in patients:
        n = len(labels)
        best_pred = [0] * n
        if any(labels):
            t_s = labels.index(1) + 6
            for t in range(max(0, t_s - 12), min(t_s + 4, n)):
                best_pred[t] = 1
        observed += reference_patient_utility(labels, preds)
        best += reference_patient_utility(labels, best_pred)
        inaction += reference_patient_utility(labels, [0] * n)
    return (observed - inaction) / (best - inaction)


def reference_auc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    thresholds = sorted(set(probs.tolist()), reverse=True)
    if thresholds[0] != 1:
        thresholds = [1.0, *thresholds]
    if thresholds[-1] == 0:
        thresholds = thresholds[:-1]
    tpr, tnr, ppv = [], [], []
    for thr in thresholds:
        pred = probs >= thr
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        tn = np.sum(~pred & (labels == 0))
        tpr.append(tp / (tp + fn) if tp + fn else 1.0)
        tnr.append(tn / (fp + tn) if fp + tn else 1.0)
        ppv.append(tp / (tp + fp) if tp + fp else 1.0)
    auroc = sum(0.5 * (tpr[j + 1] - tpr[j]) * (tnr[j + 1] + tnr[j]) for j in range(len(thresholds) - 1))
    auprc = sum((tpr[j + 1] - tpr[j]) * ppv[j + 1] for j in range(len(thresholds) - 1))
    return auroc, auprc


def test_documented_examples() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    table = utility_table(labels, np.zeros(6))
    assert table.total(np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(3.388888888888889)
    assert challenge_auc(labels, np.array([0.3, 0.4, 0.6, 0.7, 0.8, 0.8])) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    assert accuracy_f_measure(labels, np.array([0, 0, 1, 1, 1, 1])) == (
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
    )


def random_cohort(
    rng: np.random.Generator, n_patients: int
) -> tuple[list[tuple[list[int], list[int]]], np.ndarray]:
    patients = []
    for _ in range(n_patients):
        n = int(rng.integers(8, 60))
        labels = [0] * n
        if rng.random() < 0.4:
            onset = int(rng.integers(0, n))
            labels[onset:] = [1] * (n - onset)
        preds = (rng.random(n) < rng.random()).astype(int).tolist()
        patients.append((labels, preds))
    ids = np.concatenate([np.full(len(lab), i) for i, (lab, _) in enumerate(patients)])
    return patients, ids


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_utility_equals_the_rules(seed: int) -> None:
    rng = np.random.default_rng(seed)
    patients, ids = random_cohort(rng, 40)
    labels = np.concatenate([np.array(lab) for lab, _ in patients])
    preds = np.concatenate([np.array(p) for _, p in patients])
    assert normalized_utility(labels, preds, ids) == pytest.approx(reference_normalized(patients), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_auc_equals_the_scorer_method(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(500) < 0.1).astype(int)
    probs = np.round(np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1), 2)  # ties, zeros and ones
    assert challenge_auc(labels, probs) == pytest.approx(reference_auc(labels, probs), rel=1e-12)


def test_best_threshold_maximises_utility() -> None:
    rng = np.random.default_rng(3)
    patients, ids = random_cohort(rng, 60)
    labels = np.concatenate([np.array(lab) for lab, _ in patients])
    probs = np.clip(labels * 0.3 + rng.random(len(labels)) * 0.7, 0, 1)
    threshold, utility = best_threshold(probs, labels, ids)
    table = utility_table(labels, ids)
    assert table.normalized(probs >= threshold) == pytest.approx(utility)
    for other in np.quantile(probs, np.linspace(0, 1, 41)):
        assert table.normalized(probs >= other) <= utility + 1e-12


@pytest.mark.data
def test_the_longest_trained_icu_stay_is_set_as_longest() -> None:
    """The hook refuses ICU clocks beyond TRAINED_MAX_ICU_HOURS: it must be set A's longest stay."""
    import pandas as pd

    from models import TRAINED_MAX_ICU_HOURS
    from tests.conftest import SET_A, need

    iculos = pd.read_parquet(need(SET_A, "PhysioNet 2019 set A"), columns=["ICULOS"])["ICULOS"]
    assert int(iculos.max()) == TRAINED_MAX_ICU_HOURS
