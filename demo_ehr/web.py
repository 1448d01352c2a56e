"""The demo EHR's web page, like the CDS Hooks sandbox: pick a patient, see the cards our CDS
service returns rendered as an EHR renders them (summary, indicator, detail Markdown,
suggestions, override reasons, links), and launch the explanation app from a card's SMART link
through a real SMART authorization server (the reference launcher), as an EHR launches apps:
`<link url>&launch=<launch>&iss=<FHIR base>`."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from .ehr_identity import EhrIdentity, EhrJwtAuth
from .hook_requests import patient_view_request
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
    "li{margin:2px 0}.muted{color:#5a5a5a;font-size:.9rem}"
)


@dataclass(frozen=True)
class DemoPatient:
    label: str  # what the EHR's patient list shows
    stay: StayResources


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


def _card_html(card: dict[str, Any], launch: Callable[[str], str | None]) -> str:
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

    async def index(request: Request) -> HTMLResponse:
        rows = "".join(
            f'<li><a href="/patient/{i}">{html.escape(p.label)}</a></li>' for i, p in enumerate(patients)
        )
        return _page(
            "Demo EHR",
            "<h1>ICU patients</h1><p>Open a chart: the EHR calls the CDS service "
            f"(patient-view).</p><ul>{rows}</ul>",
        )

    async def chart(request: Request) -> HTMLResponse:
        index_ = int(request.path_params["index"])
        if not 0 <= index_ < len(patients):
            return _page("Not found", "<h1>No such patient</h1>")
        patient = patients[index_]
        body = patient_view_request(patient.stay, fhir_server=fhir_server)
        async with httpx.AsyncClient(timeout=15, auth=EhrJwtAuth(identity), trust_env=False) as client:
            answer = await client.post(f"{cds_url}/cds-services/sepsis-risk", json=body)
        if answer.status_code != 200:
            cards_html = f"<p>The CDS service answered HTTP {answer.status_code}.</p>"
        else:
            cards = answer.json().get("cards", [])
            cards_html = (
                "".join(_card_html(c, lambda url: launch(patient, url)) for c in cards)
                or "<p>No card: no guidance for this patient.</p>"
            )
        return _page(
            patient.label,
            f'<p><a href="/">All patients</a></p><h1>{html.escape(patient.label)}</h1>{cards_html}',
        )

    return Starlette(routes=[Route("/", index), Route("/patient/{index:int}", chart)])
