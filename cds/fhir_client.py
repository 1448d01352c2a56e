"""The only place that talks to the EHR's FHIR server.

One shared httpx.AsyncClient (created by the app's lifespan); the bearer token from
`fhirAuthorization` is passed per call and never logged. Every URL is a `FhirQuery` (validated
ids, encoded values) under the EHR's base, or a `next` link that stays under the same base, so a
token is never sent to another host or path, and only to an https base (plain http only on
loopback, or when `CDS_ALLOW_HTTP_FHIR_SERVER` says so for a closed test network).

What an EHR sends back is bounded: a response's size after decompression (we inflate gzip
ourselves, chunk by chunk, so a compression bomb stops at the limit), the pages of a search, a
`next` link seen twice (a loop), and the resources of one hook call (`FetchBudget`). Large bodies
are parsed in a worker thread so the event loop keeps serving. Transport failures of any kind
(refused, reset, timed out) become one `FHIRUnavailable`, so an answer never tells a closed port
from a slow one.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass
from typing import Any

import httpx

from fhir_mappings import CDSError, FhirQuery, SearchPage, read_search_page

from .bodies import parse_json
from .errors import FHIRServerError, FHIRUnavailable
from .transport import secure_or_loopback

__all__ = ["FetchBudget", "FhirClient", "same_base"]

_PARSE_IN_THREAD = 256 * 1024

# httpx logs every request URL at INFO, the EHR's patient id in it: not a line we may write.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def same_base(base: str, url: str) -> bool:
    b, u = httpx.URL(base.rstrip("/") + "/"), httpx.URL(url)
    return (u.scheme, u.host, u.port) == (b.scheme, b.host, b.port) and (u.path + "/").startswith(b.path)


@dataclass
class FetchBudget:
    """Resources one hook call may still take from the EHR (after what it prefetched)."""

    resources: int

    def take(self, n: int) -> None:
        self.resources -= n
        if self.resources < 0:
            raise FHIRServerError("the EHR sent more resources than this service reads in one call")


class FhirClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_pages: int = 20,
        max_response_bytes: int = 16 * 2**20,
        max_json_depth: int = 64,
        allow_http: bool = False,
    ) -> None:
        self.http = http
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.max_json_depth = max_json_depth
        self.allow_http = allow_http

    def _url(self, base: str, target: FhirQuery | str) -> str:
        if not (self.allow_http or secure_or_loopback(base)):
            raise FHIRServerError("fhirServer must be an https URL; no request was sent")
        if isinstance(target, FhirQuery):
            return f"{base.rstrip('/')}/{target.relative_url()}"
        try:  # a `next` link from the EHR: it must stay under the base, after normalisation
            inside = same_base(base, target)
        except httpx.InvalidURL:
            inside = False
        if not inside or any(c in target for c in "\r\n\t "):
            raise FHIRServerError("refusing a URL outside the FHIR server's base")
        return target

    async def _body(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise FHIRServerError("the FHIR server sent a content encoding we do not read")
        if encoding == "identity" and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise FHIRServerError("the FHIR server's response is larger than this service accepts")
        inflate = zlib.decompressobj(wbits=47) if encoding != "identity" else None  # 47: gzip or zlib
        chunks: list[bytes] = []
        size = 0
        async for raw in response.aiter_raw():
            data = raw
            if inflate is not None:
                try:
                    data = inflate.decompress(raw, self.max_response_bytes - size + 1)
                except zlib.error as exc:
                    raise FHIRServerError("the FHIR server sent a corrupt compressed body") from exc
            size += len(data)
            if size > self.max_response_bytes or (inflate is not None and inflate.unconsumed_tail):
                raise FHIRServerError("the FHIR server's response is larger than this service accepts")
            chunks.append(data)
        if inflate is not None:
            chunks.append(inflate.flush(self.max_response_bytes - size + 1))
            if size + len(chunks[-1]) > self.max_response_bytes:
                raise FHIRServerError("the FHIR server's response is larger than this service accepts")
        return b"".join(chunks)

    async def _get(self, url: str, token: str | None) -> Any:
        headers = {"Accept": "application/fhir+json", "Accept-Encoding": "gzip"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.http.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status in (404, 410):
                    return None
                if status in (401, 403):
                    raise FHIRServerError(f"the FHIR server refused access ({status})")
                if status >= 400:
                    raise FHIRServerError(f"the FHIR server answered {status}")
                if 300 <= status < 400:
                    raise FHIRServerError(f"the FHIR server answered {status} (redirects are not followed)")
                raw = await self._body(response)
        except httpx.HTTPError as exc:
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable"
            raise FHIRUnavailable("the FHIR server could not be reached in time", kind=kind) from exc
        try:
            if len(raw) > _PARSE_IN_THREAD:
                body = await asyncio.to_thread(
                    parse_json, raw, max_depth=self.max_json_depth, what="FHIR response"
                )
            else:
                body = parse_json(raw, max_depth=self.max_json_depth, what="FHIR response")
        except CDSError as exc:
            raise FHIRServerError(f"the FHIR server sent an unusable body ({exc.message})") from exc
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            raise FHIRServerError("the FHIR server answered with an OperationOutcome")
        return body

    async def read(
        self, base: str, query: FhirQuery, token: str | None, budget: FetchBudget
    ) -> dict[str, Any] | None:
        """A resource by `Type/id`, or None when the server has no such resource."""
        body = await self._get(self._url(base, query), token)
        if body is not None and (not isinstance(body, dict) or "resourceType" not in body):
            raise FHIRServerError("the FHIR server sent something that is not a FHIR resource")
        if body is not None:
            budget.take(1)
        return body

    async def search(self, base: str, query: FhirQuery, token: str | None, budget: FetchBudget) -> SearchPage:
        """Every page of a search, following `next` links under the same base."""
        body = await self._get(self._url(base, query), token)
        if body is None:
            return SearchPage()
        page = self._page(body)
        budget.take(len(page.resources))
        return await self.complete(base, page, token, budget)

    async def complete(
        self, base: str, page: SearchPage, token: str | None, budget: FetchBudget
    ) -> SearchPage:
        """Follow `page.next_url` until the search is exhausted (for partial prefetch too)."""
        pages = 1
        seen: set[str] = set()
        while page.next_url:
            url = self._url(base, page.next_url)
            if url in seen:
                raise FHIRServerError("a search 'next' link repeats an earlier page; not followed")
            if pages >= self.max_pages:
                raise FHIRServerError(f"search has more than {self.max_pages} pages")
            seen.add(url)
            body = await self._get(url, token)
            following = self._page(body) if body is not None else SearchPage()
            budget.take(len(following.resources))
            page = SearchPage(
                resources=page.resources + following.resources,
                outcomes=page.outcomes + following.outcomes,
                next_url=following.next_url,
            )
            pages += 1
        return page

    @staticmethod
    def _page(body: Any) -> SearchPage:
        try:
            return read_search_page(body, "Bundle")
        except CDSError as exc:
            raise FHIRServerError(f"the FHIR server sent an invalid search result ({exc.message})") from exc
