"""The app's HTML: server-rendered, no script, every asset ours (no CDN), one stylesheet.

Every page carries a strict Content-Security-Policy (nothing but our own styles and images; forms
post only to us; framing only by the configured EHR origins), `Referrer-Policy: no-referrer` (the
session handle in our URLs never leaves in a Referer) and no cookie.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from starlette.responses import HTMLResponse, Response

from hooks.drivers import ClinicalDriver, driver_parts, gap_phrase, value_words

from .errors import SmartError
from .explain import UNIT_WORDS, CardView

__all__ = ["SVG_CSP", "app_page", "content_security_policy", "error_page", "page_headers"]

SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"  # an SVG image: no script, its own inline styles
_BAND_WORDS = {
    "very-high": "well above the alert threshold",
    "high": "above the alert threshold",
    "moderate": "elevated, below the alert threshold",
    "low": "below the alert threshold",
}
_LABELS = {
    "HR": "Heart rate",
    "O2Sat": "SpO2",
    "Temp": "Temperature",
    "SBP": "Systolic BP",
    "MAP": "Mean arterial pressure",
    "DBP": "Diastolic BP",
    "Resp": "Respiratory rate",
    "EtCO2": "End-tidal CO2",
    "BaseExcess": "Base excess",
    "HCO3": "Bicarbonate",
    "FiO2": "FiO2",
    "pH": "pH",
    "PaCO2": "PaCO2",
    "SaO2": "SaO2",
    "AST": "AST",
    "BUN": "BUN",
    "Alkalinephos": "Alkaline phosphatase",
    "Calcium": "Calcium",
    "Chloride": "Chloride",
    "Creatinine": "Creatinine",
    "Bilirubin_direct": "Direct bilirubin",
    "Glucose": "Glucose",
    "Lactate": "Lactate",
    "Magnesium": "Magnesium",
    "Phosphate": "Phosphate",
    "Potassium": "Potassium",
    "Bilirubin_total": "Total bilirubin",
    "TroponinI": "Troponin I",
    "Hct": "Hematocrit",
    "Hgb": "Hemoglobin",
    "PTT": "PTT",
    "WBC": "White blood cells",
    "Fibrinogen": "Fibrinogen",
    "Platelets": "Platelets",
}


def content_security_policy(frame_origins: Iterable[str]) -> str:
    ancestors = " ".join(["'self'", *sorted(set(frame_origins))])
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
        f"frame-ancestors {ancestors}"
    )


def page_headers(frame_origins: Iterable[str]) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(frame_origins),
        "Referrer-Policy": "no-referrer",
    }


def _layout(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><link rel="stylesheet" href="/smart/static/app.css"></head>'
        f'<body><main id="main">{body}</main></body></html>'
    )


def error_page(error: SmartError, frame_origins: Iterable[str]) -> Response:
    body = (
        f'<section class="error" role="alert"><h1>{escape(error.title)}</h1>'
        f'<p>{escape(error.advice)}</p><p class="muted">Reference: {escape(error.code)}</p></section>'
    )
    return HTMLResponse(
        _layout(error.title, body), status_code=error.status, headers=page_headers(frame_origins)
    )


def _pct(p: float) -> str:
    return f"{100 * p:.1f} %"


def _num(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return escape(f"{text} {UNIT_WORDS.get(unit, unit)}".strip())


def _latest(d: ClinicalDriver) -> str:
    """The driver in clinical words; a gap in the data said plainly."""
    if not d.recent:
        return f"<strong>{escape(gap_phrase(d))}</strong> (the score leans on the gap)"
    if d.value is None:
        when = f"measured {d.hours_ago:.0f} h ago; " if d.hours_ago is not None else ""
        return f"{when}latest value not recorded with this card"
    _, rest = driver_parts(d)
    return escape(", ".join((value_words(d.variable, d.value, d.unit), *rest)))


def _drivers_table(view: CardView, top: int = 8) -> str:
    rows = []
    for d in view.drivers[:top]:
        effect = "raises risk" if d.shap > 0 else "lowers risk"
        arrow = "↑" if d.shap > 0 else "↓"
        rows.append(
            f'<tr><th scope="row">{escape(d.label)}</th><td>{_latest(d)}</td>'
            f'<td class="num">{d.shap:+.3f}</td><td>{arrow} {effect}</td></tr>'
        )
    return (
        '<table class="drivers"><caption>Largest drivers, each clinical variable\'s features summed '
        "(log-odds)</caption>"
        '<thead><tr><th scope="col">Variable</th><th scope="col">Latest value</th><th '
        'scope="col">Contribution</th>'
        f'<th scope="col">Effect</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _exact_table(view: CardView) -> str:
    rows = [
        f"<tr><td><code>{escape(c.feature)}</code></td><td>{escape(c.label)}</td>"
        f'<td class="num">{_num(c.value)}</td><td class="num">{c.shap:+.4f}</td></tr>'
        for d in view.drivers
        for c in d.features
    ]
    if view.other:
        rows.append(
            '<tr><td colspan="3">Features not stored one by one</td><td '
            f'class="num">{view.other:+.4f}</td></tr>'
        )
    return (
        "<details><summary>Exact per-feature SHAP contributions</summary>"
        f"<p>Base value {view.base_value:+.4f} + contributions = model margin {view.margin:+.4f} "
        "(log-odds).</p>"
        '<table class="exact"><thead><tr><th scope="col">Feature</th><th scope="col">Meaning</th><th '
        'scope="col">Value</th>'
        f'<th scope="col">SHAP</th></tr></thead><tbody>{"".join(rows)}</tbody></table></details>'
    )


def _trend_section(handle: str, trend: Any, trend_error: str | None, view: CardView) -> str:
    if trend is None:
        once = "This model scores once, at discharge: there is no hourly trend."
        why = trend_error or (once if view.service_id != "sepsis-risk" else "No ICU stay to trend.")
        return (
            '<section aria-labelledby="trend"><h2 id="trend">Risk over the stay</h2>'
            f'<p class="muted">{escape(why)}</p></section>'
        )
    above = sum(p >= trend.threshold for p in trend.probabilities)
    measured = []
    missing = []
    for name, hour in trend.last_measured.items():
        label = _LABELS.get(name, name)
        if hour is None:
            missing.append(label)
        else:
            measured.append((trend.current_hour - hour, label))
    measured.sort()
    rows = "".join(
        f'<tr><th scope="row">{escape(label)}</th><td>{"this hour" if ago == 0 else f"{ago} h ago"}</td></tr>'
        for ago, label in measured
    )
    return (
        '<section aria-labelledby="trend"><h2 id="trend">Risk over the stay</h2>'
        f'<img class="chart" src="/smart/app/{escape(handle)}/trend.svg" width="720" height="250" '
        f"alt=\"Sepsis risk for each of {len(trend.hours)} ICU hours, re-scored from the EHR's data; "
        f"{above} hours at or above the alert threshold of {_pct(trend.threshold)}; latest "
        f'{_pct(trend.probabilities[-1])}.">'
        f"<p>Re-scored hour by hour from the EHR's current data (ICU hour {trend.current_hour} now). "
        f"{above} of {len(trend.hours)} hours at or above the alert threshold.</p>"
        '<h3>Last measured</h3><table class="measured"><tbody>'
        + rows
        + "</tbody></table>"
        + (
            f"<p><strong>Not measured during this stay:</strong> {escape(', '.join(missing))}.</p>"
            if missing
            else ""
        )
        + "</section>"
    )


def _model_section(model: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in model["facts"])
    limits = "".join(f"<li>{escape(x)}</li>" for x in model["limits"])
    bands = "".join(
        f'<tr><th scope="row">{escape(b["band"])}</th><td>{escape(b["range"])}</td>'
        f"<td>{escape(b['level'])}</td>"
        f'<td class="num">{escape(b["ppv"])}</td><td class="num">{escape(b["sensitivity"])}</td></tr>'
        for b in model.get("bands", ())
    )
    band_table = (
        '<table class="bands"><caption>Risk bands: PPV (share of patients scored in the band who had the '
        "outcome) and sensitivity (share of all who had it scored in the band or above), measured on "
        f"{escape(model.get('bands_measured_on', ''))}</caption>"
        '<thead><tr><th scope="col">Band</th><th scope="col">Risk</th><th scope="col">Card</th>'
        f'<th scope="col">PPV</th><th scope="col">Sensitivity</th></tr></thead><tbody>{bands}</tbody></table>'
        if bands
        else ""
    )
    return (
        '<section aria-labelledby="model"><h2 id="model">About the model</h2>'
        f"<dl>{items}</dl>{band_table}"
        + (f"<h3>Known limits</h3><ul>{limits}</ul>" if limits else "")
        + f'<p><a href="{escape(model["card_url"])}">Full model card</a></p></section>'
    )


def _feedback_section(
    handle: str, reasons: Sequence[Mapping[str, str]], can_agree: bool, recorded: str | None, max_chars: int
) -> str:
    options = []
    if can_agree:
        options.append(
            '<li><label><input type="radio" name="decision" value="agree" required> Agree: accept the '
            "card's suggestion</label></li>"
        )
    for i, r in enumerate(reasons):
        options.append(
            f'<li><label><input type="radio" name="decision" value="override:{i}" required> Override: '
            f"{escape(r['display'])}</label></li>"
        )
    done = f'<p class="recorded" role="status">Recorded: {escape(recorded)}.</p>' if recorded else ""
    agree_note = (
        ""
        if can_agree
        else '<p class="muted">This card offered no suggestion, so agreement has nothing to accept; '
        "overrides are recorded.</p>"
    )
    return (
        f'<section aria-labelledby="feedback"><h2 id="feedback">Your decision</h2>{done}{agree_note}'
        f'<form method="post" action="/smart/app/{escape(handle)}/feedback"><fieldset><legend>Decision on '
        "this card</legend>"
        f'<ul class="choices">{"".join(options)}</ul></fieldset>'
        f'<label for="comment">Comment (optional, no patient identifiers)</label>'
        f'<textarea id="comment" name="comment" rows="2" maxlength="{max_chars}"></textarea>'
        '<button type="submit">Record decision</button></form></section>'
    )


def app_page(
    *,
    handle: str,
    view: CardView,
    title: str,
    threshold: float,
    trend: Any,
    trend_error: str | None,
    model: Mapping[str, Any],
    reasons: Sequence[Mapping[str, str]],
    can_agree: bool,
    recorded: str | None,
    comment_max_chars: int,
    frame_origins: Iterable[str],
) -> Response:
    band = view.band
    when = f"ICU hour {view.icu_hour}, " if view.icu_hour is not None else ""
    body = (
        f"<header><h1>{escape(title)}</h1>"
        f'<p class="score band-{escape(band)}"><span class="risk">{_pct(view.probability)}</span> '
        f'<span class="band">{escape(band)} risk: {escape(_BAND_WORDS.get(band, band))} '
        f"({_pct(threshold)})</span></p>"
        f'<p class="muted">Scored {escape(when)}{escape(view.occurrence[:16].replace("T", " "))} UTC by '
        f"model {escape(view.model_name)} "
        f"v{escape(view.model_version)}.</p></header>"
        '<section aria-labelledby="why"><h2 id="why">What drives this score</h2>'
        f'<img class="chart" src="/smart/app/{escape(handle)}/waterfall.svg" width="720" height="480" '
        f'alt="SHAP waterfall from the average patient (log-odds {view.base_value:+.2f}) to this patient '
        f"({view.margin:+.2f}); "
        f'the drivers are listed in the table below.">'
        '<p class="muted">Log-odds of the outcome: E[f(X)] is the model\'s average patient, f(x) this '
        "patient; red bars raise "
        "the risk, blue bars lower it.</p>"
        f"{_drivers_table(view)}{_exact_table(view)}</section>"
        f"{_trend_section(handle, trend, trend_error, view)}{_model_section(model)}"
        f"{_feedback_section(handle, reasons, can_agree, recorded, comment_max_chars)}"
    )
    return HTMLResponse(_layout(title, body), headers=page_headers(frame_origins))
