"""A simulated second site inside PhysioNet 2019 set A: base / recalibrated / adapted side by side
on the site's held-out patients, with patient-bootstrap intervals.

What is simulated (and what is not): the base is the registry's sepsis model, trained on set A's
development patients (80 %, seed 2019). The "site" is the base's own held-out test patients, which
it never saw in training, calibration or threshold choice; by default (`--shift sparse-charting`)
their records are changed to look like a hospital that charts differently: vital signs only every
second ICU hour (temperature every fourth), and three rarely drawn labs (direct bilirubin, troponin
I, fibrinogen) never reported. The patients, their physiology and their labels are real; the
charting pattern is the simulated part. `--shift none` is the control (same hospital, new
patients). The site's patients are split in half by the site seed: the fit half is the go-live
export, the other half judges all three models.

    python -m benchmarks.site_adaptation [--shift sparse-charting|none] [--base-patients 4000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel, default_sepsis_path, development_split, read_physionet
from models.site import adapt_site, base_development_data, comparison_table, load_site

VITALS = ("HR", "O2Sat", "SBP", "MAP", "DBP", "Resp")
NEVER_REPORTED = ("Bilirubin_direct", "TroponinI", "Fibrinogen")


def sparse_charting(frame: pd.DataFrame) -> pd.DataFrame:
    """Vitals on even ICU hours only, temperature every fourth hour, three labs never reported."""
    out = frame.copy()
    hour = out["hour"].to_numpy()
    out.loc[hour % 2 == 1, list(VITALS)] = np.nan
    out.loc[hour % 4 != 0, "Temp"] = np.nan
    out[list(NEVER_REPORTED)] = np.nan
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_sepsis_path())
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--version", default=None, help="base version (default: the active one)")
    parser.add_argument("--shift", choices=("sparse-charting", "none"), default="sparse-charting")
    parser.add_argument("--site-patients", type=int, default=None, help="a random subset of the site")
    parser.add_argument("--base-patients", type=int, default=4000, help="base patients in `pooled`")
    parser.add_argument("--rounds", default="25,50,100,150", help="extra rounds tried by `continue`")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2019, help="the site's split seed")
    parser.add_argument("--out", type=Path, default=None, help="write comparison.json here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    spec = sepsis_feature_spec()
    registry = ModelRegistry(args.registry) if args.registry else ModelRegistry()
    model = RiskModel(registry.load("sepsis", spec, args.version), spec)
    frame = read_physionet(args.data)
    site_ids = development_split(frame["patient"].to_numpy(), model.manifest.seed)[1]
    if args.site_patients is not None:
        rng = np.random.default_rng(args.seed)
        site_ids = np.sort(rng.choice(site_ids, min(args.site_patients, len(site_ids)), replace=False))
    site_frame = frame[frame["patient"].isin(site_ids)].reset_index(drop=True)
    if args.shift == "sparse-charting":
        site_frame = sparse_charting(site_frame)
    site = load_site(site_frame, spec, label=f"simulated site ({args.shift}): base's held-out test patients")
    base = base_development_data(model, args.data, spec, patients=args.base_patients, seed=args.seed)
    del frame
    result = adapt_site(
        model,
        site,
        seed=args.seed,
        base_data=base,
        continue_rounds=tuple(int(r) for r in args.rounds.split(",")),
        replicates=args.replicates,
    )
    seconds = time.perf_counter() - started
    comparison = result.site.comparison
    print(
        f"simulated site: shift={args.shift}; base sepsis v{model.version}; site patients {len(site_ids)} "
        f"(fit {len(result.site.split.fit)}, held out {comparison['patients']}, {comparison['rows']} hours); "
        f"pooled arm with {args.base_patients} base development patients; seed {args.seed}"
    )
    print(comparison_table(comparison))
    print("selection (3-fold patient-grouped CV inside the fit half):", json.dumps(result.site.selection))
    print(f"wall time {seconds:.0f} s")
    report = {
        "shift": args.shift,
        "base_version": model.version,
        "comparison": comparison,
        "selection": result.site.selection,
        "seconds": round(seconds, 1),
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"site_adaptation_{args.shift}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
