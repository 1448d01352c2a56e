"""What the hook path builds as plain dicts (fhir.resources is too slow to run on every call) is
held to FHIR R4 here: the RiskAssessment we record, in every variant it takes, and the draft
ServiceRequests a sepsis card suggests."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhir.resources.R4B.servicerequest import ServiceRequest

from demo_ehr import patient_view_request
from fhir_mappings import Pseudonymizer, build_risk_assessment, recorded_feature_values
from fhir_mappings.writeback import RECORDED_CONTRIBUTIONS
from hooks import SEPSIS, ScoredCard, ScoringInput, sepsis_bundle_suggestion
from models import ModelRegistry, RiskModel, model_task
from testkit.helpers import synthetic_stay

PSEUDO = Pseudonymizer(b"fhir-output-key-0123456789abc")
NO_REUSE = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOREUSE"}


@dataclass(frozen=True)
class _Contribution:
    feature: str
    value: float | None
    shap: float


def _risk(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        card_uuid=str(uuid.uuid4()),
        service_id="sepsis-risk",
        pseudonym="p" * 43,
        occurrence=datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
        icu_hour=17,
        model_name="sepsis",
        model_version="2026.03.01-abc",
        probability=0.31,
        band="high",
        outcome_code=("http://snomed.info/sct", "91302008", "Sepsis"),
        horizon_hours=6.0,
        base_value=-2.5,
        contributions=[_Contribution(f"f{i}", None if i % 3 else i / 7, (i - 12) / 11) for i in range(25)],
    )
    return build_risk_assessment(**{**args, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"icu_hour": None, "horizon_hours": None},
        {"contributions": []},
        {"contributions": [_Contribution("only", 1.5, 0.2)], "probability": 0.0, "band": "low"},
        {"probability": 1.0, "occurrence": datetime(2026, 3, 1, 12, 30, tzinfo=UTC) + timedelta(days=400)},
    ],
    ids=["full", "no-clock-no-horizon", "no-contributions", "one-contribution", "edges"],
)
def test_the_recorded_risk_assessment_is_valid_r4(overrides: dict[str, Any]) -> None:
    resource = _risk(**overrides)
    parsed = RiskAssessment.model_validate(resource)
    assert parsed.status == "final" and parsed.prediction[0].probabilityDecimal is not None
    # With the consent label the pipeline adds when training use is refused: still valid.
    RiskAssessment.model_validate({**resource, "meta": {"security": [NO_REUSE]}})
    shap = [e for e in resource["extension"] if e["url"].endswith("/shap-contribution")]
    assert len(shap) == min(RECORDED_CONTRIBUTIONS, len(overrides.get("contributions", range(25))))


def test_values_computed_at_run_time_are_checked_without_fhir_resources() -> None:
    with pytest.raises(ValueError):
        _risk(probability=1.5)
    with pytest.raises(ValueError):
        _risk(probability=math.nan)
    with pytest.raises(ValueError):
        _risk(base_value=math.inf)
    with pytest.raises(ValueError):
        _risk(contributions=[_Contribution("f", 1.0, math.nan)])


@cache
def _model() -> RiskModel:
    spec = model_task("sepsis").feature_spec()
    return RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)


@pytest.mark.parametrize("septic_like", [True, False])
def test_a_scored_sepsis_card_carries_valid_fhir(septic_like: bool) -> None:
    stay = synthetic_stay(30, septic_like=septic_like)
    body = patient_view_request(stay)
    fetched = {
        k: [e["resource"] for e in v["entry"]] if v.get("resourceType") == "Bundle" else v
        for k, v in body["prefetch"].items()
    }
    now = max(datetime.fromisoformat(o["effectiveDateTime"]) for o in stay.observations) + timedelta(
        minutes=5
    )
    scored = SEPSIS.score(
        ScoringInput(
            context=body["context"],
            fetched=fetched,
            model=_model(),
            now=now,
            pseudonymizer=PSEUDO,
            card_uuid=str(uuid.uuid4()),
            source="",
        )
    )
    assert isinstance(scored, ScoredCard)
    risk = RiskAssessment.model_validate(scored.risk_assessment)
    assert float(risk.prediction[0].probabilityDecimal) == pytest.approx(scored.probability, abs=1e-12)
    # The whole scored row is recorded (for retraining from served records), bit for bit.
    spec = _model().spec
    recorded = recorded_feature_values(scored.risk_assessment, spec.spec_hash)
    assert recorded is not None and scored.row is not None
    np.testing.assert_array_equal(recorded, scored.row[0])
    assert recorded_feature_values(scored.risk_assessment, "another-spec") is None
    for suggestion in scored.card.get("suggestions", ()):
        for action in suggestion["actions"]:
            ServiceRequest.model_validate(action["resource"])


@pytest.mark.parametrize("encounter_id", ["e-1.2", None])
def test_bundle_suggestions_are_valid_service_requests(encounter_id: str | None) -> None:
    suggestion = sepsis_bundle_suggestion(str(uuid.uuid4()), "Patient-42", encounter_id)
    assert len(suggestion["actions"]) == 2
    for action in suggestion["actions"]:
        order = ServiceRequest.model_validate(action["resource"])
        assert order.status == "draft" and order.intent == "order" and order.priority == "stat"
        assert (order.encounter is None) == (encounter_id is None)
