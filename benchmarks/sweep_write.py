"""Benchmark: the census sweep's write stage (`cds.sweep.record_assessments`): N swept patients'
RiskAssessments, each with its `card-scored` audit entry, into the SQLite store (a temporary file,
WAL, synchronous=FULL) and into PostgreSQL (a scratch database on CDS_TEST_POSTGRES_URL's
server, default postgresql://postgres@127.0.0.1:5432/postgres, dropped afterwards).

The RiskAssessments are real sweep output: `--distinct` synthetic set-A stays (benchmarks.sweep)
scored and explained, their RiskAssessments cycled under fresh ids up to N. Prints records/s per
store and the wall seconds. Usage:
    .venv/bin/python -m benchmarks.sweep_write [--records 2000] [--stores sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from cds.stores import PostgresStore, RecordStore, SQLiteStore
from cds.sweep import Assessed, record_assessments, score_stays
from hooks.sweep import sweep_risk_assessment
from models import (
    DEFAULT_DATA_DIR,
    DEFAULT_REGISTRY,
    ModelRegistry,
    RiskModel,
    default_sepsis_path,
    model_task,
)

from .sweep import synthetic_stays

POSTGRES_ADMIN_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def assessments(model: RiskModel, frame: pd.DataFrame, n: int, distinct: int) -> list[Assessed]:
    stays = synthetic_stays(frame, min(n, distinct), 48)
    rows = score_stays(model, stays, "cpu", {})
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        assessment_id, risk, digest = sweep_risk_assessment(
            model, row, now=now, assessment_id=str(uuid.uuid4())
        )
        out.append(Assessed(assessment_id, risk, digest, row.probability, row.band, row.stay.consent))
    return out


async def _timed(store: RecordStore, records: Sequence[Assessed], model: RiskModel) -> tuple[float, int]:
    try:
        t = time.perf_counter()
        written = await record_assessments(store, records, model, "sepsis-risk")
        return time.perf_counter() - t, written
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=200, help="stays scored (their RAs cycled)")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--data", default=str(default_sepsis_path(DEFAULT_DATA_DIR)))
    args = parser.parse_args(argv)
    spec = model_task("sepsis").feature_spec()
    model = RiskModel(ModelRegistry(str(DEFAULT_REGISTRY)).load("sepsis", spec), spec, nthread=0)
    records = assessments(model, pd.read_parquet(args.data), args.records, args.distinct)
    kb = sum(len(json.dumps(a.risk_assessment)) for a in records) / len(records) / 1000
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load}; {len(records):,} RiskAssessments of ~{kb:.1f} kB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in (s for s in args.stores.split(",") if s):
            if name == "sqlite":
                seconds, written = asyncio.run(_timed_sqlite(Path(tmp) / "cds.sqlite3", records, model))
            else:
                from testkit.private_postgres import scratch_database

                with scratch_database(POSTGRES_ADMIN_URL) as url:
                    seconds, written = asyncio.run(
                        _timed_postgres(url, Path(tmp) / "spool.sqlite3", records, model)
                    )
            print(
                f"{name:<9} {written:>7,} written in {seconds:7.2f} s = {written / seconds:>8,.0f} records/s"
            )
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


async def _timed_sqlite(path: Path, records: Sequence[Assessed], model: RiskModel) -> tuple[float, int]:
    return await _timed(SQLiteStore(path), records, model)


async def _timed_postgres(
    url: str, spool: Path, records: Sequence[Assessed], model: RiskModel
) -> tuple[float, int]:
    store = await PostgresStore.open(url, spool_path=spool, timeout_s=5.0)
    seconds, written = await _timed(store, records, model)
    if store.health().spooled_total:
        raise SystemExit(
            f"{store.health().spooled_total} records went to the spool: PostgreSQL was unavailable"
        )
    return seconds, written


if __name__ == "__main__":
    main()
