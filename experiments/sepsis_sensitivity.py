"""How much does the sepsis score lean on the ICU clock and on measurement habits, and does it
travel between ICU types? Trains variants on set A's development patients with the served
settings and judges each on the held-out test patients (threshold chosen on an inner
validation part of the training patients, never on the test rows). Prints JSON lines.

    .venv/bin/python experiments/sepsis_sensitivity.py
"""

from __future__ import annotations

import json

import numpy as np
from sepsis_experiments import fit_predict, judge, load, threshold_on

from models import (
    SEPSIS_PARAMS,
    SEPSIS_ROUNDS,
    challenge_auc,
    development_split,
    patient_split,
    utility_table,
)


def run(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    pid: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    cols: list[int],
    seed: int,
) -> None:
    inner_fit, inner_val = patient_split(np.unique(pid[train]), (0.85, 0.15), seed)
    fit, val = np.isin(pid, inner_fit) & train, np.isin(pid, inner_val) & train
    params = {**SEPSIS_PARAMS, "seed": seed}
    p_val = fit_predict(x[fit][:, cols], y[fit], x[val][:, cols], params, SEPSIS_ROUNDS)
    threshold = threshold_on(p_val, y[val], pid[val])
    p = fit_predict(x[train][:, cols], y[train], x[test][:, cols], params, SEPSIS_ROUNDS)
    print(
        json.dumps(
            {
                "variant": name,
                "features": len(cols),
                "test_patients": int(len(np.unique(pid[test]))),
                **judge(p, y[test], pid[test], threshold),
            }
        ),
        flush=True,
    )


def main() -> None:
    seed = 2019
    data, spec = load()
    x, y, pid = data.features, data.label, data.patient
    dev_ids, test_ids = development_split(pid, seed)
    dev, test = np.isin(pid, dev_ids), np.isin(pid, test_ids)

    # The ICU clock alone: alarm when ICULOS >= t, t chosen on the development rows.
    iculos = data.frame["ICULOS"].to_numpy(dtype=np.float64)
    t = max(range(1, 200), key=lambda h: utility_table(y[dev], pid[dev]).normalized(iculos[dev] >= h))
    print(
        json.dumps(
            {
                "variant": f"rule: ICULOS >= {t} h",
                "auroc": round(challenge_auc(y[test], iculos[test] / 400)[0], 4),
                "utility": round(utility_table(y[test], pid[test]).normalized(iculos[test] >= t), 4),
            }
        ),
        flush=True,
    )

    served = spec.columns(exclude_families=("clock",))
    variants = {
        "served (no clock)": served,
        "served + ICULOS/HospAdmTime": spec.columns(),
        "no clock, no measurement-habit features": spec.columns(exclude_families=("clock", "measurement")),
    }
    for name, cols in variants.items():
        run(name, x, y, pid, dev, test, cols, seed)

    unit1 = data.frame["Unit1"].to_numpy() == 1
    unit2 = data.frame["Unit2"].to_numpy() == 1
    for name, cols in (
        ("served (no clock)", served),
        ("served + ICULOS/HospAdmTime", spec.columns()),
        ("no clock, no measurement-habit features", variants["no clock, no measurement-habit features"]),
    ):
        run(f"MICU -> SICU, {name}", x, y, pid, unit1, unit2, cols, seed)
        run(f"SICU -> MICU, {name}", x, y, pid, unit2, unit1, cols, seed)


if __name__ == "__main__":
    main()
