"""HTTP routes of the SMART explanation app, under /smart/. Each handler is a few lines over
`SmartApp`; errors are `SmartError`s, which cds/app.py's one CDSError handler renders as pages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.responses import FileResponse, Response

from hooks import SERVICES

from ..bodies import read_body
from .app import SmartApp
from .errors import CardNotFound, MissingLaunchContext
from .explain import trend_svg, waterfall_svg
from .model_card import model_brief, model_card_text
from .pages import SVG_CSP, app_page, page_headers

__all__ = ["router", "smart_app"]

router = APIRouter(prefix="/smart", include_in_schema=False)
_STATIC = Path(__file__).parent / "static"
_MAX_FORM_BYTES = 16 * 1024


def smart_app(request: Request) -> SmartApp:
    return request.app.state.smart  # type: ignore[no-any-return]


SmartDep = Annotated[SmartApp, Depends(smart_app)]


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


@router.get("/launch")
async def launch(request: Request, app: SmartDep) -> Response:
    q = request.query_params
    url = await app.launch(
        iss=q.get("iss"), launch=q.get("launch"), card=q.get("card"), request_base=_base(request)
    )
    return RedirectResponse(url, status_code=302, headers={"Referrer-Policy": "no-referrer"})


@router.get("/callback")
async def callback(request: Request, app: SmartDep) -> Response:
    handle = await app.callback(dict(request.query_params))
    return RedirectResponse(
        f"/smart/app/{handle}", status_code=303, headers={"Referrer-Policy": "no-referrer"}
    )


@router.get("/app/{handle}")
async def page(handle: str, app: SmartDep) -> Response:
    started = time.perf_counter()
    session = await app.session(handle)
    record, view = await app.card(session)
    service = SERVICES[record.service_id]
    model = app.models.get(service.model_name)
    if model is None:
        raise CardNotFound("the card's model is not loaded")
    trend, trend_error = await app.trend(session, view)
    response = app_page(
        handle=handle,
        view=view,
        title=service.title,
        threshold=model.threshold,
        trend=trend,
        trend_error=trend_error,
        model=model_brief(model, app.settings.model_dir),
        reasons=[r.coding() for r in service.override_reasons],
        can_agree=bool(record.suggestion_uuids),
        recorded=session.recorded,
        comment_max_chars=app.settings.feedback_comment_max_chars,
        frame_origins=app.frame_origins(session.iss),
    )
    response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - started):.1f}"
    return response


def _svg(body: bytes) -> Response:
    return Response(body, media_type="image/svg+xml", headers={"Content-Security-Policy": SVG_CSP})


@router.get("/app/{handle}/waterfall.svg")
async def waterfall(handle: str, app: SmartDep) -> Response:
    session = await app.session(handle)
    if "waterfall" not in session.pictures:
        _, view = await app.card(session)
        session.pictures["waterfall"] = await asyncio.to_thread(waterfall_svg, view)
    return _svg(session.pictures["waterfall"])


@router.get("/app/{handle}/trend.svg")
async def trend(handle: str, app: SmartDep) -> Response:
    session = await app.session(handle)
    _, view = await app.card(session)
    found, _ = await app.trend(session, view)
    if found is None:
        raise CardNotFound("no trend for this card")
    if "trend" not in session.pictures:
        session.pictures["trend"] = await asyncio.to_thread(
            trend_svg, found.hours, found.probabilities, found.threshold, card_hour=view.icu_hour
        )
    return _svg(session.pictures["trend"])


@router.post("/app/{handle}/feedback")
async def feedback(handle: str, request: Request, app: SmartDep) -> Response:
    session = await app.session(handle)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise MissingLaunchContext("the decision must be sent from the app's form")
    form = parse_qs((await read_body(request, _MAX_FORM_BYTES)).decode("utf-8", "replace"), max_num_fields=8)
    decision = (form.get("decision") or [""])[0]
    comment = (form.get("comment") or [None])[0]
    record, _ = await app.card(session)
    await app.record(session, record, decision, comment)
    return RedirectResponse(
        f"/smart/app/{handle}#feedback", status_code=303, headers={"Referrer-Policy": "no-referrer"}
    )


@router.get("/static/app.css")
async def stylesheet() -> Response:
    return FileResponse(
        _STATIC / "app.css", media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get("/model-card/{name}/{version}")
async def model_card(name: str, version: str, app: SmartDep) -> Response:
    known = {(m.name, m.version) for m in app.models.values()}
    text = model_card_text(app.settings.model_dir, name, version) if (name, version) in known else None
    if text is None:
        raise CardNotFound("no such model card")
    return PlainTextResponse(text, headers=page_headers(app.frame_origins()))
