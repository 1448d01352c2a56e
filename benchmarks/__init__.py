"""Benchmarks and long-running checks: scripts that print figures, run from the repository root as
`python -m benchmarks.<name>` (never collected by pytest; not part of the product, the wheel or
the image). They import the product, the demo EHR and `testkit`, never `tests`.

    bench_hook      hook latency over HTTP (JWT, SHAP, record write) against a naive peer, and its
                    stages in process (wall p50/p99, CPU): docs/performance.md
    naive_peer      the naive FastAPI sepsis hook bench_hook measures against (started by it)
    scale_hook      sustained hook calls/s at p99 < 100 ms for cds serve --workers 1, 2 (Redis)
    bench_mapping   FHIR -> canonical table -> features, and full fhir.resources validation
    bench_auth      JWT verification cost; answer time with a hung FHIR server
    load_hook       open-loop load at fixed rates: answered within budget, RSS, recovery
    fuzz_api        schemathesis against every operation, 5xx by operation
    durability      kill -9 the server mid-stream: records acknowledged, found, lost
    vendor_figures  the mapping on hand-written Epic / Oracle Health / MEDITECH payloads
"""
