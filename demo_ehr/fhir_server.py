"""A small FHIR R4 server over an in-memory set of resources: the demo EHR's FHIR API.

Enough of FHIR search for our hooks: read by id; search Patient/Encounter/Observation/Location/Consent
by `patient`, `status`, `category`, `date` (ge/gt/le/lt), `_count`, `_sort=date|-date`, with
searchset paging through `next` links. It can require a bearer token, and can be made slow or
broken on purpose, to test timeouts and failure handling. It records each request's path and
whether it carried the expected token (never the token itself).

FHIR Bulk Data (v2) for the census sweep, unless `bulk_export` is off: system `$export` and
`Group/<census_group>/$export` (the patients with an in-progress Encounter), with `_type`,
`_typeFilter` (the search parameters above) and `_since` (meta.lastUpdated, where a resource has
one); kick-off answers 202 with `Content-Location` (and `Location`, for a proxy that passes only
that header, like SMART's reference launcher), the status URL answers 202 with `Retry-After`
`export_polls` times, then the manifest; the files are NDJSON. `throttle`: statuses (429, 503)
the next requests are answered with, with `Retry-After: throttle_retry_after`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
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
    bulk_export: bool = True  # offer $export (off: a server with paged search only)
    census_group: str = "inpatients"  # the Group whose members are the patients in hospital now
    export_polls: int = 1  # status polls answered 202 (in progress) before the manifest
    export_retry_after: int = 1  # seconds, on those 202s
    public_base: str | None = None  # the base clients reach us through (a proxy), for status URLs
    throttle: list[int] = field(default_factory=list)  # statuses for the next requests (429, 503)
    throttle_retry_after: str = "1"
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, resources: Iterable[dict[str, Any]]) -> None:
        for r in resources:
            self.resources[(r["resourceType"], r["id"])] = r

    def clear(self) -> None:
        self.resources.clear()
        self.seen.clear()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/$export", self._export),
                Route("/Group/{gid}/$export", self._export),
                Route("/$export-status/{job}", self._export_status, methods=["GET", "DELETE"]),
                Route("/$export-file/{job}/{name}", self._export_file),
                Route("/{rtype}", self._search),
                Route("/{rtype}/{rid}", self._read),
            ]
        )

    async def _guard(self, request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        ok = self.token is None or auth == f"Bearer {self.token}"
        self.seen.append(RequestSeen(request.url.path, request.url.query, ok))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status is not None:
            return _outcome(self.fail_status, "configured failure")
        if self.throttle:
            refused = _outcome(self.throttle.pop(0), "busy: try again later")
            refused.headers["Retry-After"] = self.throttle_retry_after
            return refused
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

    # --- Bulk Data $export ------------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return (self.public_base or str(request.base_url)).rstrip("/")

    def _census(self) -> set[str]:
        return {
            reference_id(r.get("subject"), "Patient") or ""
            for (t, _), r in self.resources.items()
            if t == "Encounter" and r.get("status") == "in-progress"
        }

    def _in_group(self, r: dict[str, Any], patients: set[str]) -> bool:
        kind = r["resourceType"]
        if kind == "Patient":
            return r["id"] in patients
        ref = r.get("patient" if kind == "Consent" else "subject")
        return reference_id(ref, "Patient") in patients

    async def _export(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        if not self.bulk_export:
            return _outcome(404, "this server does not offer $export")
        if request.headers.get("prefer", "").strip() != "respond-async":
            return _outcome(400, "$export needs 'Prefer: respond-async'")
        gid = request.path_params.get("gid")
        if gid is not None and gid != self.census_group:
            return _outcome(404, "no such Group")
        query = request.query_params
        types = [t for t in query.get("_type", "").split(",") if t] or sorted({t for t, _ in self.resources})
        filters: dict[str, list[dict[str, list[str]]]] = {}
        for text in (t for value in query.getlist("_typeFilter") for t in value.split(",") if t):
            rtype, _, qs = text.partition("?")  # each query's own commas are percent-encoded
            params: dict[str, list[str]] = {}
            for name, value in parse_qsl(qs, keep_blank_values=True):
                params.setdefault(name, []).append(value)
            filters.setdefault(rtype, []).append(params)
        since = parse_datetime(query["_since"], "_since") if query.get("_since") else None
        patients = self._census() if gid is not None else None
        output: dict[str, list[dict[str, Any]]] = {}
        for (rtype, _), r in self.resources.items():
            if rtype not in types:
                continue
            if patients is not None and rtype != "Location" and not self._in_group(r, patients):
                continue
            if rtype in filters and not any(self._matches(r, p) for p in filters[rtype]):
                continue
            updated = (r.get("meta") or {}).get("lastUpdated")
            if since is not None and updated and parse_datetime(updated, "meta.lastUpdated") < since:
                continue
            output.setdefault(rtype, []).append(r)
        job = uuid.uuid4().hex
        self.exports[job] = {"output": output, "polls": self.export_polls, "request": str(request.url)}
        status_url = f"{self._base(request)}/$export-status/{job}"
        return Response(status_code=202, headers={"Content-Location": status_url, "Location": status_url})

    async def _export_status(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        job = self.exports.get(request.path_params["job"])
        if job is None:
            return _outcome(404, "no such export")
        if request.method == "DELETE":
            del self.exports[request.path_params["job"]]
            return Response(status_code=202)
        if job["polls"] > 0:
            job["polls"] -= 1
            return Response(
                status_code=202,
                headers={"Retry-After": str(self.export_retry_after), "X-Progress": "in progress"},
            )
        base = str(request.base_url).rstrip("/")  # a proxy rewrites our own base in bodies
        manifest = {
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": job["request"],
            "requiresAccessToken": True,
            "output": [
                {
                    "type": rtype,
                    "url": f"{base}/$export-file/{request.path_params['job']}/{rtype}.ndjson",
                    "count": len(found),
                }
                for rtype, found in sorted(job["output"].items())
            ],
            "error": [],
        }
        return JSONResponse(manifest)

    async def _export_file(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        job = self.exports.get(request.path_params["job"])
        rtype = request.path_params["name"].removesuffix(".ndjson")
        if job is None or rtype not in job["output"]:
            return _outcome(404, "no such file")
        body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in job["output"][rtype])
        return Response(body, media_type="application/fhir+ndjson")
