"""The only place that talks to the EHR's FHIR server.

One shared httpx.AsyncClient (created by the app's lifespan); the bearer token from
`fhirAuthorization` is passed per call and never logged. Search results are paged through
`Bundle.link[next]` only while the link stays under the same base URL, so a token is never sent
to another host, and only to an https base (plain http only on loopback, or when
`CDS_ALLOW_HTTP_FHIR_SERVER` says so for a closed test network). httpx errors, HTTP statuses
and OperationOutcome bodies become FHIRServerError.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from fhir_mappings import CDSError, SearchPage, read_search_page

from .errors import FHIRServerError, FHIRTimeout
from .transport import secure_or_loopback

__all__ = ["FhirClient", "same_base"]


def same_base(base: str, url: str) -> bool:
    b, u = httpx.URL(base.rstrip("/") + "/"), httpx.URL(url)
    return (u.scheme, u.host, u.port) == (b.scheme, b.host, b.port) and (u.path + "/").startswith(b.path)


class FhirClient:
    def __init__(self, http: httpx.AsyncClient, *, max_pages: int = 20, allow_http: bool = False) -> None:
        self.http = http
        self.max_pages = max_pages
        self.allow_http = allow_http

    def _url(self, base: str, path: str) -> str:
        if not (self.allow_http or secure_or_loopback(base)):
            raise FHIRServerError("fhirServer must be an https URL; no request was sent")
        if path.startswith(("http://", "https://")):
            if not same_base(base, path):
                raise FHIRServerError("refusing a URL outside the FHIR server's base")
            return path
        return f"{base.rstrip('/')}/{path.lstrip('/')}"

    async def _get(self, url: str, token: str | None) -> tuple[int, Any]:
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self.http.get(url, headers=headers)
        except httpx.TimeoutException as exc:
            raise FHIRTimeout("the FHIR server did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise FHIRServerError(f"could not reach the FHIR server ({type(exc).__name__})") from exc
        if response.status_code in (404, 410):
            return response.status_code, None
        if response.status_code in (401, 403):
            raise FHIRServerError(f"the FHIR server refused access ({response.status_code})")
        if response.status_code >= 400:
            raise FHIRServerError(f"the FHIR server answered {response.status_code}")
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FHIRServerError("the FHIR server sent a body that is not JSON") from exc
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            raise FHIRServerError("the FHIR server answered with an OperationOutcome")
        return response.status_code, body

    async def read(self, base: str, path: str, token: str | None) -> dict[str, Any] | None:
        """A resource by `Type/id`, or None when the server has no such resource."""
        _, body = await self._get(self._url(base, path), token)
        if body is not None and (not isinstance(body, dict) or "resourceType" not in body):
            raise FHIRServerError("the FHIR server sent something that is not a FHIR resource")
        return body

    async def search(self, base: str, query: str, token: str | None) -> SearchPage:
        """Every page of a search, following `next` links under the same base."""
        _, body = await self._get(self._url(base, query), token)
        if body is None:
            return SearchPage()
        return await self.complete(base, self._page(body), token)

    async def complete(self, base: str, page: SearchPage, token: str | None) -> SearchPage:
        """Follow `page.next_url` until the search is exhausted (for partial prefetch too)."""
        pages = 1
        while page.next_url:
            if not same_base(base, page.next_url):
                raise FHIRServerError("a search 'next' link leaves the FHIR server's base; not followed")
            if pages >= self.max_pages:
                raise FHIRServerError(f"search has more than {self.max_pages} pages")
            _, body = await self._get(page.next_url, token)
            following = self._page(body) if body is not None else SearchPage()
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
