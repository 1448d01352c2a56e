#!/usr/bin/env python
"""Benchmark: sepsis-risk hook latency (p50/p99 over HTTP) without and with a shadow model.

Starts `cds serve` (one worker, a temporary registry with sepsis v3 = a copy of v2, a temporary
var dir) on 127.0.0.1 and calls it sequentially with a 72-hour prefetch (bench_hook's stay).
Blocks of calls alternate: champion only, then with v3 promoted to shadow (`cds models promote`),
then retired again (`cds models retire`), and so on, so that a noisy shared machine's drift falls
on both sides. With the shadow, each call is followed by the shadow's scoring in the background;
the calls are back to back, so that work competes with the next call (the worst case).
Usage:
    .venv/bin/python -m benchmarks.bench_shadow [--calls 150] [--blocks 2] [--pause-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.bench_hook import HOURS, ROOT, percentiles, stay_frame
from demo_ehr import free_port, icu_start_for_hour, patient_view_request, stay_to_fhir, wait_until_healthy
from testkit.lifecycle import copy_version, serving, tmp_registry, wait_for


def measure(client: httpx.Client, payload: bytes, calls: int, pause_s: float) -> list[float]:
    headers = {"content-type": "application/json"}
    samples = []
    for i in range(calls + 20):
        t0 = time.perf_counter()
        response = client.post("/cds-services/sepsis-risk", content=payload, headers=headers)
        elapsed = time.perf_counter() - t0
        assert response.status_code == 200 and response.json()["cards"], response.text
        if i >= 20:
            samples.append(elapsed)
        if pause_s:
            time.sleep(pause_s)
    return samples


def cds(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "models", *args, "--reason", "benchmark", "--actor", "bench"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150, help="calls per block")
    parser.add_argument(
        "--blocks", type=int, default=2, help="blocks of calls without, and as many with, a shadow"
    )
    parser.add_argument("--pause-ms", type=float, default=0.0, help="pause between calls")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CDS_DATA_DIR", ROOT.parent / "shared" / "data"))
    )
    args = parser.parse_args()

    frame, source = stay_frame(args.data_dir)
    stay = stay_to_fhir(frame, icu_start=icu_start_for_hour(datetime.now(UTC), HOURS), up_to_hour=HOURS)
    payload = json.dumps(patient_view_request(stay)).encode()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        registry = tmp_registry(Path(tmp) / "models")
        copy_version(registry, "sepsis", "2", "3")
        env = {
            **os.environ,
            "CDS_MODEL_DIR": str(registry),
            "CDS_VAR_DIR": str(Path(tmp) / "var"),
            "CDS_PORT": str(port),
            "CDS_PSEUDONYM_KEY": "bench-key-0123456789abcdef",
            "CDS_LOG_LEVEL": "WARNING",
            "CDS_AUTH_DISABLED_FOR_LOCAL_DEMO": "true",
            "CDS_MODEL_POLL_S": "0.5",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "cds.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(url)
            with httpx.Client(base_url=url, timeout=10) as client:
                without: list[float] = []
                with_shadow: list[float] = []
                for block in range(2 * args.blocks):  # off, on, off, on, ...: the machine's drift cancels
                    shadow = block % 2 == 1
                    action = (
                        ["promote", "sepsis", "3", "--to", "shadow"] if shadow else ["retire", "sepsis", "3"]
                    )
                    if block:
                        cds(env, *action)
                    wait_for(
                        lambda on=shadow: serving(url).get("shadow") == ("3" if on else None),
                        what="the lineup",
                    )
                    (with_shadow if shadow else without).extend(
                        measure(client, payload, args.calls, args.pause_ms / 1000)
                    )
                skipped = [
                    line
                    for line in httpx.get(f"{url}/metrics").text.splitlines()
                    if line.startswith("cds_shadow_skipped")
                ]
        finally:
            server.terminate()
            server.wait(timeout=10)

    off, on = percentiles(without), percentiles(with_shadow)
    print(
        json.dumps(
            {
                "stay": source,
                "hours": HOURS,
                "pause_ms": args.pause_ms,
                "blocks": args.blocks,
                "without_shadow": off,
                "with_shadow": on,
                "p50_difference_ms": round(on["p50_ms"] - off["p50_ms"], 2),
                "p99_difference_ms": round(on["p99_ms"] - off["p99_ms"], 2),
                "shadow_skipped": skipped[0].split()[-1] if skipped else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
