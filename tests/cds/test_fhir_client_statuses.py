"""FhirClient's answer to each kind of FHIR server response, unit by unit with httpx.MockTransport
(the loopback EHR tests in test_fhir_fallback.py and test_hostile_ehr.py cover the same over
real sockets)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cds import FhirClient, FHIRServerError, FHIRUnavailable
from cds.fhir_client import FetchBudget
from fhir_mappings import FhirQuery

BASE = "https://ehr.example.org/fhir"
READ = FhirQuery.read("Patient", "p1")
SEARCH = FhirQuery.search("Observation", [("patient", "p1")])


def client(handler: Callable[[httpx.Request], httpx.Response], **limits: Any) -> FhirClient:
    return FhirClient(httpx.AsyncClient(transport=httpx.MockTransport(handler)), **limits)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def raw(status: int, body: bytes, **headers: str) -> httpx.Response:
    """A response whose body streams as a server's does (the client reads it chunk by chunk)."""
    return httpx.Response(status, stream=httpx.ByteStream(body), headers=headers)


def fhir(body: Any, status: int = 200) -> httpx.Response:
    return raw(status, json.dumps(body).encode(), **{"content-type": "application/fhir+json"})


def page(ids: list[str], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": i}} for i in ids],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


@pytest.mark.parametrize("status", [404, 410])
def test_gone_or_missing_is_no_resource_and_an_empty_search(status: int) -> None:
    c = client(lambda r: fhir({"resourceType": "OperationOutcome"}, status))
    assert run(c.read(BASE, READ, "t", FetchBudget(10))) is None
    assert run(c.search(BASE, SEARCH, "t", FetchBudget(10))).resources == []


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, "refused access (401)"),
        (403, "refused access (403)"),
        (500, "answered 500"),
        (302, "redirects are not followed"),
    ],
)
def test_refusals_errors_and_redirects_are_server_errors(status: int, words: str) -> None:
    c = client(lambda r: httpx.Response(status, headers={"location": "https://elsewhere.example.org/"}))
    with pytest.raises(FHIRServerError, match=words.replace("(", r"\(").replace(")", r"\)")):
        run(c.read(BASE, READ, "t", FetchBudget(10)))


def test_a_200_operation_outcome_is_not_data() -> None:
    c = client(
        lambda r: fhir(
            {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
        )
    )
    with pytest.raises(FHIRServerError, match="OperationOutcome"):
        run(c.read(BASE, READ, "t", FetchBudget(10)))


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b'{"resourceType": ', b"[1, 2]"])
def test_a_body_that_is_not_a_fhir_resource_is_a_server_error(body: bytes) -> None:
    c = client(lambda r: raw(200, body))
    with pytest.raises(FHIRServerError):
        run(c.read(BASE, READ, "t", FetchBudget(10)))


def test_the_token_and_accept_headers_are_sent_and_gzip_is_read() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return raw(
            200,
            gzip.compress(json.dumps({"resourceType": "Patient", "id": "p1"}).encode()),
            **{"content-encoding": "gzip"},
        )

    assert run(client(handler).read(BASE, READ, "secret-token", FetchBudget(10)))["id"] == "p1"
    assert seen[0].headers["authorization"] == "Bearer secret-token"
    assert seen[0].headers["accept"] == "application/fhir+json" and str(seen[0].url) == f"{BASE}/Patient/p1"


def test_pages_are_followed_under_the_base_and_limited() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page", "1"))
        return fhir(page([f"o{n}"], f"{BASE}/Observation?page={n + 1}" if n < 3 else None))

    assert [o["id"] for o in run(client(handler).search(BASE, SEARCH, None, FetchBudget(10))).resources] == [
        "o1",
        "o2",
        "o3",
    ]
    with pytest.raises(FHIRServerError, match="more than 2 pages"):
        run(client(handler, max_pages=2).search(BASE, SEARCH, None, FetchBudget(10)))
    with pytest.raises(FHIRServerError, match="more resources than this service reads"):
        run(client(handler).search(BASE, SEARCH, None, FetchBudget(2)))


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example.org/fhir/Observation?page=2",
        f"{BASE}/../admin/Observation",
        f"{BASE}/Observation?page=1",
    ],
)
def test_a_next_link_outside_the_base_or_back_to_itself_is_not_followed(next_url: str) -> None:
    first = f"{BASE}/Observation?page=1"

    def handler(request: httpx.Request) -> httpx.Response:
        return fhir(page(["o"], next_url if str(request.url) != next_url else first))

    c = client(handler)
    with pytest.raises(FHIRServerError):
        run(c.complete(BASE, c._page(page(["o0"], first)), None, FetchBudget(10)))


def test_an_oversized_body_is_refused_without_reading_it_all() -> None:
    c = client(lambda r: raw(200, b" " * 5000 + b"{}"), max_response_bytes=1000)
    with pytest.raises(FHIRServerError, match="larger than this service accepts"):
        run(c.read(BASE, READ, "t", FetchBudget(10)))


def test_plain_http_is_refused_before_any_request_unless_allowed() -> None:
    calls: list[str] = []
    c = client(lambda r: calls.append(str(r.url)) or fhir({"resourceType": "Patient", "id": "p1"}))
    with pytest.raises(FHIRServerError, match="https"):
        run(c.read("http://ehr.example.org/fhir", READ, "t", FetchBudget(10)))
    assert calls == []


def test_an_unreachable_server_is_unavailable_not_an_error_of_the_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(FHIRUnavailable) as caught:
        run(client(handler).read(BASE, READ, "t", FetchBudget(10)))
    assert caught.value.kind == "unreachable"
