"""Reading the census from the EHR for the sweep: FHIR Bulk Data `$export` when the EHR offers
it, paged searches otherwise; both with a SMART Backend Services token.

Bulk Data (v2): kick-off with `Prefer: respond-async` (`Group/<id>/$export`, or system level),
`_type` and `_typeFilter` asking for what a `sepsis-risk` prefetch asks for (in-progress
Encounters, vital-sign and laboratory Observations since `lookback_hours`, active Consents); the
status URL from `Content-Location` (or `Location`, which is all some proxies pass) polled as
`Retry-After` says; the NDJSON files downloaded with the token. An EHR that answers the kick-off
with 400/403/404/405/501 does not offer it: the census is then read with paged searches
(in-progress Encounters, then per patient Patient, Observations and Consents).

Politeness: at most `concurrency` requests in flight; 429 and 503 (and transport failures)
retried up to `max_retries` times after `Retry-After` (capped) or an exponential backoff; a 401
fetches a new token once. Tokens go only to URLs under `fhir_base` (`same_base`). No URL (it
holds patient ids) and no token is logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from fhir_mappings import CDSError, MappingError, is_fhir_id, read_search_page, reference_id
from hooks.sweep import NdjsonStream

from .backend_services import BackendTokenSource
from .errors import FHIRServerError, FHIRUnavailable
from .fhir_client import same_base
from .settings import SweepEhr

__all__ = [
    "CensusFetch",
    "CensusQuery",
    "PoliteClient",
    "fetch_census",
    "readmission_query",
    "retry_after_s",
    "sepsis_query",
]

T = TypeVar("T")
_NOT_OFFERED = frozenset({400, 403, 404, 405, 501})
_RETRIED = frozenset({429, 503})


@dataclass(frozen=True)
class CensusQuery:
    """What one model's sweep reads: the export's `_type` and `_typeFilter`s, and for the search
    fallback the searches per patient of the census (in-progress Encounters), as (type, params)."""

    types: tuple[str, ...]
    type_filters: tuple[str, ...]
    per_patient: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    locations: bool = False  # also read the Locations the census Encounters name without a display


def sepsis_query(since: datetime) -> CensusQuery:
    """A `sepsis-risk` prefetch for everyone: in-progress Encounters, vital signs and labs since
    `since`, active Consents (and ICU Locations)."""
    return CensusQuery(
        types=("Patient", "Encounter", "Observation", "Consent", "Location"),
        type_filters=(
            "Encounter?status=in-progress",
            f"Observation?category=vital-signs%2Claboratory&date=ge{_instant(since)}",
            "Consent?status=active",
        ),
        per_patient=(
            ("Observation", (("category", "vital-signs,laboratory"), ("date", f"ge{_instant(since)}"))),
            ("Consent", (("status", "active"),)),
        ),
        locations=True,
    )


def readmission_query() -> CensusQuery:
    """A `readmission-risk` prefetch for everyone in hospital: every Encounter (the earlier stays
    count), Conditions, MedicationRequests, labs, Procedures, active Consents."""
    return CensusQuery(
        types=(
            "Patient",
            "Encounter",
            "Condition",
            "MedicationRequest",
            "Observation",
            "Procedure",
            "Consent",
        ),
        type_filters=("Observation?category=laboratory", "Consent?status=active"),
        per_patient=(
            ("Encounter", ()),
            ("Condition", ()),
            ("MedicationRequest", ()),
            ("Observation", (("category", "laboratory"),)),
            ("Procedure", ()),
            ("Consent", (("status", "active"),)),
        ),
    )


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` asks for (delta-seconds or an HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class FetchStats:
    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # status (or "transport") -> retries
    bytes: int = 0


class PoliteClient:
    """HTTP to one EHR: bounded concurrency, retries on 429/503, the bearer token, the base check."""

    def __init__(self, http: httpx.AsyncClient, ehr: SweepEhr, tokens: BackendTokenSource) -> None:
        self.http = http
        self.ehr = ehr
        self.tokens = tokens
        self.stats = FetchStats()
        self._slots = asyncio.Semaphore(ehr.concurrency)

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        asked = retry_after_s(response.headers.get("retry-after")) if response is not None else None
        wait = asked if asked is not None else 0.5 * 2**attempt
        return min(wait, self.ehr.max_retry_after_s)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """The EHR's answer, its body read whole (a JSON page, a status)."""
        response, _ = await self._exchange(method, url, headers, None)
        return response

    async def ndjson(self, url: str) -> tuple[httpx.Response, list[dict[str, Any]]]:
        """A Bulk Data file, parsed line by line as it arrives (`NdjsonStream`: only the lines not
        yet complete are held, never the file); (the response, []) when it is not a 200. A
        transport failure halfway reads the file again from the start, as any retried request."""

        async def lines(response: httpx.Response) -> list[dict[str, Any]]:
            stream = NdjsonStream()
            found: list[dict[str, Any]] = []
            async for chunk in response.aiter_bytes():
                found += stream.feed(chunk)
            return found + stream.end()

        response, resources = await self._exchange("GET", url, {"Accept": "application/fhir+ndjson"}, lines)
        return response, resources or []

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Callable[[httpx.Response], Awaitable[T]] | None,
    ) -> tuple[httpx.Response, T | None]:
        """One request with the politeness rules; `body` reads a 200's body as it streams in
        (within the request's concurrency slot), else the body is read whole."""
        if not same_base(self.ehr.fhir_base, url) or any(c in url for c in "\r\n\t "):
            raise FHIRServerError("refusing a URL outside the EHR's FHIR base")
        refreshed = False
        attempt = 0
        while True:
            token = await self.tokens.token()
            sent = {**(headers or {}), "Authorization": f"Bearer {token.access_token}"}
            response: httpx.Response | None = None
            async with self._slots:
                self.stats.requests += 1
                try:
                    request = self.http.build_request(method, url, headers=sent, timeout=self.ehr.timeout_s)
                    response = await self.http.send(request, stream=body is not None)
                    try:
                        if body is not None and response.status_code == 200:
                            return response, await body(response)
                        await response.aread()
                    finally:
                        await response.aclose()
                        self.stats.bytes += response.num_bytes_downloaded
                except httpx.TransportError as exc:
                    if attempt >= self.ehr.max_retries:
                        kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable"
                        raise FHIRUnavailable("the EHR could not be reached", kind=kind) from exc
                    self.stats.retries["transport"] += 1
                    response = None
            if response is not None:
                if response.status_code == 401 and not refreshed:
                    refreshed = True
                    self.tokens.invalidate()
                    continue
                if response.status_code not in _RETRIED or attempt >= self.ehr.max_retries:
                    return response, None
                self.stats.retries[str(response.status_code)] += 1
            await asyncio.sleep(self._wait(attempt, response))
            attempt += 1

    async def get_json(self, url: str) -> Any:
        response = await self.request("GET", url, headers={"Accept": "application/fhir+json"})
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise FHIRServerError(f"the EHR answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise FHIRServerError("the EHR sent a body that is not JSON") from None


@dataclass
class CensusFetch:
    """What the sweep read: every resource, how, and what it cost."""

    resources: list[dict[str, Any]]
    method: str  # "bulk-export" | "search"
    stats: FetchStats
    files: int = 0  # NDJSON files downloaded (bulk)
    export_errors: int = 0  # OperationOutcome files the export reported
    seconds: float = 0.0


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _bulk(client: PoliteClient, ehr: SweepEhr, query: CensusQuery) -> CensusFetch | None:
    """The census by `$export`, or None when the EHR does not offer it."""
    base = ehr.fhir_base
    path = f"Group/{ehr.group_id}/$export" if ehr.group_id else "$export"
    if ehr.group_id and not is_fhir_id(ehr.group_id):
        raise FHIRServerError("group_id is not a FHIR id")
    params = [("_type", ",".join(query.types)), *(("_typeFilter", f) for f in query.type_filters)]
    url = str(httpx.URL(f"{base}/{path}", params=params))
    kickoff = await client.request(
        "GET", url, headers={"Accept": "application/fhir+json", "Prefer": "respond-async"}
    )
    if kickoff.status_code in _NOT_OFFERED:
        return None
    if kickoff.status_code != 202:
        raise FHIRServerError(f"the $export kick-off answered {kickoff.status_code}")
    status_url = kickoff.headers.get("content-location") or kickoff.headers.get("location")
    if not status_url:
        raise FHIRServerError("the $export kick-off gave no status URL (Content-Location)")
    status_url = str(httpx.URL(url).join(status_url))
    deadline = time.monotonic() + ehr.export_timeout_s
    attempt = 0
    while True:
        response = await client.request("GET", status_url, headers={"Accept": "application/json"})
        if response.status_code == 200:
            break
        if response.status_code != 202:
            raise FHIRServerError(f"the $export status answered {response.status_code}")
        if time.monotonic() >= deadline:
            await client.request("DELETE", status_url)
            raise FHIRServerError(f"the $export did not complete in {ehr.export_timeout_s:.0f} s")
        await asyncio.sleep(client._wait(attempt, response))
        attempt = min(attempt + 1, 6)
    try:
        manifest = response.json()
    except ValueError:
        raise FHIRServerError("the $export manifest is not JSON") from None
    outputs = [
        o for o in manifest.get("output") or () if isinstance(o, dict) and isinstance(o.get("url"), str)
    ]

    async def download(entry: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            got, resources = await client.ndjson(entry["url"])
        except MappingError as exc:
            raise FHIRServerError(f"an $export file is not NDJSON ({exc.message})") from exc
        if got.status_code != 200:
            raise FHIRServerError(f"an $export file answered {got.status_code}")
        return resources

    parts = await asyncio.gather(*(download(o) for o in outputs))
    await client.request("DELETE", status_url)  # the EHR may free the files now
    return CensusFetch(
        [r for part in parts for r in part],
        "bulk-export",
        client.stats,
        files=len(outputs),
        export_errors=len(manifest.get("error") or ()),
    )


async def _search_all(client: PoliteClient, url: str, max_pages: int = 10_000) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    next_url: str | None = url
    while next_url:
        if next_url in seen or len(seen) >= max_pages:
            raise FHIRServerError("a search's next links loop or never end")
        seen.add(next_url)
        body = await client.get_json(next_url)
        if body is None:
            break
        try:
            page = read_search_page(body, "Bundle")
        except CDSError as exc:
            raise FHIRServerError(f"the EHR sent an invalid search result ({exc.message})") from exc
        found += [r for r in page.resources if isinstance(r, dict)]
        next_url = page.next_url
    return found


def _fhir_id(ref: Any, kind: str) -> str | None:
    found = reference_id(ref, kind)
    return found if found is not None and is_fhir_id(found) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


async def _search(client: PoliteClient, ehr: SweepEhr, query: CensusQuery) -> CensusFetch:
    """The census by paged searches: in-progress Encounters, then each patient's data."""
    base, count = ehr.fhir_base, str(ehr.page_size)

    def url(rtype: str, params: list[tuple[str, str]]) -> str:
        return str(httpx.URL(f"{base}/{rtype}", params=params))

    encounters = await _search_all(client, url("Encounter", [("status", "in-progress"), ("_count", count)]))
    patients = sorted({pid for e in encounters if (pid := _fhir_id(e.get("subject"), "Patient"))})
    locations = sorted(
        {
            lid
            for e in encounters
            for entry in _list(e.get("location"))
            if query.locations
            and isinstance(entry, dict)
            and not (entry.get("location") or {}).get("display")
            and (lid := _fhir_id(entry.get("location"), "Location"))
        }
    )

    async def one(pid: str) -> list[dict[str, Any]]:
        patient, *found = await asyncio.gather(
            client.get_json(f"{base}/Patient/{pid}"),
            *(
                _search_all(client, url(rtype, [("patient", pid), *params, ("_count", count)]))
                for rtype, params in query.per_patient
            ),
        )
        return ([patient] if isinstance(patient, dict) else []) + [r for part in found for r in part]

    async def location(lid: str) -> list[dict[str, Any]]:
        found = await client.get_json(f"{base}/Location/{lid}")
        return [found] if isinstance(found, dict) else []

    parts = await asyncio.gather(*(one(p) for p in patients), *(location(lid) for lid in locations))
    return CensusFetch(encounters + [r for part in parts for r in part], "search", client.stats)


async def fetch_census(
    http: httpx.AsyncClient,
    ehr: SweepEhr,
    *,
    now: datetime,
    query: CensusQuery | None = None,
    tokens: BackendTokenSource | None = None,
) -> CensusFetch:
    """Every resource the sweep needs (default: sepsis's, since `lookback_hours` before `now`), by
    Bulk Data when offered (and `bulk` allows), else by paged searches."""
    started = time.monotonic()
    client = PoliteClient(http, ehr, tokens or BackendTokenSource(http, ehr))
    wanted = query or sepsis_query(now - timedelta(hours=ehr.lookback_hours))
    fetched = await _bulk(client, ehr, wanted) if ehr.bulk == "auto" else None
    if fetched is None:
        fetched = await _search(client, ehr, wanted)
    fetched.seconds = time.monotonic() - started
    return fetched
