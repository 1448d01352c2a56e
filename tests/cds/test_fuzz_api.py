"""schemathesis over our own OpenAPI document, with a valid EHR token on every call: whatever a
trusted caller sends, valid by the schema or not, the answer is never a 5xx, and every 4xx is a
FHIR OperationOutcome. (`benchmarks/fuzz_api.py` runs the same with many more examples.)"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from schemathesis.generation import GenerationMode

from cds import Settings, TrustedIssuer
from demo_ehr import EhrIdentity, LoopbackServer, serve_in_thread
from testkit.fuzzing import CASES, fuzz_operation
from testkit.helpers import serve_cds

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
    with serve_cds(
        Settings(var_dir=var, pseudonym_key="test-key-0123456789abcdef", auth_issuers=(issuer,))
    ) as server:
        yield server


@pytest.mark.parametrize(("path", "method", "service", "mode"), CASES, ids=lambda v: getattr(v, "value", v))
def test_no_request_gets_a_server_error(
    api: LoopbackServer,
    identity: EhrIdentity,
    path: str,
    method: str,
    service: str | None,
    mode: GenerationMode,
) -> None:
    result = fuzz_operation(api.url, identity, path, method, service, mode, examples=EXAMPLES)
    assert result.server_errors == []
    assert result.not_outcomes == []
    statuses = set(result.statuses)
    assert statuses
    if service is None and "{service_id}" in path:
        # Random service ids: unknown (404), or an `aud` that cannot match a path the client encodes.
        assert statuses <= {401, 404}, result.statuses
    else:
        assert 401 not in statuses, (
            result.statuses
        )  # every call carried a valid token: fuzzing reached the handlers


def test_the_fuzzed_server_is_still_healthy(api: LoopbackServer) -> None:
    assert httpx.get(f"{api.url}/healthz", timeout=5).json()["status"] == "ok"
