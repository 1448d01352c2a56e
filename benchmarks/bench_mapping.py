#!/usr/bin/env python
"""Benchmark: mapping a 72-hour prefetch (~700 Observations) to features, on one core.

Prints p50/p99 of FHIR -> canonical table (`to_canonical`), canonical table -> features
(`build_features`), their sum, and, for comparison, of full `fhir.resources` validation of the same
Observations (which is why validation is kept off the hot path; see fhir_mappings/validation.py).
Usage:
    .venv/bin/python -m benchmarks.bench_mapping [--calls 500] [--validation-calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.bench_hook import HOURS, percentiles, stay_frame
from demo_ehr import icu_start_for_hour, stay_to_fhir
from fhir_mappings import (
    PatientRecord,
    Pseudonymizer,
    build_features,
    sepsis_feature_spec,
    to_canonical,
    validate_resources,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--validation-calls", type=int, default=20)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CDS_DATA_DIR", ROOT.parent / "shared" / "data"))
    )
    args = parser.parse_args()

    frame, source = stay_frame(args.data_dir)
    now = datetime.now(UTC)
    stay = stay_to_fhir(frame, icu_start=icu_start_for_hour(now, HOURS), up_to_hour=HOURS)
    # As the hook sees them: fresh dicts parsed from JSON.
    observations = json.loads(json.dumps(stay.observations))
    record = PatientRecord(stay.patient_id, stay.patient, stay.encounter, observations, {})
    spec = sepsis_feature_spec()
    pseudo = Pseudonymizer(b"bench-key-0123456789abcdef")

    mapping, features, total = [], [], []
    for i in range(args.calls + 50):
        t0 = time.perf_counter()
        mapped = to_canonical(record, as_of=now, pseudonymizer=pseudo)
        t1 = time.perf_counter()
        build_features(mapped.table, spec)[-1:]
        t2 = time.perf_counter()
        if i >= 50:
            mapping.append(t1 - t0)
            features.append(t2 - t1)
            total.append(t2 - t0)

    validation = []
    for _ in range(args.validation_calls):
        t0 = time.perf_counter()
        validate_resources(observations)
        validation.append(time.perf_counter() - t0)

    print(
        json.dumps(
            {
                "stay": source,
                "hours": HOURS,
                "observations": len(observations),
                "measurements": mapped.report.measurements,
                "fhir_to_canonical": percentiles(mapping, digits=3),
                "canonical_to_features": percentiles(features, digits=3),
                "mapping_plus_features": percentiles(total, digits=3),
                "full_validation_fhir_resources": percentiles(validation, digits=3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
