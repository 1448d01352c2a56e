#!/usr/bin/env python
"""Benchmark: the cost of caller authentication per call, and the hook's answer time when the
EHR's FHIR server hangs.

1. In process: `CallerVerifier.verify` on fresh ES384 and RS384 tokens from the loopback test
   EHR (JWKS cached after the first call; jti recorded in the SQLite replay store, and in Redis
   when it answers at 127.0.0.1:6379). Token signing is not timed.
2. Over HTTP: a patient-view call without prefetch against a FHIR server that never answers in
   time; the hook budget (CDS_HOOK_TIMEOUT_S, default 2 s) must bound the answer.

Loopback only; stops by itself. Usage: .venv/bin/python -m benchmarks.bench_auth [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from cds import (
    CallerVerifier,
    JwksCache,
    RedisReplayStore,
    ReplayStore,
    Settings,
    SQLiteReplayStore,
    TrustedIssuer,
    create_app,
)
from demo_ehr import DemoFhirServer, EhrIdentity, patient_view_request, serve_in_thread
from testkit.helpers import synthetic_stay

ROOT = Path(__file__).resolve().parents[1]

AUD = "https://cds.example.org/cds-services/sepsis-risk"


def stats(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "n": len(ms),
    }


async def verify_cost(identity: EhrIdentity, replay: ReplayStore, alg: str, calls: int) -> dict[str, float]:
    tokens = [identity.token(AUD, alg=alg) for _ in range(calls + 10)]
    async with httpx.AsyncClient() as http:
        issuer = TrustedIssuer(iss=identity.issuer, jwks_url=identity.jwks_url)
        verifier = CallerVerifier([issuer], JwksCache(http, {identity.jwks_url}), replay)
        samples = []
        for i, token in enumerate(tokens):
            t0 = time.perf_counter()
            await verifier.verify(token, AUD)
            if i >= 10:  # the first call fetches the JWKS
                samples.append(time.perf_counter() - t0)
        await verifier.close()
    return stats(samples)


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping())
    except redis.exceptions.RedisError:
        return False


def hung_fhir(calls: int, budget_s: float) -> dict[str, object]:
    ehr = DemoFhirServer(token="t", delay_s=30.0)
    stay = synthetic_stay()
    ehr.add(stay.all())
    with tempfile.TemporaryDirectory() as var, serve_in_thread(ehr.app()) as fhir:
        settings = Settings(
            var_dir=Path(var),
            pseudonym_key="bench-key-0123456789abcdef",
            hook_timeout_s=budget_s,
            fhir_timeout_s=60,
            auth_disabled_for_local_demo=True,
        )
        with serve_in_thread(create_app(settings)) as server:
            samples, bodies = [], set()
            for _ in range(calls):
                body = patient_view_request(stay, prefetch=False, fhir_server=fhir.url, access_token="t")
                t0 = time.perf_counter()
                response = httpx.post(f"{server.url}/cds-services/sepsis-risk", json=body, timeout=60)
                samples.append(time.perf_counter() - t0)
                bodies.add((response.status_code, response.text))
            metric = [m for m in httpx.get(f"{server.url}/metrics").text.splitlines() if "fhir-timeout" in m]
        ehr.delay_s = 0  # let the hung handlers finish quickly
    return {"budget_s": budget_s, "answers": sorted(bodies), "latency": stats(samples), "metric": metric}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--hung-calls", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0)
    args = parser.parse_args()

    identity = EhrIdentity()
    result: dict[str, object] = {}
    with serve_in_thread(identity.app()) as jwks_server, tempfile.TemporaryDirectory() as tmp:
        identity.jwks_url = f"{jwks_server.url}/.well-known/jwks.json"
        for alg in ("ES384", "RS384"):
            replay = SQLiteReplayStore(Path(tmp) / f"{alg}.sqlite3")
            result[f"verify_{alg}_sqlite_replay"] = asyncio.run(
                verify_cost(identity, replay, alg, args.calls)
            )
            if redis_available():
                prefix = f"cds-bench:{time.time_ns()}:"
                replay = RedisReplayStore("redis://127.0.0.1:6379/0", prefix=prefix)
                result[f"verify_{alg}_redis_replay"] = asyncio.run(
                    verify_cost(identity, replay, alg, args.calls)
                )
                import redis

                client = redis.Redis(host="127.0.0.1", port=6379)
                keys = list(client.scan_iter(match=prefix + "*"))
                if keys:
                    client.delete(*keys)
        result["jwks_downloads"] = identity.jwks_requests
    result["hung_fhir_server"] = hung_fhir(args.hung_calls, args.budget)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
