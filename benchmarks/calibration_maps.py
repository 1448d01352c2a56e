"""Isotonic against Platt recalibration on the simulated second site (benchmarks/site_adaptation.py):
both maps fitted on the site's fit half, judged on its held-out half (calibration slope and
intercept, utility at the fit half's utility-maximising threshold). Why `cds site recalibrate`
uses a Platt map below 200 septic fit patients (models/calibration.py `fit_small_sample_map`).

    python -m benchmarks.calibration_maps [--data setA.parquet]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.site_adaptation import sparse_charting
from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel, default_sepsis_path, read_physionet, utility_table
from models.calibration import calibration_intercept_slope, fit_isotonic, fit_platt
from models.sepsis import best_threshold, development_split
from models.site import load_site, site_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_sepsis_path())
    parser.add_argument("--seed", type=int, default=2019, help="the site's split seed")
    args = parser.parse_args()
    spec = sepsis_feature_spec()
    model = RiskModel(ModelRegistry().load("sepsis", spec), spec)
    frame = read_physionet(args.data)
    ids = development_split(frame["patient"].to_numpy(), model.manifest.seed)[1]
    out: dict[str, object] = {}
    for shift in ("sparse-charting", "none"):
        site_frame = frame[frame["patient"].isin(ids)].reset_index(drop=True)
        d = load_site(sparse_charting(site_frame) if shift != "none" else site_frame, spec).data
        assert d.label is not None
        split = site_split(d.patient, args.seed)
        fit, hold = np.isin(d.patient, split.fit), np.isin(d.patient, split.holdout)
        raw = 1.0 / (1.0 + np.exp(-model.margin(d.features)))
        row: dict[str, object] = {"septic_fit_patients": len(np.unique(d.patient[fit][d.label[fit] == 1]))}
        for name, fit_map in (("isotonic", fit_isotonic), ("platt", fit_platt)):
            cal = fit_map(raw[fit], d.label[fit])
            p = np.interp(raw, cal.x, cal.y)
            threshold, _ = best_threshold(p[fit], d.label[fit], d.patient[fit])
            intercept, slope = calibration_intercept_slope(d.label[hold], p[hold])
            utility = utility_table(d.label[hold], d.patient[hold]).normalized(p[hold] >= threshold)
            row[name] = {
                "slope": round(slope, 3),
                "intercept": round(intercept, 3),
                "utility": round(utility, 4),
            }
        out[shift] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
