"""Benchmark: the census sweep's throughput (patients/s) for feature building, scoring and SHAP
separately and end to end, for 1k, 10k and 100k synthetic stays made from set-A rows, and how the
cost grows with the patients and with the hours per patient.

A synthetic stay is `--hours` consecutive set-A rows of a randomly drawn set-A patient (cycling
through its rows when the stay is shorter), under its own patient key; the stays are canonical
tables, as `hooks.sweep.sepsis_stays` makes them from FHIR (that mapping, and the RiskAssessments,
are timed on their own on 1k stays: `--mapped`). End to end = features + probabilities + exact
TreeSHAP + bands and top drivers, the path `cds.sweep.score_stays` runs. The device comes from
`models.choose_device` (`--device auto|cpu|cuda`); with a GPU (`--device cuda`, or `auto` when one
is present) every size runs on the CPU and on the GPU in the same run, and the ratio is printed.

    .venv/bin/python -m benchmarks.sweep [--sizes 1000,10000,100000] [--hours 48]
        [--hours-sweep 12,48,168] [--device auto] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from fhir_mappings import CANONICAL_COLUMNS, CanonicalTable
from hooks.consent import ConsentDecision
from hooks.sweep import SweepStay, sweep_rows
from models import (
    DEFAULT_DATA_DIR,
    DEFAULT_REGISTRY,
    ModelRegistry,
    RiskModel,
    choose_device,
    default_sepsis_path,
    last_rows,
    model_task,
    predict_rows,
    shap_rows,
)


def synthetic_stays(frame: pd.DataFrame, n: int, hours: int, seed: int = 2019) -> list[SweepStay]:
    """`n` stays of `hours` hours from set-A rows; the tables are views of one array."""
    rng = np.random.default_rng(seed)
    values = np.full((len(frame), len(CANONICAL_COLUMNS)), np.nan)
    for i, name in enumerate(CANONICAL_COLUMNS):
        if name in frame:
            values[:, i] = frame[name].to_numpy(dtype=float, na_value=np.nan)
    starts = np.flatnonzero(np.r_[True, frame["patient"].to_numpy()[1:] != frame["patient"].to_numpy()[:-1]])
    lengths = np.diff(np.r_[starts, len(frame)])
    drawn = rng.integers(0, len(starts), n)
    offsets = np.arange(hours)
    index = starts[drawn][:, None] + offsets[None, :] % lengths[drawn][:, None]
    big = values[index.ravel()]
    keys = np.repeat(np.array([f"p{i:07d}" for i in range(n)], dtype=object), hours)
    iculos = np.tile(np.arange(1, hours + 1, dtype=np.int32), n)
    unit = ConsentDecision()
    stays = []
    for i in range(n):
        a, b = i * hours, (i + 1) * hours
        table = CanonicalTable(keys[a:b], iculos[a:b], big[a:b])
        stays.append(SweepStay(str(keys[a]), table, hours, "icu", unit))
    return stays


def timed(model: RiskModel, stays: Sequence[SweepStay], device: str, workers: int) -> dict[str, float]:
    """Wall seconds per stage for one pass over `stays` (end to end = the stages one after the
    other), and the process's CPU seconds (all threads) under `cpu_<stage>`."""
    marks = [(time.perf_counter(), time.process_time())]
    features = last_rows([s.table for s in stays], model.spec, workers=workers)
    marks.append((time.perf_counter(), time.process_time()))
    probabilities = predict_rows(model, features, device=device)
    marks.append((time.perf_counter(), time.process_time()))
    contributions = shap_rows(model, features)
    marks.append((time.perf_counter(), time.process_time()))
    sweep_rows(model, stays, features, probabilities, contributions)
    marks.append((time.perf_counter(), time.process_time()))
    out: dict[str, float] = {}
    for i, stage in enumerate(("features", "score", "shap", "rank")):
        out[stage] = marks[i + 1][0] - marks[i][0]
        out[f"cpu_{stage}"] = marks[i + 1][1] - marks[i][1]
    out["end_to_end"] = marks[-1][0] - marks[0][0]
    out["cpu_end_to_end"] = marks[-1][1] - marks[0][1]
    return out


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f}" if seconds > 0 else f"{'inf':>10}"


_STAGES = ("features", "score", "shap", "end_to_end")


def _row(label: str, n: int, hours: int, s: dict[str, float]) -> str:
    return (
        f"{label:<5} {n:>8,} {hours:>5} "
        + " ".join(_rate(n, s[k]) for k in _STAGES)
        + f" {s['end_to_end']:>8.2f} |"
        + " ".join(_rate(n, s[f"cpu_{k}"]) for k in _STAGES)
    )


HEADER = (
    f"{'':<20} {'stays per wall second':^43} {'':>8} | {'stays per CPU second (all threads)':^43}\n"
    f"{'dev':<5} {'stays':>8} {'hours':>5} "
    + " ".join(f"{k:>10}" for k in ("features", "score", "shap", "e2e"))
    + f" {'e2e s':>8} |"
    + " ".join(f"{k:>10}" for k in ("features", "score", "shap", "e2e"))
)


def mapped_figures(model: RiskModel, frame: pd.DataFrame, n: int) -> None:
    """FHIR -> canonical table (the hook's mapping) and RiskAssessment building, on `n` stays."""
    from demo_ehr import icu_start_for_hour, stay_to_fhir
    from fhir_mappings import GENERIC, Pseudonymizer
    from hooks.sweep import census_patients, sepsis_stays, sweep_risk_assessment

    now = datetime.now(UTC)
    resources: list[dict] = []
    for _, rows in list(frame.groupby("patient", sort=False))[:n]:
        hours = int(rows["ICULOS"].max())
        stay = stay_to_fhir(rows, icu_start=icu_start_for_hour(now, hours), up_to_hour=hours)
        resources += stay.all()
    t0, c0 = time.perf_counter(), time.process_time()
    patients, locations = census_patients(resources)
    stays, skipped = sepsis_stays(
        patients,
        locations,
        now=now,
        pseudonymizer=Pseudonymizer(b"benchmark-key-0123456789"),
        source="bench",
        profile=GENERIC,
    )
    t1, c1 = time.perf_counter(), time.process_time()
    rows = sweep_rows(model, stays, *_scored(model, stays))
    t2, c2 = time.perf_counter(), time.process_time()
    for r in rows:
        sweep_risk_assessment(model, r, now=now)
    t3, c3 = time.perf_counter(), time.process_time()
    print(
        f"\nFHIR mapping (census_patients + sepsis_stays): {len(resources):,} resources of {len(patients):,} "
        f"stays -> {len(stays):,} tables in {t1 - t0:.2f} s = {len(patients) / (t1 - t0):,.0f} stays/s "
        f"({len(patients) / (c1 - c0):,.0f} per CPU second; not scored: {dict(skipped)})"
    )
    rate, cpu_rate = len(rows) / (t3 - t2), len(rows) / (c3 - c2)
    print(
        f"RiskAssessments built (validated R4): {len(rows):,} in {t3 - t2:.2f} s = {rate:,.0f}/s "
        f"({cpu_rate:,.0f} per CPU second)"
    )


def _scored(model: RiskModel, stays: Sequence[SweepStay]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = last_rows([s.table for s in stays], model.spec)
    return features, predict_rows(model, features), shap_rows(model, features)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--hours", type=int, default=48, help="hours per stay for the size runs")
    parser.add_argument("--hours-sweep", default="12,48,168", help="hours per stay at --hours-stays stays")
    parser.add_argument("--hours-stays", type=int, default=10_000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="XGBoost threads (0: all cores)")
    parser.add_argument("--feature-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--mapped", type=int, default=1000, help="stays for the FHIR mapping figures (0: skip)"
    )
    parser.add_argument("--data", default=str(default_sepsis_path(DEFAULT_DATA_DIR)))
    args = parser.parse_args(argv)

    frame = pd.read_parquet(args.data)
    chosen = choose_device(args.device)
    devices = ["cpu", "cuda"] if chosen == "cuda" else ["cpu"]
    spec = model_task("sepsis").feature_spec()
    registry = ModelRegistry(os.environ.get("CDS_MODEL_DIR", str(DEFAULT_REGISTRY)))
    models = {
        d: RiskModel(registry.load("sepsis", spec), spec, device=d, nthread=args.threads) for d in devices
    }
    model = models["cpu"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at start; XGBoost threads "
        f"{args.threads or 'all'}; devices {devices} (choose_device({args.device!r}) = {chosen!r}); "
        f"model sepsis {model.version}, {len(spec)} features, {model.booster.num_boosted_rounds()} trees"
    )
    warm = synthetic_stays(frame, 256, args.hours, seed=1)
    for d, m in models.items():
        timed(m, warm, d, args.feature_workers)  # load the booster, warm caches and the GPU context

    print(f"\nby patients ({args.hours} h per stay)\n{HEADER}")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for n in (int(x) for x in args.sizes.split(",") if x):
        stays = synthetic_stays(frame, n, args.hours)
        for d, m in models.items():
            results[(d, n)] = s = timed(m, stays, d, args.feature_workers)
            print(_row(d, n, args.hours, s), flush=True)
        del stays
    if len(devices) == 2:
        print("\nCPU/GPU time ratio (how many times faster on the GPU)")
        for (d, n), s in results.items():
            if d == "cuda":
                cpu = results[("cpu", n)]
                ratios = ", ".join(f"{k} {cpu[k] / s[k]:.1f}x" for k in _STAGES if s[k] > 0)
                both = (cpu["score"] + cpu["shap"]) / (s["score"] + s["shap"])
                print(f"  {n:>8,} stays: {ratios}; score + SHAP {both:.1f}x")

    print(f"\nby hours per stay ({args.hours_stays:,} stays)\n{HEADER}")
    for hours in (int(x) for x in args.hours_sweep.split(",") if x):
        stays = synthetic_stays(frame, args.hours_stays, hours)
        for d, m in models.items():
            print(_row(d, args.hours_stays, hours, timed(m, stays, d, args.feature_workers)), flush=True)
        del stays
    if args.mapped:
        mapped_figures(model, frame, args.mapped)
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
