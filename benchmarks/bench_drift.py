#!/usr/bin/env python
"""Benchmark: what one drift observation (cds/drift.py `DriftMonitor.observe`, on the hook's
path) and one metrics update cost, against the committed sepsis model's 252 features; and one
flush of a worker's tallies to the SQLite store. Prints microseconds (p50/p99). Usage:
    .venv/bin/python -m benchmarks.bench_drift [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cds.drift import DriftMonitor, SqliteDriftBackend
from cds.metrics import Metrics
from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel


def _quantiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {1e6 * q[49]:.1f} us, p99 {1e6 * q[98]:.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    spec = sepsis_feature_spec()
    model = RiskModel(ModelRegistry().load("sepsis", spec), spec)
    assert model.manifest.reference is not None
    rng = np.random.default_rng(0)
    rows = rng.normal(50, 30, size=(256, len(spec.names))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.4] = np.nan
    report = {"observations": 700, "unmapped_codes": {"http://loinc.org|0000-0": 2}, "unit_errors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        monitor = DriftMonitor({"sepsis": model}, SqliteDriftBackend(Path(tmp) / "drift.sqlite3"))
        metrics = Metrics(issuers=["https://ehr.example.org"])
        observe, count = [], []
        for i in range(args.calls):
            row = rows[i % len(rows)]
            started = time.perf_counter()
            monitor.observe(model, "https://ehr.example.org", row, 0.02, report)
            observe.append(time.perf_counter() - started)
            started = time.perf_counter()
            metrics.hook("sepsis-risk", "card", 0.02)
            metrics.fhir_request("https://ehr.example.org", "ok")
            count.append(time.perf_counter() - started)
        started = time.perf_counter()
        asyncio.run(monitor.flush())
        flushed = time.perf_counter() - started
    print(f"drift observe (252 features, one call): {_quantiles(observe)}")
    print(f"metrics per hook call (hook + FHIR counters): {_quantiles(count)}")
    print(f"flush of {args.calls} calls' tallies to SQLite (off the hook path): {1e3 * flushed:.1f} ms")


if __name__ == "__main__":
    main()
