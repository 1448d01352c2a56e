"""Building CDS Hooks cards for a risk score: summary, indicator, Markdown detail, source.

Pure: the caller passes the card uuid and every value. Nothing here emits `null` or an empty
string, list or object (CDS Hooks forbids them): optional fields are left out instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .drivers import ClinicalDriver, driver_parts, driver_phrase, gap_phrase, value_words
from .drivers import Contribution as Driver
from .service import Service

__all__ = [
    "CARD_EXTENSION",
    "Driver",
    "RiskCardText",
    "build_risk_card",
    "driver_line",
    "driver_lines",
    "gap_line",
    "explanation_link",
    "format_percent",
    "format_value",
    "strip_empty",
]

CARD_EXTENSION = "org.cds-ml.risk"  # reverse-DNS key of our data inside card.extension


def format_percent(probability: float) -> str:
    pct = 100.0 * probability
    if pct < 0.1:
        return "<0.1%"
    if pct < 10:
        return f"{pct:.1f}%"
    return f"{pct:.0f}%"


format_value = value_words  # the name the cards used before drivers were grouped


def _effect(shap: float) -> tuple[str, str]:
    return ("↑", "raises risk") if shap > 0 else ("↓", "lowers risk")


def driver_line(driver: ClinicalDriver) -> str:
    """'- ↑ **Lactate 3.1 mmol/L**, 2 h ago, rising (raises risk)'."""
    arrow, effect = _effect(driver.shap)
    name, rest = driver_parts(driver)
    return f"- {arrow} **{name}**{''.join(', ' + r for r in rest)} ({effect})"


def gap_line(driver: ClinicalDriver) -> str:
    """'- ↑ no lactate in 24 h (last 30 h ago) (raises risk)'."""
    arrow, effect = _effect(driver.shap)
    return f"- {arrow} {gap_phrase(driver)} ({effect})"


def driver_lines(drivers: Sequence[ClinicalDriver], gaps: Sequence[ClinicalDriver]) -> list[str]:
    """The card's explanation: the drivers measured, then, apart, what the score leans on not having."""
    lines: list[str] = []
    if drivers:
        lines += ["**What drives this score** (SHAP, each clinical variable's features summed):", ""]
        lines += [driver_line(d) for d in drivers]
        lines.append("")
    if gaps:
        lines += ["**Not measured** (the score also leans on these gaps in the data):", ""]
        lines += [gap_line(d) for d in gaps]
        lines.append("")
    return lines


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
    level: str,
    probability: float,
    threshold: float,
    model_label: str,
    model_version: str,
    text: RiskCardText,
    drivers: Sequence[ClinicalDriver],
    gaps: Sequence[ClinicalDriver] = (),
    all_contributions: Iterable[Driver],
    base_value: float,
    extra: dict[str, Any] | None = None,
    band_validation: dict[str, Any] | None = None,
    suggestions: Sequence[dict[str, Any]] = (),
    links: Sequence[dict[str, Any]] = (),
    selection_behavior: str = "at-most-one",
) -> dict[str, Any]:
    """`level` is the band's (models.bands) and sets the indicator; `band_validation` the band's
    PPV and sensitivity on validation data. `suggestions` and `links` are CDS Hooks Suggestion
    and Link objects, passed through
    (each suggestion should carry its own `uuid`); `selectionBehavior` is set when there are any."""
    if len(text.summary) >= 140:
        raise ValueError("card summary must be shorter than 140 characters")
    lines = [text.headline, "", *driver_lines(drivers, gaps), text.footer]
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
        "bandLevel": level,
        **({"bandValidation": band_validation} if band_validation else {}),
        "model": service.model_name,
        "modelVersion": model_version,
        "shap": {
            "baseValue": round(base_value, 6),
            "unit": "log-odds",
            # The drivers worded on the card, each the sum of its variable's features below.
            "drivers": [
                {"variable": d.variable, "shap": round(d.shap, 6), "text": driver_phrase(d)}
                for d in (*drivers, *gaps)
            ],
            "contributions": contributions,
        },
        **(extra or {}),
    }
    card = {
        "uuid": card_uuid,
        "summary": text.summary,
        "indicator": service.indicators[level],
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
