"""A small FHIR R4 server over an in-memory set of resources: the demo EHR's FHIR API.

Enough of FHIR search for our hooks: read by id; search Patient/Encounter/Observation/Location/Consent
by `patient`, `status`, `category`, `date` (ge/gt/le/lt), `_count`, `_sort=date|-date`, with
searchset paging through `next` links. It can require a bearer token, and can be made slow or
broken on purpose, to test timeouts and failure handling. It records each request's path and
whether it carried the expected token (never the token itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fhir_mappings import observation_time, parse_datetime, reference_id

__all__ = ["DemoFhirServer"]


def _outcome(status: int, text: str) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")


@dataclass
class RequestSeen:
    path: str
    query: str
    authorized: bool


@dataclass
class DemoFhirServer:
    token: str | None = None  # when set, every request must carry `Authorization: Bearer <token>`
    delay_s: float = 0.0  # added to every request (a slow or hung EHR)
    fail_status: int | None = None  # answer every request with this status
    page_size: int = 50
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seen: list[RequestSeen] = field(default_factory=list)

    def add(self, resources: Iterable[dict[str, Any]]) -> None:
        for r in resources:
            self.resources[(r["resourceType"], r["id"])] = r

    def clear(self) -> None:
        self.resources.clear()
        self.seen.clear()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{rtype}", self._search), Route("/{rtype}/{rid}", self._read)])

    async def _guard(self, request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        ok = self.token is None or auth == f"Bearer {self.token}"
        self.seen.append(RequestSeen(request.url.path, request.url.query, ok))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status is not None:
            return _outcome(self.fail_status, "configured failure")
        if not ok:
            return _outcome(401, "missing or wrong bearer token")
        return None

    async def _read(self, request: Request) -> JSONResponse:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        found = self.resources.get((request.path_params["rtype"], request.path_params["rid"]))
        if found is None:
            return _outcome(404, "not found")
        return JSONResponse(found, media_type="application/fhir+json")

    def _matches(self, r: dict[str, Any], params: dict[str, list[str]]) -> bool:
        for name, values in params.items():
            if name.startswith("_"):
                continue
            for value in values:
                if name == "patient":
                    ref = (
                        r.get("patient" if r["resourceType"] == "Consent" else "subject")
                        if r["resourceType"] != "Patient"
                        else None
                    )
                    target = reference_id(ref, "Patient") if ref else r.get("id")
                    if target != value.removeprefix("Patient/"):
                        return False
                elif name == "status":
                    if r.get("status") not in value.split(","):
                        return False
                elif name == "category":
                    codes = {c.get("code") for cat in r.get("category", []) for c in cat.get("coding", [])}
                    if not codes & {v.split("|")[-1] for v in value.split(",")}:
                        return False
                elif name == "date":
                    when = observation_time(r) if r["resourceType"] == "Observation" else None
                    if when is None:
                        return False
                    prefix, text = (
                        (value[:2], value[2:])
                        if value[:2] in ("ge", "gt", "le", "lt", "eq")
                        else ("eq", value)
                    )
                    bound = parse_datetime(text, "date")
                    ok = {
                        "ge": when >= bound,
                        "gt": when > bound,
                        "le": when <= bound,
                        "lt": when < bound,
                        "eq": when == bound,
                    }
                    if not ok[prefix]:
                        return False
                else:
                    return False  # an unsupported parameter matches nothing, rather than everything
        return True

    async def _search(self, request: Request) -> JSONResponse:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        rtype = request.path_params["rtype"]
        params: dict[str, list[str]] = {}
        for k, v in request.query_params.multi_items():
            params.setdefault(k, []).append(v)
        hits = [r for (t, _), r in self.resources.items() if t == rtype and self._matches(r, params)]
        sort = params.get("_sort", [""])[0]
        if sort.lstrip("-") == "date" and rtype == "Observation":
            hits.sort(key=lambda r: (observation_time(r), r["id"]), reverse=sort.startswith("-"))
        count = min(int(params.get("_count", [self.page_size])[0]), self.page_size)
        offset = int(params.get("_offset", ["0"])[0])
        page = hits[offset : offset + count]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(hits),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{request.base_url}{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        if offset + count < len(hits):
            nxt = request.url.include_query_params(_offset=str(offset + count))
            bundle["link"].append({"relation": "next", "url": str(nxt)})
        return JSONResponse(bundle, media_type="application/fhir+json")
