"""The FHIR resources we write: a RiskAssessment per scored card, a Provenance per feedback.

Built from plain values. The RiskAssessment is built on every hook call, so it is a plain dict whose
shape tests hold to fhir.resources (R4B models, which serve R4) over every variant it takes: that
validation cost ~2 ms a call, a fifth of the hook's goal; the few values computed at run time
(probability, SHAP) are checked here. The Provenance (feedback, off the hook path) is validated
as it is built. Subjects and agents are keyed pseudonyms, never EHR ids.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import orjson
from fhir.resources.R4B.provenance import Provenance

__all__ = [
    "CANONICAL",
    "Contribution",
    "FEEDBACK_OUTCOME_SYSTEM",
    "PSEUDONYM_SYSTEM",
    "RECORDED_CONTRIBUTIONS",
    "build_provenance",
    "build_risk_assessment",
    "provenance_id",
    "recorded_feature_values",
]

# Base of the identifiers (extensions, code systems) this product defines.
CANONICAL = "http://cds-ml.org/fhir"
PSEUDONYM_SYSTEM = f"{CANONICAL}/NamingSystem/patient-pseudonym"
PRACTITIONER_PSEUDONYM_SYSTEM = f"{CANONICAL}/NamingSystem/practitioner-pseudonym"
MODEL_SYSTEM = f"{CANONICAL}/CodeSystem/model"
FEEDBACK_OUTCOME_SYSTEM = f"{CANONICAL}/CodeSystem/cds-feedback-outcome"
EXT = f"{CANONICAL}/StructureDefinition"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
# The largest SHAP contributions kept as structured extensions; the card carries them all.
# (Validating ~130 nested extensions with fhir.resources cost ~25 ms; 20, ~2 ms: now tests do it.)
RECORDED_CONTRIBUTIONS = 20


RISK_BAND_SYSTEM = f"{CANONICAL}/CodeSystem/risk-band"
_RISK_PROBABILITY_CODES = {"negligible", "low", "moderate", "high", "certain"}


def _band_system(band: str) -> str:
    """HL7's risk-probability codes where a band is one of them (low, moderate, high); ours
    otherwise (very-high is not HL7's `certain`)."""
    return RISK_PROBABILITY if band in _RISK_PROBABILITY_CODES else RISK_BAND_SYSTEM


class Contribution(Protocol):
    """One feature's share of a score (models.explain.Contribution satisfies it)."""

    @property
    def feature(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def shap(self) -> float: ...


def build_risk_assessment(
    *,
    card_uuid: str,
    service_id: str,
    pseudonym: str,
    occurrence: datetime,
    icu_hour: int | None,
    model_name: str,
    model_version: str,
    probability: float,
    band: str,
    outcome_code: tuple[str, str, str],
    horizon_hours: float | None,
    base_value: float,
    contributions: Sequence[Contribution],
    also_record: Collection[str] = (),
    feature_values: np.ndarray | None = None,
    feature_spec_hash: str | None = None,
) -> dict[str, Any]:
    """The largest RECORDED_CONTRIBUTIONS contributions one by one; those named in `also_record`
    (what the drivers need to say their value and time, even at 0) in one `shap-context` list of
    [feature, shap, value]; the rest summed into one, so base value + all three is the margin.
    ValueError for a probability outside [0, 1] or a SHAP value that is not a finite number."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError("probability must be within [0, 1]")
    if not math.isfinite(base_value) or not all(math.isfinite(c.shap) for c in contributions):
        raise ValueError("SHAP values must be finite")
    system, code, display = outcome_code
    prediction: dict[str, Any] = {
        "outcome": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "probabilityDecimal": float(probability),
        "qualitativeRisk": {"coding": [{"system": _band_system(band), "code": band}]},
    }
    if horizon_hours is not None:
        prediction["whenRange"] = {
            "high": {"value": horizon_hours, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}
        }
    extensions: list[dict[str, Any]] = [
        {"url": f"{EXT}/cds-service", "valueString": service_id},
        {"url": f"{EXT}/model-version", "valueString": model_version},
        {"url": f"{EXT}/shap-base-value", "valueDecimal": round(float(base_value), 6)},
    ]
    if icu_hour is not None:
        extensions.append({"url": f"{EXT}/icu-hour", "valueInteger": int(icu_hour)})
    ranked = sorted(contributions, key=lambda c: -abs(c.shap))
    kept = ranked[:RECORDED_CONTRIBUTIONS]
    rest_of = ranked[RECORDED_CONTRIBUTIONS:]
    context = [c for c in rest_of if c.feature in also_record]
    rest_of = [c for c in rest_of if c.feature not in also_record]
    for c in kept:
        parts: list[dict[str, Any]] = [
            {"url": "feature", "valueString": c.feature},
            {"url": "shap", "valueDecimal": round(float(c.shap), 6)},
        ]
        if c.value is not None:
            parts.append({"url": "value", "valueDecimal": round(float(c.value), 6)})
        extensions.append({"url": f"{EXT}/shap-contribution", "extension": parts})
    if context:
        # One compact extension (a JSON list), not one nested extension each: validating dozens of
        # nested extensions with fhir.resources would cost the hook path milliseconds.
        rows = [
            [c.feature, round(float(c.shap), 6), None if c.value is None else round(float(c.value), 6)]
            for c in context
        ]
        extensions.append(
            {"url": f"{EXT}/shap-context", "valueString": json.dumps(rows, separators=(",", ":"))}
        )
    if feature_values is not None and feature_spec_hash:
        # The whole scored row (de-identified feature values; missing as null), so retraining from
        # served records has every feature, not only the ones the contributions name. One compact
        # JSON list: orjson wrote a 252-feature float32 row in 33 us (a loaded machine); nested
        # extensions would cost ms.
        values = orjson.dumps(np.asarray(feature_values), option=orjson.OPT_SERIALIZE_NUMPY).decode()
        extensions.append(
            {
                "url": f"{EXT}/feature-values",
                "extension": [
                    {"url": "featureSpec", "valueString": feature_spec_hash},
                    {"url": "values", "valueString": values},
                ],
            }
        )
    if rest_of:
        # The rest in one sum, so base value + contributions still add up to the model's margin.
        rest = sum(float(c.shap) for c in rest_of)
        extensions.append({"url": f"{EXT}/shap-other", "valueDecimal": round(rest, 6)})
    resource = {
        "resourceType": "RiskAssessment",
        "id": card_uuid,
        "extension": extensions,
        "status": "final",
        "subject": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": pseudonym}},
        "occurrenceDateTime": occurrence.isoformat(),
        "method": {"coding": [{"system": MODEL_SYSTEM, "code": model_name, "version": model_version}]},
        "prediction": [prediction],
    }
    return resource


def recorded_feature_values(resource: Mapping[str, Any], feature_spec_hash: str) -> np.ndarray | None:
    """The scored row a RiskAssessment recorded (`feature-values`), as float32 with NaN for
    missing; None when it has none or it was scored with another feature spec."""
    for ext in resource.get("extension", ()):
        if ext.get("url") != f"{EXT}/feature-values":
            continue
        parts = {e.get("url"): e.get("valueString") for e in ext.get("extension", ())}
        if parts.get("featureSpec") != feature_spec_hash or not isinstance(parts.get("values"), str):
            return None
        values = json.loads(parts["values"])
        return np.array([np.nan if v is None else v for v in values], dtype=np.float32)
    return None


def provenance_id(card_uuid: str) -> str:
    """One Provenance per card: repeated feedback for a card lands on the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{CANONICAL}/feedback/{card_uuid}"))


def build_provenance(
    *,
    card_uuid: str,
    outcome: str,
    outcome_timestamp: datetime,
    practitioner_pseudonym: str | None,
    override_reason: dict[str, Any] | None,
    user_comment: str | None,
    accepted_suggestions: Sequence[str] = (),
    flags: Sequence[str] = (),
    comment_length: int | None = None,
) -> dict[str, Any]:
    """`flags`: what was odd about the feedback and kept anyway (e.g. `reason-not-offered`).
    `user_comment`: the comment as it may be stored (scrubbed), or None when it is not kept;
    `comment_length`: the length of the comment the clinician wrote (its presence and size are
    kept whatever the policy)."""
    extensions: list[dict[str, Any]] = []
    if comment_length:
        extensions.append({"url": f"{EXT}/override-comment-length", "valueInteger": int(comment_length)})
    if user_comment:
        extensions.append({"url": f"{EXT}/override-comment", "valueString": user_comment})
    for suggestion in accepted_suggestions:
        extensions.append({"url": f"{EXT}/accepted-suggestion", "valueString": suggestion})
    for flag in flags:
        extensions.append({"url": f"{EXT}/feedback-flag", "valueCode": flag})
    who: dict[str, Any] = (
        {"identifier": {"system": PRACTITIONER_PSEUDONYM_SYSTEM, "value": practitioner_pseudonym}}
        if practitioner_pseudonym
        else {"display": "unknown user"}
    )
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id(card_uuid),
        "target": [{"reference": f"RiskAssessment/{card_uuid}"}],
        "recorded": outcome_timestamp.isoformat(),
        "activity": {
            "coding": [{"system": FEEDBACK_OUTCOME_SYSTEM, "code": outcome, "display": outcome.capitalize()}]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": who,
            }
        ],
    }
    if override_reason:
        resource["reason"] = [{"coding": [override_reason]}]
    if extensions:
        resource["extension"] = extensions
    Provenance.model_validate(resource)
    return resource
