#!/usr/bin/env python
"""schemathesis against the CDS server, many examples per operation: counts answers by status
and lists any 5xx (the test suite runs the same with 40 examples, tests/cds/test_fuzz_api.py).

Serves the app on a loopback port with authentication on (a loopback test EHR signs a fresh
JWT per call), stops by itself. `--repo DIR` fuzzes another checkout's server instead (run as
`DIR/.venv/bin/python -m cds.cli serve`, e.g. an older commit, for before/after figures), with
the request bodies this checkout's schema describes. Usage:
    .venv/bin/python -m benchmarks.fuzz_api [--examples 500] [--repo DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from cds import Settings, TrustedIssuer
from demo_ehr import EhrIdentity, free_port, serve_in_thread, wait_until_healthy
from testkit.fuzzing import CASES, fuzz_operation
from testkit.helpers import serve_cds

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def served(repo: Path | None, var: str, issuer: TrustedIssuer) -> Iterator[str]:
    """The base URL of a CDS server: this checkout's in-process, or `repo`'s as a subprocess."""
    if repo is None:
        with serve_cds(
            Settings(var_dir=Path(var), pseudonym_key="fuzz-key-0123456789abcdef", auth_issuers=(issuer,))
        ) as api:
            yield api.url
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {
        "CDS_VAR_DIR": var,
        "CDS_PORT": str(port),
        "CDS_PSEUDONYM_KEY": "fuzz-key-0123456789abcdef",
        "CDS_LOG_LEVEL": "WARNING",
        "CDS_PUBLIC_URL": url,
        "CDS_AUTH_ISSUERS": json.dumps([issuer.model_dump(mode="json", exclude_defaults=True)]),
    }
    server = subprocess.Popen(
        [str(repo / ".venv/bin/python"), "-m", "cds.cli", "serve"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_healthy(url)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples", type=int, default=500, help="examples per operation and generation mode"
    )
    parser.add_argument(
        "--repo", type=Path, help="fuzz the server of this checkout (its .venv) instead of this one"
    )
    args = parser.parse_args()
    identity = EhrIdentity()
    rows = []
    total: Counter[int] = Counter()
    errors: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as var, serve_in_thread(identity.app()) as jwks:
        identity.jwks_url = f"{jwks.url}/.well-known/jwks.json"
        issuer = TrustedIssuer(iss=identity.issuer, jwks_url=identity.jwks_url)
        with served(args.repo, var, issuer) as api_url:
            for path, method, service, mode in CASES:
                result = fuzz_operation(
                    api_url, identity, path, method, service, mode, examples=args.examples
                )
                total.update(result.statuses)
                errors += result.server_errors
                rows.append(
                    {
                        "operation": f"{method} {path}",
                        "service": service or "random",
                        "mode": mode.value,
                        "calls": sum(result.statuses.values()),
                        "statuses": dict(sorted(result.statuses.items())),
                        "5xx": len(result.server_errors),
                        "4xx_not_operation_outcome": len(result.not_outcomes),
                    }
                )
                print(
                    f"{method:4} {path:40} {service or 'random':18} {mode.value:8} "
                    f"{dict(sorted(result.statuses.items()))}",
                    flush=True,
                )
    summary = {
        "server": str(args.repo or ROOT),
        "examples_per_case": args.examples,
        "calls": sum(total.values()),
        "statuses": dict(sorted(total.items())),
        "5xx": sum(n for s, n in total.items() if s >= 500),
        "seconds": round(time.monotonic() - started, 1),
        "first_5xx": errors[:5],
        "cases": rows,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
