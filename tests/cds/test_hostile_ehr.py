"""EHRs that misbehave on purpose (a real loopback server per behaviour): a compression bomb, a
page larger than the limit, a body that drips, `next` links that loop, redirects, garbage, JSON
nested without end. Each call is answered within its budget, memory stays bounded, and nothing
but the EHR's own base is ever asked."""

from __future__ import annotations

import asyncio
import gzip
import json
import resource
import time
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cds import Settings
from demo_ehr import LoopbackServer, patient_view_request, searchset, serve_in_thread
from testkit.helpers import serve_cds, synthetic_stay

SEPSIS = "/cds-services/sepsis-risk"
FHIR_JSON = "application/fhir+json"


def _gzip_bomb(inflated: int) -> bytes:
    """`inflated` bytes of zeros after a JSON prefix, gzip-compressed (~1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b'{"resourceType": "Bundle", "type": "searchset", "entry": [], "x": "')]
    block = b"0" * 2**20
    for _ in range(inflated // len(block)):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(b'"}'))
    parts.append(compressor.flush())
    return b"".join(parts)


class HostileEhr:
    """Answers every search and read according to `mode`; counts the requests it gets."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[str] = []
        self.bomb = _gzip_bomb(1 << 30) if mode == "gzip-bomb" else b""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.answer)])

    async def answer(self, request: Request) -> Response:
        self.requests.append(request.url.path)
        mode = self.mode
        if mode == "gzip-bomb":
            return Response(self.bomb, media_type=FHIR_JSON, headers={"content-encoding": "gzip"})
        if mode == "huge-page":
            entry = {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o",
                    "status": "final",
                    "note": [{"text": "x" * 1000}],
                }
            }
            page = json.dumps(searchset([entry["resource"]] * 40_000)).encode()  # ~44 MB
            return Response(page, media_type=FHIR_JSON)
        if mode == "endless-stream":

            async def forever() -> AsyncIterator[bytes]:
                yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
                while True:
                    yield (
                        b'{"resource": {"resourceType": "Observation", "id": "o", "status": "final"}},' * 1000
                    )
                    await asyncio.sleep(0)

            return StreamingResponse(forever(), media_type=FHIR_JSON)
        if mode == "drip":

            async def drip() -> AsyncIterator[bytes]:
                for _ in range(1000):
                    yield b" "
                    await asyncio.sleep(0.05)

            return StreamingResponse(drip(), media_type=FHIR_JSON)
        if mode == "loop":
            bundle = searchset([])
            bundle["link"] = [{"relation": "next", "url": str(request.url.replace(query="page=1"))}]
            return Response(json.dumps(bundle), media_type=FHIR_JSON)
        if mode == "redirect":
            return Response(status_code=302, headers={"location": "http://127.0.0.1:9/admin"})
        if mode == "garbage":
            return Response(b"\x00\xffnot json at all", media_type=FHIR_JSON)
        if mode == "deep":
            return Response(b"[" * 50_000 + b"]" * 50_000, media_type=FHIR_JSON)
        if mode == "deflate-corrupt":
            return Response(
                b"\x1f\x8b\x08\x00garbage", media_type=FHIR_JSON, headers={"content-encoding": "gzip"}
            )
        raise AssertionError(mode)


@pytest.fixture
def cds(tmp_path) -> Iterator[LoopbackServer]:
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        hook_timeout_s=2.0,
        fhir_max_response_bytes=8 * 2**20,
    )
    with serve_cds(settings) as server:
        yield server


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("gzip-bomb", 412),
        ("huge-page", 412),
        ("endless-stream", 412),
        ("drip", 200),  # the budget ends it: no guidance
        ("loop", 412),
        ("redirect", 412),
        ("garbage", 412),
        ("deep", 412),
        ("deflate-corrupt", 412),
    ],
)
def test_a_hostile_ehr_is_answered_within_budget_with_bounded_memory(
    cds: LoopbackServer, mode: str, status: int
) -> None:
    ehr = HostileEhr(mode)
    stay = synthetic_stay(hours=8)
    before = _peak_rss_mb()
    with serve_in_thread(ehr.app()) as server:
        body = patient_view_request(
            stay, prefetch=["patient", "encounters", "consent"], fhir_server=server.url, access_token="t"
        )
        started = time.monotonic()
        response = httpx.post(f"{cds.url}{SEPSIS}", json=body, timeout=30)
        elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert elapsed < 2.0 + 1.0  # the budget, plus margin for a busy test machine
    if status == 200:
        assert response.json() == {"cards": []}
    else:
        assert response.json()["resourceType"] == "OperationOutcome"
    assert _peak_rss_mb() - before < 400  # the 1 GB bomb, the 44 MB page: never held whole
    assert all(
        path.startswith("/Observation") or path.startswith("/Patient") or path.startswith("/Encounter")
        for path in ehr.requests
    )
    if mode == "loop":
        assert (
            len(ehr.requests) <= 2 * 2
        )  # each of the two category searches: its page and the repeat it refused


def test_gzip_from_the_ehr_is_read_when_it_fits(cds: LoopbackServer, ehr) -> None:
    """The same decompression path serves honest gzip: the card equals the prefetched one."""
    stay = synthetic_stay(hours=12)

    class GzipEhr(HostileEhr):
        async def answer(self, request: Request) -> Response:
            self.requests.append(request.url.path)
            category = request.query_params.get("category")
            found = (
                stay.vitals()
                if category == "vital-signs"
                else stay.labs()
                if category == "laboratory"
                else []
            )
            return Response(
                gzip.compress(json.dumps(searchset(found)).encode()),
                media_type=FHIR_JSON,
                headers={"content-encoding": "gzip"},
            )

    ehr_server = GzipEhr("gzip")
    with serve_in_thread(ehr_server.app()) as server:
        fetched = httpx.post(
            f"{cds.url}{SEPSIS}",
            json=patient_view_request(
                stay, prefetch=["patient", "encounters"], fhir_server=server.url, access_token="t"
            ),
            timeout=10,
        )
    prefetched = httpx.post(f"{cds.url}{SEPSIS}", json=patient_view_request(stay), timeout=10)
    assert fetched.status_code == 200 and prefetched.status_code == 200
    [a], [b] = fetched.json()["cards"], prefetched.json()["cards"]
    assert (
        a["extension"]["org.cds-ml.risk"]["probability"] == b["extension"]["org.cds-ml.risk"]["probability"]
    )
