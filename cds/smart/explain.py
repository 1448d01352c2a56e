"""What the app shows about one card, from its stored RiskAssessment: the score, its band, the
SHAP contributions grouped by clinical variable, and the pictures (server-side SVG).

The waterfall is `shap`'s own plot fed with the contributions XGBoost's exact TreeSHAP computed
when the card was made (stored in the RiskAssessment): shap's explainer never runs, here or on
the hook path. pyplot keeps global state, so every drawing holds one lock.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

from fhir_mappings.writeback import CANONICAL
from hooks.drivers import ClinicalDriver, FeatureShare, driver_phrase, group_contributions

__all__ = ["CardView", "UNIT_WORDS", "card_view", "trend_svg", "waterfall_svg"]

_EXT = f"{CANONICAL}/StructureDefinition"
_LOCK = threading.Lock()
WATERFALL_ROWS = 10  # drivers drawn one by one; the rest are grouped by shap into one bar
UNIT_WORDS = {"Cel": "°C", "mm[Hg]": "mmHg", "1": ""}  # UCUM codes as clinicians write them


@dataclass(frozen=True)
class CardView:
    card_uuid: str
    service_id: str
    model_name: str
    model_version: str
    probability: float
    band: str
    occurrence: str
    icu_hour: int | None
    base_value: float
    other: float  # contributions not stored one by one
    drivers: tuple[ClinicalDriver, ...]  # largest |shap| first (hooks.drivers, as on the card)
    subject: str  # the patient pseudonym

    @property
    def margin(self) -> float:
        return self.base_value + self.other + sum(d.shap for d in self.drivers)


def _ext(resource: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension", ()) if e.get("url") == f"{_EXT}/{name}"]


def _value(ext: Mapping[str, Any]) -> Any:
    return next((v for k, v in ext.items() if k.startswith("value")), None)


def card_view(
    card_uuid: str, service_id: str, risk: Mapping[str, Any], labels: Mapping[str, tuple[str, str]]
) -> CardView:
    """`labels`: feature -> (clinical label, unit), from the model's manifest."""
    prediction = risk["prediction"][0]
    method = risk["method"]["coding"][0]
    shares = []
    for ext in _ext(risk, "shap-contribution"):
        parts = {p["url"]: _value(p) for p in ext.get("extension", ())}
        feature = str(parts["feature"])
        label, unit = labels.get(feature, (feature, ""))
        value = parts.get("value")
        shares.append(
            FeatureShare(feature, label, unit, None if value is None else float(value), float(parts["shap"]))
        )
    for ext in _ext(risk, "shap-context"):  # [[feature, shap, value], ...], compact
        for feature, shap, value in json.loads(str(ext.get("valueString", "[]"))):
            label, unit = labels.get(str(feature), (str(feature), ""))
            shares.append(
                FeatureShare(str(feature), label, unit, None if value is None else float(value), float(shap))
            )
    drivers = group_contributions(shares, labels)
    other = _ext(risk, "shap-other")
    hour = _ext(risk, "icu-hour")
    return CardView(
        card_uuid=card_uuid,
        service_id=service_id,
        model_name=str(method.get("code")),
        model_version=str(method.get("version")),
        probability=float(prediction["probabilityDecimal"]),
        band=str(prediction["qualitativeRisk"]["coding"][0]["code"]),
        occurrence=str(risk.get("occurrenceDateTime", "")),
        icu_hour=int(_value(hour[0])) if hour else None,
        base_value=float(_value(_ext(risk, "shap-base-value")[0])),
        other=float(_value(other[0])) if other else 0.0,
        drivers=tuple(drivers),
        subject=str(risk["subject"]["identifier"]["value"]),
    )


def _pyplot() -> Any:
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _shap() -> Any:
    with warnings.catch_warnings():  # shap's import touches deprecated matplotlib calls
        warnings.simplefilter("ignore")
        import shap
    return shap


def _svg(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def waterfall_svg(view: CardView) -> bytes:
    """shap's waterfall: from the model's base value to this patient's score (log-odds), one bar per
    clinical variable (named with its latest value), the rest in one grouped bar."""
    import numpy as np

    names = [driver_phrase(d) for d in view.drivers]
    values = [d.shap for d in view.drivers]
    if view.other:
        names.append("other features (summed when scored)")
        values.append(view.other)
    with _LOCK:
        shap = _shap()
        plt = _pyplot()
        explanation = shap.Explanation(
            values=np.array(values, dtype=float),
            base_values=view.base_value,
            feature_names=names,
        )
        plt.close("all")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shap.plots.waterfall(explanation, max_display=WATERFALL_ROWS, show=False)
        fig = plt.gcf()
        fig.set_size_inches(7.5, 0.42 * min(len(values), WATERFALL_ROWS) + 1.4)
        try:
            return _svg(fig)
        finally:
            plt.close(fig)


def trend_svg(
    hours: Sequence[int], probabilities: Sequence[float], threshold: float, *, card_hour: int | None
) -> bytes:
    """Risk hour by hour over the stay, with the alert threshold drawn (and the card's hour marked)."""
    with _LOCK:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7.5, 2.6))
        try:
            ax.plot(
                list(hours),
                [100 * p for p in probabilities],
                color="#1f4e79",
                linewidth=1.8,
                marker="o",
                markersize=2.5,
                label="sepsis risk",
            )
            ax.axhline(
                100 * threshold,
                color="#b00020",
                linestyle="--",
                linewidth=1.2,
                label=f"alert threshold {100 * threshold:.1f} %",
            )
            if card_hour is not None:
                ax.axvline(
                    card_hour,
                    color="#555555",
                    linestyle=":",
                    linewidth=1.0,
                    label=f"this card (ICU hour {card_hour})",
                )
            ax.set_xlabel("ICU hour")
            ax.set_ylabel("risk (%)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", fontsize=8, frameon=False)
            return _svg(fig)
        finally:
            plt.close(fig)
