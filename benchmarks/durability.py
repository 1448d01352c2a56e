#!/usr/bin/env python
"""kill -9 durability figures, per record store: cards and feedback acknowledged, found after the
restarts, lost (must be 0), over N kill cycles.

Starts `cds serve` as a subprocess (a free port, a temporary var dir; for PostgreSQL a scratch
database on the server at --postgres-url, dropped afterwards), sends hook calls and feedback from
a few client threads, kills the server with SIGKILL mid-stream and restarts it, N times; then
checks through the restarted server and in the store itself (testkit/durability.py). Stops by
itself; exits 1 if anything acknowledged was lost. Usage:
    .venv/bin/python -m benchmarks.durability [--cycles 10] [--segment-s 2] [--stores sqlite,postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from testkit.durability import run_kill_cycles
from testkit.private_postgres import scratch_database

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=10, help="kill -9 cycles per store")
    parser.add_argument("--segment-s", type=float, default=2.0, help="seconds of traffic before each kill")
    parser.add_argument("--clients", type=int, default=3, help="client threads")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server where a scratch database may be created",
    )
    args = parser.parse_args()
    rows = []
    for store in args.stores.split(","):
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"cds-durability-{store}-")))
            url = stack.enter_context(scratch_database(args.postgres_url)) if store == "postgres" else None
            run = run_kill_cycles(
                tmp / "var",
                store=store,
                database_url=url,
                cycles=args.cycles,
                segment_s=args.segment_s,
                clients=args.clients,
            )
        figures = run.figures() | {"seconds": round(time.monotonic() - started, 1)}
        figures["unchanged after restart"] = run.unchanged_after_restart
        rows.append(figures)
        print(json.dumps(figures), file=sys.stderr, flush=True)
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    lost = sum(r["cards lost"] + r["feedback lost"] for r in rows)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
