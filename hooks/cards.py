"""Building CDS Hooks cards for a risk score: summary, indicator, Markdown detail, source.

Pure: the caller passes the card uuid and every value. Nothing here emits `null` or an empty
string, list or object (CDS Hooks forbids them): optional fields are left out instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from .service import Service

__all__ = [
    "CARD_EXTENSION",
    "Driver",
    "RiskCardText",
    "build_risk_card",
    "driver_line",
    "explanation_link",
    "format_percent",
    "format_value",
    "strip_empty",
]

CARD_EXTENSION = "org.cds-ml.risk"  # reverse-DNS key of our data inside card.extension

_UNIT_DISPLAY = {
    "Cel": "°C",
    "mm[Hg]": "mmHg",
    "10*3/uL": "×10³/µL",
    "[pH]": "",
    "1": "",
    "a": "years",
    "/min": "/min",
}


class Driver(Protocol):
    """One feature's contribution (models.Contribution satisfies it)."""

    @property
    def feature(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def shap(self) -> float: ...


def format_percent(probability: float) -> str:
    pct = 100.0 * probability
    if pct < 0.1:
        return "<0.1%"
    if pct < 10:
        return f"{pct:.1f}%"
    return f"{pct:.0f}%"


def format_value(feature: str, value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    if feature == "Gender":
        return "male" if value >= 0.5 else "female"
    if feature in ("Unit1", "Unit2"):
        return "yes" if value >= 0.5 else "no"
    magnitude = abs(value)
    text = (
        f"{value:.0f}"
        if magnitude >= 100 or float(value).is_integer()
        else f"{value:.3g}"
        if magnitude < 1
        else f"{value:.1f}"
    )
    shown = _UNIT_DISPLAY.get(unit, unit)
    return f"{text} {shown}".strip()


def driver_line(driver: Driver) -> str:
    arrow = "↑" if driver.shap > 0 else "↓"
    effect = "raises" if driver.shap > 0 else "lowers"
    value = format_value(driver.feature, driver.value, driver.unit)
    return f"- {arrow} **{driver.label}**: {value} ({effect} risk)"


def strip_empty(value: Any) -> Any:
    """Drop None and empty strings, lists and objects, recursively."""
    if isinstance(value, dict):
        cleaned = {k: strip_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        cleaned_list = [strip_empty(v) for v in value]
        return [v for v in cleaned_list if v not in (None, "", [], {})]
    return value


def explanation_link(
    launch_url: str, *, card_uuid: str, service_id: str, model_version: str | None = None
) -> dict[str, Any]:
    """A `smart` link to our explanation app. `appContext` (a string, per CDS Hooks) names the card;
    the card uuid is in the URL too, for EHRs that drop appContext."""
    context = {
        "cardUuid": card_uuid,
        "serviceId": service_id,
        **({"modelVersion": model_version} if model_version else {}),
    }
    separator = "&" if "?" in launch_url else "?"
    return {
        "label": "Explain this score",
        "url": f"{launch_url}{separator}card={quote(card_uuid, safe='')}",
        "type": "smart",
        "appContext": json.dumps(context, separators=(",", ":"), sort_keys=True),
    }


@dataclass(frozen=True)
class RiskCardText:
    summary: str  # < 140 characters
    headline: str  # first line of the detail
    footer: str


def build_risk_card(
    *,
    card_uuid: str,
    service: Service,
    band: str,
    probability: float,
    threshold: float,
    model_label: str,
    model_version: str,
    text: RiskCardText,
    drivers: Sequence[Driver],
    all_contributions: Iterable[Driver],
    base_value: float,
    extra: dict[str, Any] | None = None,
    suggestions: Sequence[dict[str, Any]] = (),
    links: Sequence[dict[str, Any]] = (),
    selection_behavior: str = "at-most-one",
) -> dict[str, Any]:
    """`suggestions` and `links` are CDS Hooks Suggestion and Link objects, passed through
    (each suggestion should carry its own `uuid`); `selectionBehavior` is set when there are any."""
    if len(text.summary) >= 140:
        raise ValueError("card summary must be shorter than 140 characters")
    lines = [text.headline, ""]
    if drivers:
        lines += ["**What drives this score** (SHAP):", ""]
        lines += [driver_line(d) for d in drivers]
        lines.append("")
    lines.append(text.footer)
    contributions = [
        {
            "feature": c.feature,
            "shap": round(c.shap, 6),
            **({"value": round(c.value, 6)} if c.value is not None else {}),
        }
        for c in all_contributions
        if c.shap != 0.0
    ]
    data: dict[str, Any] = {
        "probability": float(probability),
        "threshold": round(float(threshold), 6),
        "band": band,
        "model": service.model_name,
        "modelVersion": model_version,
        "shap": {"baseValue": round(base_value, 6), "unit": "log-odds", "contributions": contributions},
        **(extra or {}),
    }
    card = {
        "uuid": card_uuid,
        "summary": text.summary,
        "indicator": service.indicators[band],
        "detail": "\n".join(lines),
        "source": {"label": f"{model_label} v{model_version}"},
        "overrideReasons": [r.coding() for r in service.override_reasons],
        "suggestions": list(suggestions),
        "selectionBehavior": selection_behavior if suggestions else None,
        "links": list(links),
        "extension": {CARD_EXTENSION: data},
    }
    stripped: dict[str, Any] = strip_empty(card)
    return stripped
