#!/usr/bin/env python
"""Benchmark: p50/p99 of a sepsis-risk hook call with a 72-hour prefetch (~700 Observations),
and of its parts (mapping + features; model score + SHAP), on this machine.

Starts `cds serve` as a separate process on 127.0.0.1 (a free port, a temporary var dir) and
calls it sequentially over HTTP. Stops by itself. Usage:
    .venv/bin/python -m benchmarks.bench_hook [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from demo_ehr import free_port, icu_start_for_hour, patient_view_request, stay_to_fhir, wait_until_healthy
from fhir_mappings import PatientRecord, Pseudonymizer, build_features, sepsis_feature_spec, to_canonical
from models import ModelRegistry, RiskModel

ROOT = Path(__file__).resolve().parents[1]

HOURS = 72


def stay_frame(data_dir: Path) -> tuple[pd.DataFrame, str]:
    """The set-A patient with the most values in 72 hours, else a dense synthetic stay."""
    path = data_dir / "physionet2019" / "setA.parquet"
    if path.exists():
        df = pd.read_parquet(path)
        df = df[df["ICULOS"] <= HOURS]
        pid = values_per_patient(df).idxmax()
        return df[df["patient"] == pid].reset_index(drop=True), f"set A patient {pid}"
    rng = np.random.default_rng(0)
    rows = []
    for h in range(1, HOURS + 1):
        row = {
            "patient": 1,
            "ICULOS": h,
            "Age": 64.2,
            "Gender": 1,
            "Unit1": 1,
            "Unit2": 0,
            "HospAdmTime": -3.0,
        }
        for v, mu in (
            ("HR", 92),
            ("O2Sat", 96),
            ("SBP", 118),
            ("DBP", 64),
            ("MAP", 80),
            ("Resp", 20),
            ("Temp", 37.4),
        ):
            row[v] = float(rng.normal(mu, mu * 0.05))
        for v, mu in (
            ("Lactate", 2.0),
            ("WBC", 11),
            ("Creatinine", 1.1),
            ("Glucose", 130),
            ("Potassium", 4.1),
            ("Hgb", 10.5),
            ("Platelets", 210),
            ("BUN", 22),
            ("FiO2", 0.4),
        ):
            if h % 3 == 0:
                row[v] = float(rng.normal(mu, mu * 0.1))
        rows.append(row)
    return pd.DataFrame(rows), "synthetic dense stay"


def values_per_patient(df: pd.DataFrame) -> pd.Series:
    """Non-missing values per set-A patient in the first 72 ICU hours (shared with load_hook.py)."""
    df = df[df["ICULOS"] <= HOURS]
    values = df.drop(columns=["patient", "hour", "SepsisLabel"]).notna().sum(axis=1)
    return values.groupby(df["patient"]).sum()


def percentiles(
    samples: list[float], digits: int = 2, points: tuple[float, ...] = (50, 99), with_max: bool = False
) -> dict[str, float]:
    """p50/p99 (or the given percentiles, and the max) in milliseconds of durations in seconds
    (shared with bench_mapping.py and load_hook.py)."""
    ms = np.array(samples) * 1000
    found = {f"p{p:g}_ms": round(float(np.percentile(ms, p)), digits) for p in points}
    if with_max:
        found["max_ms"] = round(float(ms.max()), digits)
    return {**found, "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CDS_DATA_DIR", ROOT.parent / "shared" / "data"))
    )
    args = parser.parse_args()

    frame, source = stay_frame(args.data_dir)
    now = datetime.now(UTC)
    stay = stay_to_fhir(frame, icu_start=icu_start_for_hour(now, HOURS), up_to_hour=HOURS)
    body = patient_view_request(stay)
    n_obs = len(stay.observations)

    # Parts, in this process.
    spec = sepsis_feature_spec()
    model = RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)
    pseudo = Pseudonymizer(b"bench-key-0123456789abcdef")
    record = PatientRecord(stay.patient_id, stay.patient, stay.encounter, stay.observations, {})
    mapping, scoring = [], []
    for i in range(args.calls + 20):
        t0 = time.perf_counter()
        mapped = to_canonical(record, as_of=datetime.now(UTC), pseudonymizer=pseudo)
        row = build_features(mapped.table, spec)[-1:]
        t1 = time.perf_counter()
        model.predict(row)
        model.explain(row[0])
        t2 = time.perf_counter()
        if i >= 20:
            mapping.append(t1 - t0)
            scoring.append(t2 - t1)

    # The whole hook call over HTTP against a separate server process.
    port = free_port()
    with tempfile.TemporaryDirectory() as var:
        env = {
            **os.environ,
            "CDS_VAR_DIR": var,
            "CDS_PORT": str(port),
            "CDS_PSEUDONYM_KEY": "bench-key-0123456789abcdef",
            "CDS_LOG_LEVEL": "WARNING",
            "CDS_AUTH_DISABLED_FOR_LOCAL_DEMO": "true",
        }  # auth cost: benchmarks/bench_auth.py
        server = subprocess.Popen(
            [sys.executable, "-m", "cds.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url)
            calls = []
            with httpx.Client(base_url=url, timeout=10) as client:
                payload = json.dumps(body).encode()
                headers = {"content-type": "application/json"}
                for i in range(args.calls + 20):
                    t0 = time.perf_counter()
                    response = client.post("/cds-services/sepsis-risk", content=payload, headers=headers)
                    elapsed = time.perf_counter() - t0
                    assert response.status_code == 200 and response.json()["cards"], response.text
                    if i >= 20:
                        calls.append(elapsed)
        finally:
            server.terminate()
            server.wait(timeout=10)

    result = {
        "stay": source,
        "hours": HOURS,
        "observations": n_obs,
        "request_bytes": len(payload),
        "hook_call_http": percentiles(calls),
        "mapping_and_features": percentiles(mapping),
        "score_and_shap": percentiles(scoring),
        "mean_hook_ms": round(1000 * statistics.mean(calls), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
