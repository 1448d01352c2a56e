"""schemathesis over our own OpenAPI document, with a valid EHR token on every call: whatever a
trusted caller sends, valid by the schema or not, the answer is never a 5xx, and every 4xx is a
FHIR OperationOutcome. (`scripts/fuzz_api.py` runs the same with many more examples.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.generation import GenerationMode

from cds import Settings, TrustedIssuer, create_app
from demo_ehr import EhrIdentity, LoopbackServer, serve_in_thread
from hooks import SERVICES
from tests.cds.helpers import serve_cds

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None, api_docs=True)).openapi())
EXAMPLES = 40


@pytest.fixture(scope="module")
def identity() -> Iterator[EhrIdentity]:
    ehr = EhrIdentity()
    with serve_in_thread(ehr.app()) as server:
        ehr.jwks_url = f"{server.url}/.well-known/jwks.json"
        yield ehr


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, identity: EhrIdentity) -> Iterator[LoopbackServer]:
    issuer = TrustedIssuer(iss=identity.issuer, jwks_url=identity.jwks_url)
    var = tmp_path_factory.mktemp("fuzz") / "var"
    with serve_cds(Settings(var_dir=var, pseudonym_key="test-key-0123456789abcdef", auth_issuers=(issuer,))) as server:
        yield server


CASES = [
    (path, method, service, mode)
    for path, method in (("/cds-services/{service_id}", "POST"), ("/cds-services/{service_id}/feedback", "POST"))
    for service in [*sorted(SERVICES), None]
    for mode in GenerationMode
] + [(path, "GET", None, GenerationMode.POSITIVE) for path in ("/cds-services", "/healthz", "/metrics")]


@pytest.mark.parametrize(("path", "method", "service", "mode"), CASES, ids=lambda v: getattr(v, "value", v))
def test_no_request_gets_a_server_error(
    api: LoopbackServer, identity: EhrIdentity, path: str, method: str, service: str | None, mode: GenerationMode
) -> None:
    operation = SCHEMA[path][method]
    pinned = {"service_id": service} if service else None
    statuses: Counter[int] = Counter()

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(mode, path_parameters=pinned))
    def run(case: schemathesis.Case) -> None:
        url = api.url + case.formatted_path
        response = case.call(base_url=api.url, headers={"Authorization": f"Bearer {identity.token(url)}"}, timeout=10)
        statuses[response.status_code] += 1
        assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
        if response.status_code >= 400:
            assert response.json()["resourceType"] == "OperationOutcome"

    run()
    assert sum(statuses.values()) > 0
    if service is None and "{service_id}" in path:
        # Random service ids: unknown (404), or an `aud` that cannot match a path the client encodes.
        assert set(statuses) <= {401, 404}, statuses
        return
    assert 401 not in statuses  # every call carried a valid token: the fuzzing reached the handlers
    if service and mode is GenerationMode.POSITIVE and path.endswith("{service_id}"):
        assert set(statuses) <= {200, 400, 404, 412, 413, 422}, statuses  # no 5xx, no auth failure


def test_the_fuzzed_server_is_still_healthy(api: LoopbackServer) -> None:
    assert httpx.get(f"{api.url}/healthz", timeout=5).json()["status"] == "ok"
