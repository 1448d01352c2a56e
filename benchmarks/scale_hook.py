#!/usr/bin/env python
"""Worker scaling: the highest offered rate of sepsis-risk hook calls that `cds serve --workers N`
answers with a p99 under 100 ms, for each N, with the shared state (replay window, JWKS cache) in
Redis and the SQLite record store shared by the workers.

For each worker count, climbs a ladder of offered rates with benchmarks/load_hook.py (one fresh
server per rate, open-loop constant rate, secure mode, the same 30 held-out 72-hour stays) and
stops at the first rate that fails: p99 of the answered calls >= 100 ms, fewer than 99 % of the
calls answered with a card within the budget, or the generator falling behind. The sustained rate
is the last rate that passed. Loopback only; every run is bounded (load_hook's hard cap) and the
ladder ends by itself. Redis keys go under a prefix of their own (`bench-scale-<random>:`).
Usage:
    .venv/bin/python -m benchmarks.scale_hook [--workers 1,2] [--rates 20,40,60,80,100,120,160]
        [--duration 20] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
P99_LIMIT_MS = 100.0
MIN_CARD_SHARE = 0.99


def one_rate(workers: int, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    env = [f"CDS_REDIS_URL={args.redis_url}", f"CDS_REDIS_PREFIX=bench-scale-{uuid.uuid4().hex[:12]}:"]
    command = [
        sys.executable,
        "-m",
        "benchmarks.load_hook",
        "--rate",
        str(rate),
        "--duration",
        str(args.duration),
        "--workers",
        str(workers),
        "--stays",
        str(args.stays),
        "--json-out",
        str(out),
        *(x for e in env + args.env for x in ("--env", e)),
    ]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=args.duration + 200)
    run = json.loads(out.read_text())["runs"][0]
    sent = max(1, run["sent"])
    p99 = run["latency_answered_ms"].get("p99_ms")
    card_share = run["outcomes"]["card_within_budget"] / sent
    passed = (
        p99 is not None
        and p99 < P99_LIMIT_MS
        and card_share >= MIN_CARD_SHARE
        and not run["generator"]["behind"]
        and not run["aborted"]
    )
    return {
        "rate_per_s": rate,
        "achieved_per_s": run["generator"]["achieved_rate_per_s"],
        "card_share": round(card_share, 4),
        "p50_ms": run["latency_answered_ms"].get("p50_ms"),
        "p99_ms": p99,
        "generator_behind": run["generator"]["behind"],
        "server_cpu_s": run["server_cpu_s_during_load"],
        "passed": passed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--rates", default="20,40,60,80,100,120,160", help="the ladder of offered rates")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate (default 20)")
    parser.add_argument("--stays", type=int, default=30)
    parser.add_argument("--redis-url", default=os.environ.get("CDS_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting"
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    from benchmarks.load_hook import git_commit, machine

    report: dict[str, Any] = {
        "benchmark": "benchmarks/scale_hook.py",
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": git_commit(),
        "rule": f"p99 < {P99_LIMIT_MS:g} ms, >= {MIN_CARD_SHARE:.0%} cards within budget, generator on time",
        "duration_s": args.duration,
        "workers": {},
    }
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale-hook-{uuid.uuid4().hex[:8]}.json"
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            ladder = []
            for rate in rates:
                print(
                    f"workers {workers}: {rate:g}/s for {args.duration:g} s ...", file=sys.stderr, flush=True
                )
                step = one_rate(workers, rate, args, out)
                ladder.append(step)
                print(f"  {step}", file=sys.stderr, flush=True)
                if not step["passed"]:
                    break
            sustained = max((s["rate_per_s"] for s in ladder if s["passed"]), default=0.0)
            report["workers"][str(workers)] = {"sustained_per_s": sustained, "ladder": ladder}
    finally:
        out.unlink(missing_ok=True)
    sustained = {w: r["sustained_per_s"] for w, r in report["workers"].items()}
    if "1" in sustained and sustained["1"]:
        report["scaling_vs_1_worker"] = {w: round(v / sustained["1"], 2) for w, v in sustained.items()}
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"sustained calls/s at p99 < {P99_LIMIT_MS:g} ms: {sustained}", file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
