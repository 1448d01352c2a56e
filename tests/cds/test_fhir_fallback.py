"""When prefetch is missing, the service fetches from the EHR's FHIR server (a real loopback HTTP
server here), with the fhirAuthorization token, paging within the same base, inside its budget."""

from __future__ import annotations

import time

import httpx
import pytest

from cds import Settings, TrustedIssuer
from demo_ehr import DemoFhirServer, EhrIdentity, EhrJwtAuth, patient_view_request, serve_in_thread
from testkit.helpers import serve_cds, synthetic_stay


def probability(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    return response.json()["cards"][0]["extension"]["org.cds-ml.risk"]["probability"]


def test_missing_prefetch_is_fetched_with_the_token(cds_server, ehr: DemoFhirServer, ehr_server) -> None:
    stay = synthetic_stay(hours=40)
    ehr.add(stay.all())
    assert len(stay.vitals()) > ehr.page_size  # the search needs several pages
    with httpx.Client(base_url=cds_server.url, timeout=10) as client:
        prefetched = probability(client.post("/cds-services/sepsis-risk", json=patient_view_request(stay)))
        assert ehr.seen == []
        body = patient_view_request(stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token)
        fetched = probability(client.post("/cds-services/sepsis-risk", json=body))
    assert fetched == prefetched
    paths = [s.path for s in ehr.seen]
    assert f"/Patient/{stay.patient_id}" in paths
    assert paths.count("/Observation") >= 3  # first pages and at least one `next`
    assert any("_offset" in s.query for s in ehr.seen)
    assert all(s.authorized for s in ehr.seen)


def test_partial_prefetch_is_completed(cds_server, ehr: DemoFhirServer, ehr_server) -> None:
    stay = synthetic_stay()
    ehr.add(stay.all())
    body = patient_view_request(
        stay,
        prefetch=["patient", "encounters", "consent"],
        fhir_server=ehr_server.url,
        access_token=ehr.token,
    )
    body["prefetch"]["labs"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    with httpx.Client(base_url=cds_server.url, timeout=10) as client:
        full = probability(client.post("/cds-services/sepsis-risk", json=patient_view_request(stay)))
        partial = probability(client.post("/cds-services/sepsis-risk", json=body))
    assert partial == full
    assert {s.path for s in ehr.seen} == {"/Observation"}


def test_no_prefetch_and_no_fhir_server_is_412(cds_server) -> None:
    body = patient_view_request(synthetic_stay(), prefetch=["patient"])
    response = httpx.post(f"{cds_server.url}/cds-services/sepsis-risk", json=body, timeout=10)
    assert response.status_code == 412
    assert "no fhirServer" in response.json()["issue"][0]["diagnostics"]


def test_a_plain_http_fhir_server_off_loopback_gets_no_request_and_412(
    tmp_path, ehr_identity: EhrIdentity
) -> None:
    # 127.0.0.2 is not one of the loopback names we trust for plain http; should the rule ever
    # break, the request still stays on this machine. Even an EHR bound to it gets no request.
    server_url = "http://127.0.0.2:9/fhir"
    issuer = TrustedIssuer(
        iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url, fhir_servers=(server_url,)
    )
    settings = Settings(
        var_dir=tmp_path / "var", pseudonym_key="test-key-0123456789abcdef", auth_issuers=(issuer,)
    )
    body = patient_view_request(
        synthetic_stay(), prefetch=["patient"], fhir_server=server_url, access_token="t"
    )
    with serve_cds(settings) as server:
        response = httpx.post(
            f"{server.url}/cds-services/sepsis-risk", json=body, timeout=10, auth=EhrJwtAuth(ehr_identity)
        )
    assert response.status_code == 412
    assert "https" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "fhir_server",
    [
        "https://127.0.0.1:1/fhir",
        "https://attacker.example.org/fhir",
        "http://127.0.0.1:1/fhir",
        "https://ehr.example.org/fhir/../admin",
    ],
)
def test_a_fhir_server_the_issuer_is_not_bound_to_gets_no_connection_and_412(
    tmp_path, ehr_identity: EhrIdentity, ehr: DemoFhirServer, ehr_server, fhir_server: str
) -> None:
    """Blind SSRF: a trusted EHR's token may only send us to the FHIR bases bound to its issuer."""
    issuer = TrustedIssuer(
        iss=ehr_identity.issuer,
        jwks_url=ehr_identity.jwks_url,
        fhir_servers=(ehr_server.url, "https://ehr.example.org/fhir"),
    )
    settings = Settings(
        var_dir=tmp_path / "var", pseudonym_key="test-key-0123456789abcdef", auth_issuers=(issuer,)
    )
    stay = synthetic_stay()
    ehr.add(stay.all())
    with (
        serve_cds(settings) as server,
        httpx.Client(base_url=server.url, timeout=10, auth=EhrJwtAuth(ehr_identity)) as client,
    ):
        refused = client.post(
            "/cds-services/sepsis-risk",
            json=patient_view_request(stay, prefetch=False, fhir_server=fhir_server, access_token="t"),
        )
        bound = client.post(
            "/cds-services/sepsis-risk",
            json=patient_view_request(
                stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token
            ),
        )
    assert refused.status_code == 412 and "no request was sent" in refused.json()["issue"][0]["diagnostics"]
    assert bound.status_code == 200 and bound.json()["cards"]
    assert ehr.seen and all(s.authorized for s in ehr.seen)  # only the bound server was asked


def test_a_closed_port_and_a_hung_server_get_the_same_answer(
    tmp_path, ehr: DemoFhirServer, ehr_server
) -> None:
    """An answer must not tell a refused connection from a timeout (port scanning through us)."""
    from demo_ehr import free_port

    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        hook_timeout_s=0.6,
        auth_disabled_for_local_demo=True,
    )
    ehr.delay_s = 5.0
    stay = synthetic_stay()
    with serve_cds(settings) as server:
        answers = []
        for base in (f"http://127.0.0.1:{free_port()}", ehr_server.url):
            body = patient_view_request(stay, prefetch=False, fhir_server=base, access_token=ehr.token)
            response = httpx.post(f"{server.url}/cds-services/sepsis-risk", json=body, timeout=10)
            answers.append(
                (
                    response.status_code,
                    response.content,
                    sorted(k for k in response.headers if k != "date" and k != "content-length"),
                )
            )
    assert answers[0] == answers[1] == (200, b'{"cards":[]}', answers[0][2])


def test_a_refused_token_is_412(cds_server, ehr: DemoFhirServer, ehr_server) -> None:
    stay = synthetic_stay()
    ehr.add(stay.all())
    body = patient_view_request(stay, prefetch=False, fhir_server=ehr_server.url, access_token="wrong-token")
    response = httpx.post(f"{cds_server.url}/cds-services/sepsis-risk", json=body, timeout=10)
    assert response.status_code == 412
    assert "wrong-token" not in response.text


def test_next_links_to_another_host_are_not_followed(cds_server, ehr: DemoFhirServer, ehr_server) -> None:
    other = DemoFhirServer()
    stay = synthetic_stay()
    ehr.add(stay.all())
    with serve_in_thread(other.app()) as elsewhere:
        body = patient_view_request(stay, fhir_server=ehr_server.url, access_token=ehr.token)
        body["prefetch"]["vitals"]["link"] = [
            {"relation": "next", "url": f"{elsewhere.url}/Observation?_offset=1"}
        ]
        response = httpx.post(f"{cds_server.url}/cds-services/sepsis-risk", json=body, timeout=10)
    assert response.status_code == 412
    assert other.seen == []


def test_a_hung_fhir_server_does_not_hold_the_answer(tmp_path, ehr: DemoFhirServer, ehr_server) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        hook_timeout_s=0.5,
        fhir_timeout_s=10,
        auth_disabled_for_local_demo=True,
    )
    ehr.delay_s = 5.0
    stay = synthetic_stay()
    ehr.add(stay.all())
    with serve_cds(settings) as server:
        body = patient_view_request(stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token)
        started = time.perf_counter()
        response = httpx.post(f"{server.url}/cds-services/sepsis-risk", json=body, timeout=10)
        elapsed = time.perf_counter() - started
        metrics = httpx.get(f"{server.url}/metrics").text
    assert response.status_code == 200 and response.json() == {"cards": []}
    assert elapsed < 1.5
    assert 'reason="fhir-unavailable"' in metrics


@pytest.mark.parametrize("status", [500, 503])
def test_a_failing_fhir_server_is_412(cds_server, ehr: DemoFhirServer, ehr_server, status: int) -> None:
    ehr.fail_status = status
    body = patient_view_request(
        synthetic_stay(), prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token
    )
    response = httpx.post(f"{cds_server.url}/cds-services/sepsis-risk", json=body, timeout=10)
    assert response.status_code == 412
    assert str(status) in response.json()["issue"][0]["diagnostics"]


def test_null_prefetch_means_no_such_resource_and_is_not_fetched(
    cds_server, ehr: DemoFhirServer, ehr_server
) -> None:
    stay = synthetic_stay()
    ehr.add(stay.all())
    body = patient_view_request(stay, fhir_server=ehr_server.url, access_token=ehr.token)
    body["prefetch"]["patient"] = None  # the EHR has no such Patient (CDS Hooks 2.0: null)
    response = httpx.post(f"{cds_server.url}/cds-services/sepsis-risk", json=body, timeout=10)
    assert response.status_code == 200 and response.json()["cards"]
    assert ehr.seen == []


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ({"fhir_max_pages": 2}, "more than 2 pages"),
        ({"max_resources": 60}, "more resources than this service reads"),
    ],
)
def test_an_ehr_that_sends_more_than_the_limits_gets_412(
    tmp_path, ehr: DemoFhirServer, ehr_server, limit: dict, expected: str
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        **limit,
    )
    stay = synthetic_stay(hours=40)
    ehr.add(stay.all())
    assert len(stay.vitals()) > 3 * ehr.page_size and len(stay.all()) > 60
    body = patient_view_request(
        stay,
        prefetch=["patient", "encounters", "consent"],
        fhir_server=ehr_server.url,
        access_token=ehr.token,
    )
    with serve_cds(settings) as server:
        response = httpx.post(f"{server.url}/cds-services/sepsis-risk", json=body, timeout=10)
    assert response.status_code == 412, response.text
    assert expected in response.json()["issue"][0]["diagnostics"]
