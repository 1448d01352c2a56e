"""The demo EHR's web page, like the CDS Hooks sandbox: pick an ICU patient (patient-view, the
sepsis service) or a discharge (encounter-discharge, the readmission service), see the cards our
CDS service returns rendered as an EHR renders them (summary, indicator, detail Markdown,
suggestions, override reasons, links), send the clinician's decision back as CDS Hooks feedback
(accept a suggestion, or override with one of the card's reasons), and launch the explanation
app from a card's SMART link through a real SMART authorization server (the reference launcher),
as an EHR launches apps: `<link url>&launch=<launch>&iss=<FHIR base>`."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from .diabetes_fhir import DischargeResources
from .ehr_identity import EhrIdentity, EhrJwtAuth
from .hook_requests import discharge_hook_request, patient_view_request
from .physionet_fhir import StayResources

__all__ = ["DemoPatient", "demo_ehr_web", "markdown_html"]

_STYLE = (
    "body{font:16px/1.45 system-ui,sans-serif;margin:0;color:#1a1a1a}"
    "header{background:#203a5c;color:#fff;padding:10px 18px}"
    "main{max-width:1000px;margin:0 auto;padding:12px 18px}a{color:#1f4e79}"
    ".card{border:1px solid #ccc;border-left:6px solid #888;padding:8px 14px;margin:12px 0;border-radius:4px}"
    ".card.warning{border-left-color:#c77700}.card.critical{border-left-color:#b00020}"
    ".card.info{border-left-color:#1f4e79}.indicator{font-size:.8rem;text-transform:uppercase;font-weight:700}"
    ".smart{display:inline-block;background:#1f4e79;color:#fff;padding:6px 12px;border-radius:4px;"
    "text-decoration:none}"
    "li{margin:2px 0}.muted{color:#5a5a5a;font-size:.9rem}fieldset{border:1px solid #ccc;border-radius:4px}"
    "button{font:inherit;padding:4px 12px}"
    ".recorded{background:#e8f3e8;border:1px solid #7aa87a;padding:6px 10px}"
)
_COMMENT_MAX = 500


@dataclass(frozen=True)
class DemoPatient:
    label: str  # what the EHR's patient list shows
    stay: StayResources | DischargeResources

    @property
    def service(self) -> str:
        return "readmission-risk" if isinstance(self.stay, DischargeResources) else "sepsis-risk"

    def hook_request(self, fhir_server: str) -> dict[str, Any]:
        if isinstance(self.stay, DischargeResources):
            return discharge_hook_request(self.stay, fhir_server=fhir_server)
        return patient_view_request(self.stay, fhir_server=fhir_server)


def markdown_html(text: str) -> str:
    """The little Markdown our cards use: paragraphs, `- ` lists, **bold**, _italics_."""
    out: list[str] = []
    in_list = False
    for line in text.splitlines():
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(line))
        escaped = re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"<em>\1</em>", escaped)
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{escaped[2:]}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.strip():
            out.append(f"<p>{escaped}</p>")
    if in_list:
        out.append("</ul>")
    return "".join(out)


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta '
        f'charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>'
        "<body><header><strong>Demo EHR</strong> · a stand-in for an EHR calling the CDS "
        f"service</header><main>{body}</main></body></html>"
    )


def _feedback_form(card: dict[str, Any], index: int) -> str:
    """The clinician's decision on the card, sent by the EHR as CDS Hooks feedback."""
    choices = [
        f'<li><label><input type="radio" name="decision" value="accept:{i}" required> '
        f"Accept: {html.escape(s['label'])}</label></li>"
        for i, s in enumerate(card.get("suggestions", []))
    ]
    choices += [
        f'<li><label><input type="radio" name="decision" value="override:{i}" required> '
        f"Override: {html.escape(r['display'])}</label></li>"
        for i, r in enumerate(card.get("overrideReasons", []))
    ]
    if not choices:
        return ""
    return (
        f'<form method="post" action="/patient/{index}/feedback" class="feedback"><fieldset>'
        f"<legend>Your decision (sent to the CDS service as feedback)</legend>"
        f'<input type="hidden" name="card" value="{html.escape(card["uuid"])}">'
        f'<ul style="list-style:none;padding-left:0">{"".join(choices)}</ul>'
        f'<label>Comment (optional, no patient identifiers)<br><textarea name="comment" rows="2" cols="60" '
        f'maxlength="{_COMMENT_MAX}"></textarea></label><br>'
        '<button type="submit">Send feedback</button></fieldset></form>'
    )


def feedback_item(card: dict[str, Any], decision: str, comment: str | None, at: datetime) -> dict[str, Any]:
    """One CDS Hooks feedback item for `decision` (`accept:<i>` or `override:<i>`) on `card`."""
    kind, _, number = decision.partition(":")
    i = int(number) if number.isdigit() else -1
    item: dict[str, Any] = {"card": card["uuid"], "outcomeTimestamp": at.isoformat()}
    suggestions, reasons = card.get("suggestions", []), card.get("overrideReasons", [])
    if kind == "accept" and 0 <= i < len(suggestions):
        item.update(outcome="accepted", acceptedSuggestions=[{"id": suggestions[i]["uuid"]}])
    elif kind == "override" and 0 <= i < len(reasons):
        reason: dict[str, Any] = {"reason": reasons[i]}
        if comment:
            reason["userComment"] = comment[:_COMMENT_MAX]
        item.update(outcome="overridden", overrideReason=reason)
    else:
        raise ValueError("no such choice on this card")
    return item


def _card_html(
    card: dict[str, Any], launch: Callable[[str], str | None], index: int, recorded: str | None = None
) -> str:
    parts = [
        f'<section class="card {html.escape(card.get("indicator", "info"))}"><div '
        f'class="indicator">{html.escape(card.get("indicator", ""))}</div>',
        f"<h3>{html.escape(card['summary'])}</h3>",
        markdown_html(card.get("detail", "")),
        f'<p class="muted">Source: {html.escape(card.get("source", {}).get("label", ""))}</p>',
    ]
    suggestions = card.get("suggestions", [])
    if suggestions:
        parts.append(
            "<h4>Suggestions</h4><ul>"
            + "".join(f"<li>{html.escape(s['label'])}</li>" for s in suggestions)
            + "</ul>"
        )
    reasons = card.get("overrideReasons", [])
    if reasons:
        parts.append(
            "<h4>Override reasons offered</h4><ul>"
            + "".join(f"<li>{html.escape(r['display'])}</li>" for r in reasons)
            + "</ul>"
        )
    for link in card.get("links", []):
        target = launch(link["url"]) if link.get("type") == "smart" else link["url"]
        if target is None:
            parts.append(
                f'<p class="muted">{html.escape(link["label"])}: needs the SMART launcher (not running)</p>'
            )
        else:
            parts.append(
                '<p><a class="smart" id="smart-link" '
                f'href="{html.escape(target)}">{html.escape(link["label"])}</a></p>'
            )
    if recorded:
        parts.append(f'<p class="recorded" role="status">{html.escape(recorded)}</p>')
    parts.append(_feedback_form(card, index))
    return "".join(parts) + "</section>"


def demo_ehr_web(
    patients: Sequence[DemoPatient],
    *,
    cds_url: str,
    identity: EhrIdentity,
    fhir_server: str,
    launch: Callable[[DemoPatient, str], str | None],
) -> Starlette:
    """`launch(patient, link_url)`: the URL the EHR opens for a card's SMART link (None: no
    authorization server to launch through)."""

    cards_seen: dict[str, tuple[str, dict[str, Any]]] = {}  # card uuid -> (service, card), as EHRs keep them

    async def index(request: Request) -> HTMLResponse:
        def rows(kind: type) -> str:
            return "".join(
                f'<li><a href="/patient/{i}">{html.escape(p.label)}</a></li>'
                for i, p in enumerate(patients)
                if isinstance(p.stay, kind)
            )

        discharges = rows(DischargeResources)
        return _page(
            "Demo EHR",
            "<h1>ICU patients</h1><p>Open a chart: the EHR calls the sepsis service (patient-view).</p>"
            f"<ul>{rows(StayResources)}</ul>"
            + (
                "<h1>Discharges</h1><p>Discharge a patient: the EHR calls the readmission service "
                f"(encounter-discharge).</p><ul>{discharges}</ul>"
                if discharges
                else ""
            ),
        )

    def _client() -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=15, auth=EhrJwtAuth(identity), trust_env=False)

    async def _chart(index_: int) -> HTMLResponse:
        patient = patients[index_]
        body = patient.hook_request(fhir_server)
        async with _client() as client:
            answer = await client.post(f"{cds_url}/cds-services/{patient.service}", json=body)
        if answer.status_code != 200:
            cards_html = f"<p>The CDS service answered HTTP {answer.status_code}.</p>"
        else:
            cards = answer.json().get("cards", [])
            for c in cards:
                cards_seen[c["uuid"]] = (patient.service, c)
            cards_html = (
                "".join(_card_html(c, lambda url: launch(patient, url), index_) for c in cards)
                or "<p>No card: no guidance for this patient.</p>"
            )
        return _page(
            patient.label,
            f'<p><a href="/">All patients</a></p><h1>{html.escape(patient.label)}</h1>{cards_html}',
        )

    async def chart(request: Request) -> HTMLResponse:
        index_ = int(request.path_params["index"])
        if not 0 <= index_ < len(patients):
            return _page("Not found", "<h1>No such patient</h1>")
        return await _chart(index_)

    async def feedback(request: Request) -> HTMLResponse:
        """The clinician's decision, sent as CDS Hooks feedback the way an EHR sends it."""
        index_ = int(request.path_params["index"])
        form = parse_qs((await request.body())[:8192].decode("utf-8", "replace"), max_num_fields=8)
        card_uuid = (form.get("card") or [""])[0]
        if not 0 <= index_ < len(patients) or card_uuid not in cards_seen:
            return _page("Not found", "<h1>No such card</h1>")
        service, card = cards_seen[card_uuid]
        try:
            item = feedback_item(
                card, (form.get("decision") or [""])[0], (form.get("comment") or [None])[0], datetime.now(UTC)
            )
        except ValueError:
            return _page("Not sent", "<h1>Choose one of the card's options</h1>")
        async with _client() as client:
            answer = await client.post(
                f"{cds_url}/cds-services/{service}/feedback", json={"feedback": [item]}
            )
        what = "accepted" if item["outcome"] == "accepted" else "overridden"
        note = (
            f"Feedback recorded by the CDS service ({what})."
            if answer.status_code == 200
            else f"The CDS service refused the feedback (HTTP {answer.status_code})."
        )
        # The card the decision was about, as the EHR keeps showing it (a new hook call: a new card).
        patient = patients[index_]
        return _page(
            patient.label,
            f'<p><a href="/">All patients</a> · <a href="/patient/{index_}">Reopen the chart</a></p>'
            f"<h1>{html.escape(patient.label)}</h1>"
            + _card_html(card, lambda url: launch(patient, url), index_, note),
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/patient/{index:int}", chart),
            Route("/patient/{index:int}/feedback", feedback, methods=["POST"]),
        ]
    )
