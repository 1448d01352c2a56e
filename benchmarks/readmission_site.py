"""A simulated second site for the 30-day readmission model inside Diabetes 130-US: base /
recalibrated / adapted side by side on the site's held-out patients, with paired patient-bootstrap
intervals (the readmission counterpart of benchmarks/site_adaptation.py).

What is simulated (and what is not): Diabetes 130-US has no hospital identifier, so the second site
is a different intake. With `--site referred` (default) the base is a readmission model trained
afresh, with the production recipe (`train_readmission`: 70/10/20 patient split, seed 2019), on the
patients whose first encounter was admitted from the emergency room (admission source 7) only; the
"site" is every other patient (physician and clinic referrals, transfers from hospitals and
nursing facilities, unknown source): a hospital whose diabetic inpatients mostly arrive planned or
transferred. No site patient is in the base's data. `--site holdout` is the control: the
registry's readmission model and its own held-out test patients (same intake, new patients). The
patients, their records and their outcomes are real; the intake split is the simulated part. The
site's patients are split in half by the site seed (grouped by patient): the fit half is the
go-live data, the other half judges all three models.

    python -m benchmarks.readmission_site [--site referred|holdout] [--replicates 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fhir_mappings import readmission_cohort, readmission_feature_spec
from models import (
    DEFAULT_DATA_DIR,
    ModelRegistry,
    RiskModel,
    default_readmission_path,
    patient_split,
    read_diabetes130,
    train_readmission,
)
from models.site import adapt_site, comparison_table
from models.site_readmission import READMISSION_CONTINUE_ROUNDS, READMISSION_SITE, load_readmission_site

EMERGENCY_ROOM = 7  # admission_source_id (IDs_mapping.csv)


def by_first_intake(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(patients whose first encounter came through the emergency room, every other patient): all of
    a patient's rows go to one side, so the cohort's first-encounter rule picks the same row there."""
    first = frame.sort_values("encounter_id", kind="stable").drop_duplicates("patient_nbr")
    er = first["admission_source_id"].to_numpy() == EMERGENCY_ROOM
    patients = first["patient_nbr"].to_numpy()
    return np.sort(patients[er]), np.sort(patients[~er])


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="diabetic_data.csv(.gz)")
    parser.add_argument("--site", choices=("referred", "holdout"), default="referred")
    parser.add_argument("--registry", type=Path, default=None, help="holdout: the registry (default: ours)")
    parser.add_argument("--rounds", default=",".join(map(str, READMISSION_CONTINUE_ROUNDS)))
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2019, help="the site's split seed")
    parser.add_argument("--out", type=Path, default=None, help="write the report JSON here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    spec = readmission_feature_spec()
    path = args.data or default_readmission_path(DEFAULT_DATA_DIR)
    frame = read_diabetes130(path)
    with tempfile.TemporaryDirectory() as tmp:
        if args.site == "referred":
            er, others = by_first_intake(frame)
            base_file = Path(tmp) / "emergency_intake.csv.gz"
            frame[frame["patient_nbr"].isin(er)].to_csv(base_file, index=False)
            registry = ModelRegistry(Path(tmp) / "registry")
            train_readmission(base_file, registry, progress=False, device="cpu")
            site_frame = frame[frame["patient_nbr"].isin(others)].reset_index(drop=True)
            what = (
                f"base trained on the {len(er)} patients first admitted from the emergency room; site: "
                f"the {len(others)} others (referrals, transfers, unknown source)"
            )
        else:
            registry = ModelRegistry(args.registry) if args.registry else ModelRegistry()
            model = RiskModel(registry.load("readmission", spec), spec)
            # The 70/10/20 split `train_readmission` made of the cohort's patients with the model's seed.
            cohort_ids = readmission_cohort(frame)["patient_nbr"].to_numpy()
            test = patient_split(cohort_ids, (0.7, 0.1, 0.2), model.manifest.seed)[2]
            site_frame = frame[frame["patient_nbr"].isin(test)].reset_index(drop=True)
            what = f"control: readmission v{model.version} and its own held-out test patients"
        model = RiskModel(registry.load("readmission", spec), spec)
        site = load_readmission_site(site_frame, spec, label=f"simulated site ({args.site})")
        base_seconds = time.perf_counter() - started
        result = adapt_site(
            model,
            site,
            seed=args.seed,
            continue_rounds=tuple(int(r) for r in args.rounds.split(",")),
            replicates=args.replicates,
            device="cpu",
            task=READMISSION_SITE,
        ).site
    seconds = time.perf_counter() - started
    comparison = result.comparison
    own = model.manifest.metrics["test"]["auroc"]
    print(
        f"simulated site ({args.site}): {what}; base readmission v{model.version} (own held-out test AUROC "
        f"{own['estimate']:.3f}, {model.booster.num_boosted_rounds()} rounds); site discharges "
        f"{len(site.data.patient)} (fit {len(result.split.fit)}, held out {comparison['patients']}); "
        f"seed {args.seed}; {args.replicates} patient-bootstrap replicates"
    )
    print(comparison_table(comparison, result.measures))
    print("selection (3-fold patient-grouped CV inside the fit half):", json.dumps(result.selection))
    print(f"wall time {seconds:.0f} s (base ready after {base_seconds:.0f} s)")
    report = {
        "site": args.site,
        "simulated": what,
        "base_version": model.version,
        "base_test_auroc": own,
        "comparison": comparison,
        "selection": result.selection,
        "seconds": round(seconds, 1),
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"readmission_site_{args.site}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
