"""schemathesis over our own OpenAPI document, shared by tests/cds/test_fuzz_api.py (a few dozen
examples per operation) and benchmarks/fuzz_api.py (as many as you like)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.generation import GenerationMode

from cds import Settings, create_app
from demo_ehr import EhrIdentity
from hooks import SERVICES

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None, api_docs=True)).openapi())

# (path, method, service id pinned in the path or None for random ones, generation mode)
CASES = [
    (path, method, service, mode)
    for path, method in (
        ("/cds-services/{service_id}", "POST"),
        ("/cds-services/{service_id}/feedback", "POST"),
    )
    for service in [*sorted(SERVICES), None]
    for mode in GenerationMode
] + [(path, "GET", None, GenerationMode.POSITIVE) for path in ("/cds-services", "/healthz", "/metrics")]


@dataclass
class FuzzResult:
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # "status: body" of each 5xx
    not_outcomes: list[str] = field(default_factory=list)  # 4xx bodies that are not OperationOutcomes


def fuzz_operation(
    base_url: str,
    identity: EhrIdentity,
    path: str,
    method: str,
    service: str | None,
    mode: GenerationMode,
    *,
    examples: int,
) -> FuzzResult:
    """Send `examples` generated requests, each with a fresh valid EHR token for its URL."""
    operation = SCHEMA[path][method]
    pinned = {"service_id": service} if service else None
    result = FuzzResult()

    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, path_parameters=pinned))
    def run(case: schemathesis.Case) -> None:
        url = base_url + case.formatted_path
        response = case.call(
            base_url=base_url, headers={"Authorization": f"Bearer {identity.token(url)}"}, timeout=10
        )
        result.statuses[response.status_code] += 1
        if response.status_code >= 500:
            result.server_errors.append(f"{response.status_code}: {response.text[:300]}")
        elif response.status_code >= 400:
            try:
                is_outcome = response.json().get("resourceType") == "OperationOutcome"
            except ValueError:
                is_outcome = False
            if not is_outcome:
                result.not_outcomes.append(f"{response.status_code}: {response.text[:300]}")

    run()
    return result
