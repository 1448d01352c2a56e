"""Hostile callers over real HTTP: injected ids, oversized and deep bodies, wrong media types, and
the headers every answer carries. Each case gets a clear 4xx, and the EHR sees no request."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from cds import Settings
from demo_ehr import (
    DemoFhirServer,
    LoopbackServer,
    discharge_hook_request,
    discharge_to_fhir,
    patient_view_request,
    serve_in_thread,
)
from hooks import SERVICES
from testkit.helpers import serve_cds, synthetic_stay
from testkit.readmission_rows import row
from tests.hooks.test_prefetch_and_cards import INJECTION_IDS

SEPSIS = "/cds-services/sepsis-risk"


@pytest.fixture
def limited(tmp_path) -> Iterator[tuple[LoopbackServer, Settings]]:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        max_hook_bytes=200_000,
        max_feedback_bytes=4_000,
        max_json_depth=20,
        max_resources=300,
    )
    with serve_cds(settings) as server:
        yield server, settings


def _requests(service_id: str, fhir_server: str, token: str) -> dict:
    if service_id == "sepsis-risk":
        return patient_view_request(
            synthetic_stay(hours=8), prefetch=False, fhir_server=fhir_server, access_token=token
        )
    stay = discharge_to_fhir(row(), discharged_at=datetime.now(UTC))
    return discharge_hook_request(stay, prefetch=False, fhir_server=fhir_server, access_token=token)


# Every hostile value for every id token of every service ("" only where the token is optional).
CONTEXT_CASES = [
    (service_id, token, value)
    for service_id in sorted(SERVICES)
    for token in ("patientId", "encounterId", "userId")
    for value in [*INJECTION_IDS, ["p1"], 7, {"reference": "Patient/1"}]
    if value != "" or token == "encounterId"
]


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LoopbackServer, DemoFhirServer, LoopbackServer, dict]]:
    """One CDS server and one EHR for the whole injection matrix, and a request body per service."""
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("inject") / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
    )
    ehr = DemoFhirServer(token="ehr-access-token")
    with serve_cds(settings) as cds, serve_in_thread(ehr.app()) as ehr_server:
        bodies = {
            service_id: _requests(service_id, ehr_server.url, ehr.token or "") for service_id in SERVICES
        }
        yield cds, ehr, ehr_server, bodies


@pytest.mark.parametrize(("service_id", "token", "value"), CONTEXT_CASES, ids=repr)
def test_every_context_id_of_every_service_is_checked_before_any_request(
    shared, service_id: str, token: str, value: object
) -> None:
    cds_server, ehr, _, bodies = shared
    ehr.seen.clear()
    body = copy.deepcopy(bodies[service_id])
    body["context"][token] = (
        f"Practitioner/{value}" if token == "userId" and isinstance(value, str) else value
    )
    response = httpx.post(f"{cds_server.url}/cds-services/{service_id}", json=body, timeout=10)
    if value == "":
        assert response.status_code in (200, 400)  # no encounterId: the service decides; nothing injected
        return
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert (
        outcome["resourceType"] == "OperationOutcome"
        and f"context.{token}" in outcome["issue"][0]["diagnostics"]
    )
    if isinstance(value, str) and len(value) > 2:
        assert value not in response.text
    assert ehr.seen == []


@pytest.mark.parametrize(
    ("location", "fetched"),
    [
        ("Location/icu-7", True),
        ("Location/../../admin", False),
        ("Location/a?x=1", False),
        ("Location/.", False),
    ],
)
def test_reference_ids_from_the_ehr_are_fetched_only_when_they_are_fhir_ids(
    cds_server: LoopbackServer, ehr: DemoFhirServer, ehr_server: LoopbackServer, location: str, fetched: bool
) -> None:
    stay = synthetic_stay(hours=8)
    stay.encounter["location"] = [
        {"location": {"reference": location}, "period": {"start": stay.encounter["period"]["start"]}}
    ]
    ehr.add(stay.all())
    body = patient_view_request(
        stay,
        prefetch=["patient", "encounters", "vitals", "labs", "consent"],
        fhir_server=ehr_server.url,
        access_token=ehr.token,
    )
    response = httpx.post(f"{cds_server.url}{SEPSIS}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert [s.path for s in ehr.seen] == (["/Location/icu-7"] if fetched else [])


def test_bodies_over_the_size_limit_are_413_before_they_are_read(limited) -> None:
    server, settings = limited
    big = json.dumps(patient_view_request(synthetic_stay(hours=72))).encode()
    assert len(big) > settings.max_hook_bytes
    with httpx.Client(base_url=server.url, timeout=10) as client:
        declared = client.post(SEPSIS, content=big, headers={"content-type": "application/json"})

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        chunked = client.post(SEPSIS, content=chunks(), headers={"content-type": "application/json"})
        feedback = client.post(f"{SEPSIS}/feedback", json={"feedback": [{"card": "x" * 5000}]})
    for response in (declared, chunked, feedback):
        assert response.status_code == 413, response.text
        assert response.json()["issue"][0]["code"] == "too-costly"


@pytest.mark.parametrize(
    "depth", [64, 100_000]
)  # the default limit is 64 levels, the body object one of them
def test_json_nested_deeper_than_the_limit_is_413(cds_server: LoopbackServer, depth: int) -> None:
    body = b'{"hook": "patient-view", "context": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(
        f"{cds_server.url}{SEPSIS}", content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 413 and "nested deeper than 64" in response.text
    shallow = b'{"hook": "patient-view", "context": ' + b"[" * 62 + b"]" * 62 + b"}"
    response = httpx.post(
        f"{cds_server.url}{SEPSIS}", content=shallow, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 400  # within the limit: parsed, then refused for what it says


def test_a_prefetch_with_more_resources_than_the_limit_is_413(limited) -> None:
    server, settings = limited
    body = patient_view_request(synthetic_stay(hours=8))
    small = [
        {"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final"}}
        for i in range(settings.max_resources)
    ]
    body["prefetch"]["vitals"]["entry"] = small
    payload = json.dumps(body, separators=(",", ":")).encode()
    assert len(payload) < settings.max_hook_bytes
    response = httpx.post(
        f"{server.url}{SEPSIS}", content=payload, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 413 and "more than 300 resources" in response.text


@pytest.mark.parametrize(
    "number",
    [b"1" * 400, b"1e400", b"-1e400", b"NaN", b"Infinity"],
    ids=["10**400", "1e400", "-1e400", "NaN", "Infinity"],
)
def test_numbers_json_cannot_carry_as_a_double_are_400(cds_server: LoopbackServer, number: bytes) -> None:
    body = json.dumps(patient_view_request(synthetic_stay(hours=8))).encode()
    hostile = body.replace(b'"value": 95', b'"value": ' + number, 1)
    assert hostile != body
    response = httpx.post(
        f"{cds_server.url}{SEPSIS}", content=hostile, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {},
        {"content-type": "application/json", "content-encoding": "gzip"},
    ],
    ids=["text", "form", "none", "gzip"],
)
def test_only_plain_json_media_types_are_accepted(cds_server: LoopbackServer, headers: dict) -> None:
    body = json.dumps(patient_view_request(synthetic_stay(hours=8))).encode()
    if headers.get("content-encoding") == "gzip":
        body = gzip.compress(body)
    for path in (SEPSIS, f"{SEPSIS}/feedback"):
        response = httpx.post(f"{cds_server.url}{path}", content=body, headers=headers, timeout=10)
        assert response.status_code == 415, response.text
    fhir_json = httpx.post(
        f"{cds_server.url}{SEPSIS}",
        content=json.dumps(patient_view_request(synthetic_stay(hours=8))),
        headers={"content-type": "application/fhir+json; charset=utf-8"},
        timeout=10,
    )
    assert fhir_json.status_code == 200


def test_every_answer_is_no_store_nosniff_and_carries_no_server_banner(cds_server: LoopbackServer) -> None:
    with httpx.Client(base_url=cds_server.url, timeout=10) as client:
        answers = [
            client.post(SEPSIS, json=patient_view_request(synthetic_stay(hours=8))),
            client.post(SEPSIS, json={"hook": "patient-view"}),
            client.get("/cds-services"),
            client.get("/healthz"),
            client.get("/no-such-page"),
            client.delete(SEPSIS),
        ]
    assert [a.status_code for a in answers] == [200, 400, 200, 200, 404, 405]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "server" not in answer.headers
    assert answers[4].json()["resourceType"] == "OperationOutcome"


def test_api_docs_are_off_by_default_and_never_load_a_cdn_script(
    cds_server: LoopbackServer, tmp_path
) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert httpx.get(f"{cds_server.url}{path}", timeout=10).status_code == 404
    settings = Settings(
        var_dir=tmp_path / "v2",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        api_docs=True,
    )
    with serve_cds(settings) as server:
        schema = httpx.get(f"{server.url}/openapi.json", timeout=10)
        assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 404
    assert schema.status_code == 200 and "cdn" not in schema.text.lower()
    body = schema.json()["paths"]["/cds-services/{service_id}"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/HookRequest"}
    assert "FhirAuthorization" in schema.json()["components"]["schemas"]


def test_an_unexpected_error_is_a_500_operation_outcome_and_a_traceback_without_its_message(
    cds_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    def explode(_: object) -> None:
        raise ValueError("canary-patient-Jane-Doe-MRN-0042")

    monkeypatch.setitem(SERVICES, "sepsis-risk", replace(SERVICES["sepsis-risk"], score=explode))
    caplog.set_level(logging.INFO)
    response = httpx.post(
        f"{cds_server.url}{SEPSIS}", json=patient_view_request(synthetic_stay(hours=8)), timeout=10
    )
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome" and "canary" not in response.text
    errors = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert len(errors) == 1
    event = errors[0].event  # type: ignore[attr-defined]
    assert event["error"] == "ValueError" and any("explode" in frame for frame in event["trace"])
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'event', '')} {r.exc_info}" for r in caplog.records)
    assert "canary" not in logged


def test_a_request_line_of_garbage_gets_a_400_and_no_traceback(
    cds_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host, port = cds_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
        )  # a TLS hello on plain http
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
