"""Memory and time of reading a full set-A FHIR Bulk Data export (`fhir_mappings.iter_export`).

    python -m benchmarks.bulk_import [--dir /tmp/setA-export] [--gzip] [--icu-as-child]
        [--patients N] [--copies 4]

Writes set A as NDJSON (`demo_ehr.write_set_a_export`, timed apart) unless `--dir` already holds
an export, then reads it in a fresh subprocess (so its peak RSS is the reader's alone) streaming
every stay into a parquet table as `cds site import` does, and prints: resources, stays, hours,
seconds, peak RSS, and whether SepsisLabel matches set A's count of positive hours.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "physionet2019" / "setA.parquet"


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, so it starts
    afresh at exec; ru_maxrss (the fallback off Linux) is kept across exec on Linux and would
    report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read(directory: Path, out: Path) -> None:
    """The measured part (runs in its own process)."""
    from fhir_mappings import Pseudonymizer, iter_export, write_stays

    start = time.perf_counter()
    reader = iter_export(directory, pseudonymizer=Pseudonymizer(b"benchmark-key-0123456789"))
    stays = write_stays(reader.stays(), out)
    seconds = time.perf_counter() - start
    peak_mib = _peak_rss_mib()
    import pyarrow.parquet as pq

    labels = pq.read_table(out, columns=["SepsisLabel"]).column(0).to_numpy()
    report = reader.report
    print(
        json.dumps(
            {
                "stays": stays,
                "hours": report.hours,
                "resources": dict(report.resources),
                "positive_hours": int(labels.sum()),
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak_mib),
                "unmapped_codes": len(report.observations.unmapped_codes),
                "stays_skipped": dict(report.stays_skipped),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, help="export directory (written from set A when empty)")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--icu-as-child", action="store_true")
    parser.add_argument("--patients", type=int, help="only the first N set-A patients")
    parser.add_argument(
        "--copies", type=int, default=1, help="send every value N times (4: ~20M Observations)"
    )
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        _read(args.read, args.out)
        return
    import numpy as np
    import pandas as pd

    from demo_ehr import write_set_a_export

    with tempfile.TemporaryDirectory(prefix="bulk-bench-") as tmp:
        directory = args.dir or Path(tmp) / "export"
        frame = pd.read_parquet(DATA)
        if args.patients:
            frame = frame[frame["patient"].isin(np.sort(frame["patient"].unique())[: args.patients])]
        if not directory.exists() or not any(directory.iterdir()):
            start = time.perf_counter()
            counts = write_set_a_export(
                frame, directory, gzip=args.gzip, icu_as_child=args.icu_as_child, copies=args.copies
            )
            print(f"wrote {dict(counts)} in {time.perf_counter() - start:.0f} s")
        size = sum(f.stat().st_size for f in directory.iterdir())
        print(f"export: {size / 2**20:.0f} MiB on disk ({'gzip' if args.gzip else 'NDJSON'})")
        out = Path(tmp) / "table.parquet"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bulk_import", "--read", str(directory), "--out", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures["set_a_rows"] = len(frame)
        figures["set_a_positive_hours"] = int(frame["SepsisLabel"].sum())
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
