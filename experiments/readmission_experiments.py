"""Readmission feature/parameter experiments: measured on the validation split and by 5-fold
cross-validation on train+validation patients; the test split is not touched here. The results
table is in docs/readmission-model.md.

    .venv/bin/python experiments/readmission_experiments.py [name ...]
    (~6 min, CDS_DATA_DIR or ../shared/data)

Writes one JSON line per experiment to stdout. XGBoost runs with nthread=1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_mappings import (  # noqa: E402
    EXCLUDED_DISPOSITIONS,
    build_readmission_features,
    diabetes130_to_table,
    readmission_cohort,
    readmission_feature_spec,
    readmitted_within_30_days,
)
from models.readmission import default_readmission_path, read_diabetes130, readmission_params  # noqa: E402
from models.train import patient_split  # noqa: E402

PATH = default_readmission_path(os.environ.get("CDS_DATA_DIR", ROOT.parent / "shared" / "data"))
SEED = 2019


def readmission_encounters(frame: pd.DataFrame) -> pd.DataFrame:
    """Every stay not ending in death or hospice (not only each patient's first): the 'all stays'
    training variant. Not adopted: the served model keeps the standard first-encounter cohort."""
    ordered = frame.sort_values("encounter_id", kind="stable")
    disposition = pd.to_numeric(ordered["discharge_disposition_id"], errors="coerce")
    return ordered[~disposition.isin(EXCLUDED_DISPOSITIONS)].reset_index(drop=True)


def load():
    cohort = readmission_cohort(read_diabetes130(PATH))
    table = diabetes130_to_table(cohort)
    spec = readmission_feature_spec()
    x = build_readmission_features(table, spec)
    y = readmitted_within_30_days(cohort)
    return cohort, table, spec, x, y


def run_all_stays(name, xa, ya, pa, x, y, pat, tr_ids, va_ids, p, folds=5):
    """Train on every stay of the training patients; evaluate on first encounters (the cohort)."""
    t = time.time()
    va = np.isin(pat, va_ids)
    v_auc, v_rounds = fit_auc(xa[np.isin(pa, tr_ids)], ya[np.isin(pa, tr_ids)], x[va], y[va], p)
    idx = np.flatnonzero(np.isin(pat, np.concatenate([tr_ids, va_ids])))
    fold = np.random.default_rng(SEED).permutation(len(idx)) % folds
    cv = []
    for k in range(folds):
        m = np.isin(pa, pat[idx[fold != k]])
        cv.append(fit_auc(xa[m], ya[m], x[idx[fold == k]], y[idx[fold == k]], p)[0])
    out = {
        "name": name,
        "n_features": int(x.shape[1]),
        "train_rows": int(np.isin(pa, tr_ids).sum()),
        "valid_auroc": round(v_auc, 4),
        "valid_rounds": v_rounds,
        "cv_auroc": round(float(np.mean(cv)), 4),
        "cv_sd": round(float(np.std(cv)), 4),
        "seconds": round(time.time() - t),
    }
    print(json.dumps(out), flush=True)
    return out


def one_hot(values: pd.Series, keep: list) -> np.ndarray:
    return np.stack([(values == k).to_numpy(dtype=np.float32) for k in keep], axis=1)


def params(**over):
    # The served model's parameters (max_depth 3), with one thread.
    p = {**readmission_params(SEED), "max_depth": 3, "nthread": 1, "eval_metric": "auc"}
    p.pop("device", None)
    p.update(over)
    return p


def fit_auc(xtr, ytr, xva, yva, p, rounds=3000, es=200):
    dtr = xgb.DMatrix(xtr, label=ytr, missing=np.nan)
    dva = xgb.DMatrix(xva, label=yva, missing=np.nan)
    b = xgb.train(p, dtr, rounds, evals=[(dva, "valid")], early_stopping_rounds=es, verbose_eval=False)
    pred = b.predict(dva, iteration_range=(0, b.best_iteration + 1))
    return roc_auc_score(yva, pred), b.best_iteration + 1


def run(name, x, y, tr, va, dev, p, folds=5):
    t = time.time()
    v_auc, v_rounds = fit_auc(x[tr], y[tr], x[va], y[va], p)
    # 5-fold CV over train+validation (one row per patient, so folds are by patient)
    idx = np.flatnonzero(dev)
    rng = np.random.default_rng(SEED)
    fold = rng.permutation(len(idx)) % folds
    cv = [
        fit_auc(x[idx[fold != k]], y[idx[fold != k]], x[idx[fold == k]], y[idx[fold == k]], p)[0]
        for k in range(folds)
    ]
    out = {
        "name": name,
        "n_features": int(x.shape[1]),
        "valid_auroc": round(v_auc, 4),
        "valid_rounds": v_rounds,
        "cv_auroc": round(float(np.mean(cv)), 4),
        "cv_sd": round(float(np.std(cv)), 4),
        "seconds": round(time.time() - t),
    }
    print(json.dumps(out), flush=True)
    return out


SPECIALTY_GROUPS = {
    "InternalMedicine": "internal_medicine",
    "Hospitalist": "internal_medicine",
    "Family/GeneralPractice": "general_practice",
    "Osteopath": "general_practice",
    "Emergency/Trauma": "emergency",
    "Cardiology": "cardiology",
    "Cardiology-Pediatric": "cardiology",
    "Nephrology": "nephrology",
    "Pulmonology": "pulmonology",
    "Psychiatry": "psychiatry",
    "Psychiatry-Child/Adolescent": "psychiatry",
    "Psychiatry-Addictive": "psychiatry",
    "Psychology": "psychiatry",
    "ObstetricsandGynecology": "obstetrics_gynaecology",
    "Gynecology": "obstetrics_gynaecology",
    "Obstetrics": "obstetrics_gynaecology",
    "Obsterics&Gynecology-GynecologicOnco": "obstetrics_gynaecology",
    "Oncology": "oncology",
    "Hematology/Oncology": "oncology",
    "Hematology": "oncology",
    "Pediatrics-Hematology-Oncology": "oncology",
    "Gastroenterology": "gastroenterology",
    "Urology": "urology",
    "Neurology": "neurology",
    "Pediatrics-Neurology": "neurology",
    "Radiologist": "radiology",
    "Radiology": "radiology",
    "Endocrinology": "endocrinology",
    "Pediatrics-Endocrinology": "endocrinology",
    "Endocrinology-Metabolism": "endocrinology",
    "PhysicalMedicineandRehabilitation": "rehabilitation",
    "Orthopedics": "orthopaedics",
    "Orthopedics-Reconstructive": "orthopaedics",
}


def specialty_group(s: pd.Series) -> pd.Series:
    def g(v):
        if not isinstance(v, str):
            return None
        if v in SPECIALTY_GROUPS:
            return SPECIALTY_GROUPS[v]
        if v.startswith("Surg"):
            return "surgery"
        if v.startswith("Pediatrics"):
            return "paediatrics"
        return "other"

    return s.map(g)


def icd3(code) -> str | None:
    if not isinstance(code, str) or code in ("?", ""):
        return None
    code = code.strip()
    return code.split(".")[0][:4] if code[0] in "VE" else code.split(".")[0][:3]


def main(names: list[str]) -> None:
    cohort, table, spec, x, y = load()
    pat = cohort["patient_nbr"].to_numpy()
    tr_ids, va_ids, _ = patient_split(pat, (0.7, 0.1, 0.2), SEED)
    tr, va = np.isin(pat, tr_ids), np.isin(pat, va_ids)
    dev = tr | va
    spec_g = specialty_group(cohort["medical_specialty"])
    spec_levels = sorted(spec_g.dropna().unique())
    x_spec = np.concatenate(
        [one_hot(spec_g, spec_levels), spec_g.isna().to_numpy(dtype=np.float32)[:, None]], axis=1
    )
    disp = pd.to_numeric(cohort["discharge_disposition_id"], errors="coerce")
    disp_levels = [k for k, n in disp[tr].value_counts().items() if n >= 30]
    x_disp = one_hot(disp, disp_levels)
    d3 = pd.DataFrame({k: cohort[f"diag_{k}"].map(icd3) for k in (1, 2, 3)})
    counts = pd.concat([d3[k][tr] for k in (1, 2, 3)]).value_counts()
    frequent = [c for c, n in counts.items() if n >= 300]
    x_icd_any = np.stack([(d3 == c).any(axis=1).to_numpy(dtype=np.float32) for c in frequent], axis=1)
    p1 = d3[1].value_counts()
    frequent1 = [c for c, n in d3[1][tr].value_counts().items() if n >= 150]
    x_icd_1 = one_hot(d3[1], frequent1)
    # Out-of-fold target encoding of the principal 3-digit code (train only; smoothed to the prior)
    te = np.full(len(y), np.nan, dtype=np.float32)
    prior, m = y[tr].mean(), 50.0
    tr_idx = np.flatnonzero(tr)
    fold = np.random.default_rng(1).permutation(len(tr_idx)) % 5

    def enc(fit_idx, apply_idx):
        s = (
            pd.DataFrame({"c": d3[1].iloc[fit_idx].to_numpy(), "y": y[fit_idx]})
            .groupby("c")["y"]
            .agg(["sum", "count"])
        )
        rate = (s["sum"] + m * prior) / (s["count"] + m)
        te[apply_idx] = d3[1].iloc[apply_idx].map(rate).fillna(prior).to_numpy(dtype=np.float32)

    for k in range(5):
        enc(tr_idx[fold != k], tr_idx[fold == k])
    enc(tr_idx, np.flatnonzero(~tr))
    x_te = te[:, None]
    n_diag = pd.to_numeric(cohort["number_diagnoses"], errors="coerce").to_numpy(dtype=np.float32)[:, None]

    x_spec_full = np.hstack([x, x_spec])
    experiments = {
        "v1": lambda: (x, params()),
        "v1+specialty": lambda: (np.hstack([x, x_spec]), params()),
        "v1+disposition_ids": lambda: (np.hstack([x, x_disp]), params()),
        "v1+icd3_any(>=300)": lambda: (np.hstack([x, x_icd_any]), params()),
        "v1+icd3_principal(>=150)": lambda: (np.hstack([x, x_icd_1]), params()),
        "v1+icd3_principal_target_enc": lambda: (np.hstack([x, x_te]), params()),
        "v1+specialty+disposition_ids": lambda: (np.hstack([x, x_spec, x_disp]), params()),
        "v1+specialty+disposition+icd3_any": lambda: (np.hstack([x, x_spec, x_disp, x_icd_any]), params()),
        "v1 depth2": lambda: (x, params(max_depth=2)),
        "v1 depth4": lambda: (x, params(max_depth=4)),
        "v1 depth4 mcw50": lambda: (x, params(max_depth=4, min_child_weight=50.0)),
        "v1 colsample0.3": lambda: (x, params(colsample_bytree=0.3)),
        "v1 eta0.01": lambda: (x, params(eta=0.01)),
    }
    _ = (p1, n_diag)
    # Training on every stay of the training patients (validation/test stay first encounters).
    full = readmission_encounters(read_diabetes130(PATH))
    xa = build_readmission_features(diabetes130_to_table(full), spec)
    ya, pa = readmitted_within_30_days(full), full["patient_nbr"].to_numpy()
    sg_a = specialty_group(full["medical_specialty"])
    xa_s = np.hstack([xa, one_hot(sg_a, spec_levels), sg_a.isna().to_numpy(dtype=np.float32)[:, None]])
    all_stays = {
        "all stays": (xa, x, params()),
        "all stays depth4": (xa, x, params(max_depth=4)),
        "all stays depth5": (xa, x, params(max_depth=5)),
        "all stays depth4 mcw10": (xa, x, params(max_depth=4, min_child_weight=10.0)),
        "all stays depth4 +specialty": (xa_s, x_spec_full, params(max_depth=4)),
    }
    for name in names or [*experiments, *all_stays]:
        if name in all_stays:
            train_x, eval_x, p = all_stays[name]
            run_all_stays(name, train_x, ya, pa, eval_x, y, pat, tr_ids, va_ids, p)
            continue
        xx, p = experiments[name]()
        if name in ("v1+icd3_principal_target_enc",):
            # CV folds would re-use train-fitted encodings on held-out train rows: validation only
            a, r = fit_auc(xx[tr], y[tr], xx[va], y[va], p)
            print(
                json.dumps(
                    {
                        "name": name,
                        "n_features": int(xx.shape[1]),
                        "valid_auroc": round(a, 4),
                        "valid_rounds": r,
                        "cv_auroc": None,
                    }
                ),
                flush=True,
            )
            continue
        run(name, xx, y, tr, va, dev, p)


if __name__ == "__main__":
    main(sys.argv[1:])
