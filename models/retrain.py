"""Retraining a live site from what it served: the RiskAssessments we recorded (their de-identified
feature values), the clinicians' feedback Provenances and the outcomes, joined by pseudonym.

Each RiskAssessment becomes one row: its recorded feature values (the whole scored row, which
RiskAssessments record since the `feature-values` extension; older ones give only the values
their contributions carry, every other feature missing), the probability that was served, the
model version, and the feedback joined as columns (`feedback`, `overridden`, `reason`). The label
follows PhysioNet 2019: 1 when the card was issued at or after the Sepsis-3 onset minus 6 hours.
Overrides are reported by reason, ICU unit and model version; they are used as training weights
only when patient-grouped CV inside the served patients says that helps. Pure functions over
parsed resources; reading files is the caller's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import recorded_feature_values

from .calibration import fit_small_sample_map
from .manifest import Calibration, ModelManifest
from .metrics import bootstrap_by_group
from .physionet2019 import challenge_auc
from .registration import register_version
from .registry import ModelRegistry
from .score import RiskModel
from .train import patient_split, train_booster

__all__ = [
    "OVERRIDE_WEIGHTS",
    "RetrainResult",
    "override_report",
    "register_retrained",
    "retrain_from_served",
    "served_table",
]

EXT = "http://cds-ml.org/fhir/StructureDefinition"
OVERRIDE_WEIGHTS = (1.0, 2.0)  # weight of overridden cards' rows tried (1.0: feedback not used)
HORIZON_HOURS = 6.0


def _ext(resource: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    return [e for e in resource.get("extension", ()) if e.get("url") == f"{EXT}/{name}"]


def _unit(values: Mapping[str, float]) -> str:
    if values.get("Unit1") == 1:
        return "MICU"
    if values.get("Unit2") == 1:
        return "SICU"
    return "unrecorded"


def served_table(
    risk_assessments: Iterable[Mapping[str, Any]],
    provenances: Iterable[Mapping[str, Any]],
    outcomes: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    model_name: str = "sepsis",
    horizon_hours: float = HORIZON_HOURS,
    feature_spec_hash: str | None = None,
) -> pd.DataFrame:
    """One row per RiskAssessment of `model_name`, in (pseudonym, time) order. `outcomes`: columns
    `pseudonym` and `onset` (Sepsis-3 onset time, NaT when the stay had no sepsis); patients not in
    it get label NaN (outcome unknown). The features: the whole scored row where the RiskAssessment
    recorded it with `feature_spec_hash` (`all_features` True), else the values its contributions
    carry (the largest ones and the drivers' context), every other feature missing."""
    feedback: dict[str, tuple[str, str | None]] = {}
    for p in provenances:
        activity = (p.get("activity", {}).get("coding") or [{}])[0].get("code")
        reason = None
        for r in p.get("reason", ()):
            for c in r.get("coding", ()):
                reason = c.get("code")
        for t in p.get("target", ()):
            ref = t.get("reference", "")
            if ref.startswith("RiskAssessment/") and activity:
                feedback[ref.split("/", 1)[1]] = (str(activity), reason)
    index = {name: j for j, name in enumerate(feature_names)}
    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    for ra in risk_assessments:
        method = (ra.get("method", {}).get("coding") or [{}])[0]
        if method.get("code") != model_name:
            continue
        x = np.full(len(index), np.nan, dtype=np.float32)
        values: dict[str, float] = {}
        for c in _ext(ra, "shap-contribution"):
            parts = {e["url"]: e for e in c.get("extension", ())}
            name = parts.get("feature", {}).get("valueString")
            if name in index and "value" in parts:
                values[name] = float(parts["value"]["valueDecimal"])
                x[index[name]] = values[name]
        for context in _ext(ra, "shap-context"):
            for name, _, value in json.loads(context.get("valueString") or "[]"):
                if name in index and value is not None:
                    values[name] = float(value)
                    x[index[name]] = values[name]
        whole = recorded_feature_values(ra, feature_spec_hash) if feature_spec_hash else None
        if whole is not None and len(whole) == len(index):
            x = whole
            values.update({name: float(whole[j]) for name, j in index.items() if name.startswith("Unit")})
        hour = _ext(ra, "icu-hour")
        fb = feedback.get(str(ra.get("id")))
        rows.append(
            {
                "card": ra.get("id"),
                "pseudonym": ra["subject"]["identifier"]["value"],
                "occurrence": pd.Timestamp(ra["occurrenceDateTime"]),
                "icu_hour": hour[0]["valueInteger"] if hour else None,
                "model_version": method.get("version"),
                "probability": float(ra["prediction"][0]["probabilityDecimal"]),
                "feedback": fb[0] if fb else None,
                "overridden": bool(fb and fb[0] == "overridden"),
                "reason": fb[1] if fb else None,
                "unit": _unit(values),
                "all_features": whole is not None and len(whole) == len(index),
            }
        )
        vectors.append(x)
    table = pd.DataFrame(rows)
    features = pd.DataFrame(
        np.vstack(vectors) if vectors else np.zeros((0, len(index)), np.float32), columns=list(feature_names)
    )
    table = pd.concat([table, features], axis=1)
    if table.empty:
        return table.assign(label=pd.Series(dtype=np.float64))
    onset = outcomes.set_index("pseudonym")["onset"]
    known = table["pseudonym"].isin(onset.index)
    their_onset = pd.to_datetime(table["pseudonym"].map(onset), utc=True)
    occurred = pd.to_datetime(table["occurrence"], utc=True)
    septic_now = (occurred >= their_onset - pd.Timedelta(hours=horizon_hours)).to_numpy()
    table["label"] = np.where(known, septic_now.astype(np.float64), np.nan)
    return table.sort_values(["pseudonym", "occurrence"], kind="stable").reset_index(drop=True)


def override_report(table: pd.DataFrame) -> dict[str, Any]:
    """Feedback counts and override rates by reason, ICU unit and model version; `septic_later`:
    overridden cards whose patient met the label (the override was wrong by the outcome)."""
    with_feedback = table[table["feedback"].notna()]
    over = with_feedback[with_feedback["overridden"]]

    def by(column: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, group in with_feedback.groupby(with_feedback[column].fillna("none").astype(str)):
            o = group[group["overridden"]]
            out[str(key)] = {
                "feedback": len(group),
                "overridden": len(o),
                "override_rate": round(len(o) / len(group), 4) if len(group) else None,
                "septic_later": int((o["label"] == 1).sum()),
            }
        return out

    return {
        "cards": len(table),
        "with_feedback": len(with_feedback),
        "overridden": len(over),
        "with_outcome": int(table["label"].notna().sum()),
        "by_reason": {
            str(k): {"overridden": len(g), "septic_later": int((g["label"] == 1).sum())}
            for k, g in over.groupby(over["reason"].fillna("none").astype(str))
        },
        "by_unit": by("unit"),
        "by_model_version": by("model_version"),
    }


@dataclass(frozen=True)
class RetrainResult:
    model_bytes: bytes
    params: dict[str, Any]
    num_boost_round: int
    device: str
    calibration: Calibration
    threshold: float
    selection: dict[str, Any]
    comparison: dict[str, Any]
    seed: int
    fit_patients: np.ndarray
    holdout_patients: np.ndarray
    rows: int
    data_sha256: str
    overrides: dict[str, Any]


def _table_fingerprint(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c != "occurrence"]
    h = hashlib.sha256(json.dumps(cols).encode())
    h.update(pd.util.hash_pandas_object(table[cols], index=False).to_numpy().tobytes())
    return h.hexdigest()


def retrain_from_served(
    model: RiskModel,
    table: pd.DataFrame,
    *,
    seed: int = 2019,
    rounds: Sequence[int] = (25, 50, 100),
    override_weights: Sequence[float] = OVERRIDE_WEIGHTS,
    folds: int = 3,
    holdout_fraction: float = 0.5,
    replicates: int = 200,
    device: str | None = None,
) -> RetrainResult:
    """Continue boosting the served model on the served rows with outcomes. Rounds and the weight
    of overridden cards are chosen by patient-grouped CV (hour AUROC) inside the fit patients; the
    weight stays 1 unless a larger one scores higher. Judged on held-out patients against what was
    served and against the base re-scored on the recorded features. The threshold keeps the live
    alert rate (the fraction of served cards at or above the base threshold): served cards are not
    every ICU hour, so the hourly utility is not defined on them."""
    data = table[table["label"].notna()].reset_index(drop=True)
    names = list(model.spec.names)
    x = data[names].to_numpy(dtype=np.float32)
    y = data["label"].to_numpy(dtype=np.int8)
    codes, pid = np.unique(data["pseudonym"].to_numpy(), return_inverse=True)
    fit_ids, hold_ids = patient_split(pid, (1 - holdout_fraction, holdout_fraction), seed)
    fit, hold = np.isin(pid, fit_ids), np.isin(pid, hold_ids)
    overridden = data["overridden"].to_numpy(dtype=bool)
    params = {k: v for k, v in model.manifest.params.items() if k != "device"}
    base_rounds = model.booster.num_boosted_rounds()
    xf, yf, pf, of = x[fit], y[fit], pid[fit], overridden[fit]
    oof: dict[tuple[float, int], np.ndarray] = {
        (w, r): np.full(len(yf), np.nan) for w in override_weights for r in rounds
    }
    trained_device = "cpu"
    for i, ids in enumerate(patient_split(pf, (1.0,) * folds, seed + 1)):
        held = np.isin(pf, ids)
        for w in override_weights:
            trained = train_booster(
                xf[~held],
                yf[~held],
                params={**params, "seed": seed + i},
                num_boost_round=max(rounds),
                weight=np.where(of[~held], w, 1.0),
                xgb_model=model.booster,
                device=device,
                progress=False,
            )
            trained_device = trained.device
            for r in rounds:
                oof[(w, r)][held] = trained.booster.inplace_predict(
                    xf[held], iteration_range=(0, base_rounds + r), missing=np.nan
                )
    scores = {k: round(challenge_auc(yf, v)[0], 4) for k, v in oof.items()}
    best_unweighted = max((k for k in scores if k[0] == 1.0), key=lambda k: scores[k], default=None)
    chosen = max(scores, key=lambda k: (scores[k], -k[0]))
    if best_unweighted is not None and scores[chosen] <= scores[best_unweighted]:
        chosen = best_unweighted
    weight, extra = chosen
    final = train_booster(
        xf,
        yf,
        params={**params, "seed": seed},
        num_boost_round=extra,
        weight=np.where(of, weight, 1.0),
        xgb_model=model.booster,
        device=device,
        progress=False,
    )
    calibration, _ = fit_small_sample_map(oof[chosen], yf, pf)
    served_p = data["probability"].to_numpy(dtype=np.float64)
    live_rate = float(np.mean(served_p[fit] >= model.threshold))
    cal_oof = np.interp(oof[chosen], calibration.x, calibration.y)
    threshold = float(np.quantile(cal_oof, 1 - live_rate)) if 0 < live_rate < 1 else model.threshold
    raw_hold = np.asarray(final.booster.inplace_predict(x[hold], missing=np.nan), dtype=np.float64)
    candidates = {
        "served": served_p[hold],
        "base_on_recorded_features": model.predict(x[hold]),
        "retrained": np.interp(raw_hold, calibration.x, calibration.y),
    }
    yh, ph = y[hold], pid[hold]
    comparison: dict[str, Any] = {"patients": len(hold_ids), "rows": int(hold.sum()), "models": {}}
    for k, p in candidates.items():

        def stat(rows: np.ndarray, p: np.ndarray = p) -> float:
            yy = yh[rows]
            return challenge_auc(yy, p[rows])[0] if 0 < yy.sum() < len(yy) else float("nan")

        comparison["models"][k] = {
            "auroc": bootstrap_by_group(stat, ph, replicates=replicates, seed=seed).as_dict(),
            "auprc": round(challenge_auc(yh, p)[1], 4) if 0 < yh.sum() < len(yh) else None,
        }
    selection = {
        "folds": folds,
        "out_of_fold_auroc": {f"weight={w:g},rounds={r}": s for (w, r), s in scores.items()},
        "chosen": {"override_weight": weight, "extra_rounds": extra},
        "feedback_used_as_weights": weight != 1.0,
    }
    return RetrainResult(
        final.model_bytes(),
        {k: v for k, v in final.params.items() if k != "device"},
        final.num_boost_round,
        trained_device,
        calibration,
        threshold,
        selection,
        comparison,
        seed,
        codes[fit_ids],
        codes[hold_ids],
        int(len(data)),
        _table_fingerprint(data),
        override_report(table),
    )


def _ids_sha(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def register_retrained(
    registry: ModelRegistry, model: RiskModel, result: RetrainResult, *, data_label: str
) -> ModelManifest:
    """A candidate version (never activated here) with its lineage."""
    base = model.manifest
    lineage = {
        "kind": "retrained-from-served",
        "parent_version": base.version,
        "parent_model_sha256": base.model_sha256,
        "served_rows_with_outcome": result.rows,
        "site_split_seed": result.seed,
        "fit_patients": len(result.fit_patients),
        "holdout_patients": len(result.holdout_patients),
        "fit_patients_sha256": _ids_sha(result.fit_patients),
        "holdout_patients_sha256": _ids_sha(result.holdout_patients),
        "selection": result.selection,
        "status": "candidate",
    }
    t = result.threshold
    manifest, _ = register_version(
        registry,
        name=base.name,
        title=base.title + " - retrained from served records",
        outcome=base.outcome,
        horizon_hours=base.horizon_hours,
        spec=model.spec,
        model_bytes=result.model_bytes,
        data_path=data_label,
        data_label=data_label,
        data_sha256=result.data_sha256,
        rows=result.rows,
        patients=len(result.fit_patients) + len(result.holdout_patients),
        split=f"served patients {len(result.fit_patients)} fit / {len(result.holdout_patients)} held-out, "
        f"seed {result.seed}",
        params=result.params,
        num_boost_round=result.num_boost_round,
        threshold=t,
        risk_bands={"low": 0.0, "moderate": t / 2, "high": t},
        calibration=result.calibration,
        metrics={"served_holdout": result.comparison, "overrides": result.overrides},
        device=result.device,
        seed=result.seed,
        activate=False,
        parent_version=base.version,
        created_by="cds site retrain",
        lineage=lineage,
    )
    return manifest
