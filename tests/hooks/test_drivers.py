"""SHAP contributions grouped by clinical variable (hooks/drivers.py), as the card and the app say
them: every feature in one driver, the drivers adding up to the model's margin, each named by its
physiology with its latest value, unit, time and direction, and what was not measured said apart."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from functools import cache

import numpy as np
import pytest

from cds.smart.explain import card_view
from demo_ehr import discharge_hook_request, discharge_to_fhir, patient_view_request
from fhir_mappings import Pseudonymizer
from hooks import READMISSION, SEPSIS, ScoredCard, ScoringInput, Service
from hooks.drivers import (
    FeatureShare,
    driver_phrase,
    gap_phrase,
    group_contributions,
    split_drivers,
)
from models import ModelRegistry, RiskModel, model_task
from testkit.helpers import synthetic_stay
from testkit.readmission_rows import row

PSEUDO = Pseudonymizer(b"drivers-test-key-0123456789abc")
F = FeatureShare


@cache
def _model(name: str) -> RiskModel:
    spec = model_task(name).feature_spec()
    return RiskModel(ModelRegistry().load(name, spec), spec, nthread=1)


def _fetched(body: dict) -> dict:
    return {
        k: [e["resource"] for e in v["entry"]] if v.get("resourceType") == "Bundle" else v
        for k, v in body["prefetch"].items()
    }


def _scored(service: Service, body: dict, now: datetime) -> ScoredCard:
    answer = service.score(
        ScoringInput(
            context=body["context"],
            fetched=_fetched(body),
            model=_model(service.model_name),
            now=now,
            pseudonymizer=PSEUDO,
            card_uuid=str(uuid.uuid4()),
            source="",
        )
    )
    assert isinstance(answer, ScoredCard), answer
    return answer


def test_a_variable_s_features_are_summed_into_one_driver_named_by_its_physiology() -> None:
    lactate = [
        F("Lactate__last", "Lactate", "mmol/L", 3.1, 0.5),
        F("Lactate__delta_prev", "Lactate, change since previous", "mmol/L", 0.6, 0.1),
        F("Lactate__hours_since", "Lactate: hours since measured", "h", 2.0, 0.2),
        F("Lactate__max_24h", "Lactate, highest over 24 h", "mmol/L", 3.1, 0.05),
        F("Lactate__count_24h", "Lactate: measurements in 24 h", "1", 2.0, -0.01),
    ]
    calcium = [
        F("Calcium__last", "Calcium", "mg/dL", 8.4, 0.02),
        F("Calcium__delta_prev", "Calcium, change since previous", "mg/dL", 0.0, 0.03),
        F("Calcium__hours_since", "Calcium: hours since measured", "h", 0.0, 0.0),
    ]
    drivers = group_contributions([*calcium, *lactate, F("Age", "Age", "a", 71.4, -0.3)])
    assert [d.variable for d in drivers] == ["Lactate", "Age", "Calcium"]
    assert drivers[0].shap == pytest.approx(0.84) and len(drivers[0].features) == 5
    assert driver_phrase(drivers[0]) == "Lactate 3.1 mmol/L, 2 h ago, rising"
    # "A change of 0 raises risk" read as a bug: the variable's value raises it, and it is unchanged.
    assert driver_phrase(drivers[2]) == "Calcium 8.4 mg/dL, this hour, unchanged"
    assert driver_phrase(drivers[1]) == "Age 71.4 years"


def test_what_was_not_measured_is_said_plainly_and_apart() -> None:
    never = [
        F("Lactate__last", "Lactate", "mmol/L", None, 0.3),
        F("Lactate__hours_since", "Lactate: hours since measured", "h", None, 0.2),
        F("Lactate__count_24h", "Lactate: measurements in 24 h", "1", 0.0, 0.1),
    ]
    stale = [
        F("Bilirubin_total__last", "Total bilirubin", "mg/dL", 1.2, 0.05),
        F("Bilirubin_total__hours_since", "Total bilirubin: hours since measured", "h", 58.0, 0.4),
        F("Bilirubin_total__count_24h", "Total bilirubin: measurements in 24 h", "1", 0.0, 0.0),
    ]
    recent = [
        F("HR__last", "Heart rate", "/min", 118.0, 0.2),
        F("HR__count_24h", "Heart rate: measurements in 24 h", "1", 24.0, 0.0),
    ]
    drivers = group_contributions([*never, *stale, *recent, F("SpO2__last", "SpO2", "%", None, 0.001)])
    measured, gaps = split_drivers(drivers, 5, min_abs=0.01)
    assert [d.variable for d in measured] == ["HR"]
    assert [d.variable for d in gaps] == ["Lactate", "Bilirubin_total"]  # SpO2's 0.001 is below min_abs
    assert gap_phrase(gaps[0]) == "no lactate measured this stay"
    assert gap_phrase(gaps[1]) == "no total bilirubin in 24 h (last 58 h ago)"
    assert driver_phrase(gaps[0]) == "no lactate measured this stay"
    assert gap_phrase(group_contributions([F("SaO2__last", "SaO2 (arterial)", "%", None, 0.1)])[0]) == (
        "no SaO2 (arterial) measured this stay"  # an acronym keeps its case
    )


@pytest.mark.parametrize("name", ["sepsis", "readmission"])
def test_grouped_contributions_add_up_to_the_model_s_own_margin(name: str) -> None:
    """On rows with values and gaps: base value + every driver = the booster's raw margin."""
    model = _model(name)
    rng = np.random.default_rng(7)
    rows = rng.normal(1.0, 2.0, size=(20, len(model.spec.names))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.4] = np.nan
    margins = model.margin(rows)
    for row_, margin in zip(rows, margins, strict=True):
        explanation = model.explain(row_)
        grouped = group_contributions(explanation.contributions)
        assert sorted(c.feature for d in grouped for c in d.features) == sorted(model.spec.names)
        assert explanation.base_value + math.fsum(d.shap for d in grouped) == pytest.approx(
            float(margin), abs=1e-4
        )


def _margin_gives_the_card_s_probability(model: RiskModel, data: dict, probability: float) -> None:
    grouped = group_contributions(
        [F(c["feature"], c["feature"], "", c.get("value"), c["shap"]) for c in data["contributions"]]
    )
    margin = data["baseValue"] + math.fsum(d.shap for d in grouped)
    raw = 1 / (1 + math.exp(-margin))
    assert float(model.calibrate(np.array([raw]))[0]) == pytest.approx(probability, abs=1e-4)


def test_a_sepsis_card_reads_in_clinical_words_and_its_drivers_give_its_probability() -> None:
    now = datetime.now(UTC)
    scored = _scored(SEPSIS, patient_view_request(synthetic_stay(hours=30)), now)
    data = scored.card["extension"]["org.cds-ml.risk"]
    # The exact per-feature contributions stay in the card extension; grouped, they give the score.
    _margin_gives_the_card_s_probability(_model("sepsis"), data["shap"], scored.probability)
    detail = scored.card["detail"]
    assert "hours since measured" not in detail and "change since previous" not in detail
    assert "**What drives this score**" in detail
    worded = [d["text"] for d in data["shap"]["drivers"]]
    plain = detail.replace("**", "")
    assert worded and all(f"{t} (raises risk)" in plain or f"{t} (lowers risk)" in plain for t in worded)
    assert any(" h ago" in t or "this hour" in t for t in worded), worded
    # The synthetic stay never measures e.g. bilirubin: where the score leans on that, it says so.
    if "**Not measured**" in detail:
        assert "measured this stay" in detail or "in 24 h" in detail


def test_the_app_groups_the_stored_record_as_the_card_does_and_still_adds_up() -> None:
    now = datetime.now(UTC)
    scored = _scored(SEPSIS, patient_view_request(synthetic_stay(hours=30)), now)
    model = _model("sepsis")
    labels = {f.name: (f.label, f.unit) for f in model.manifest.features}
    view = card_view("c", "sepsis-risk", scored.risk_assessment, labels)
    data = scored.card["extension"]["org.cds-ml.risk"]["shap"]
    full = data["baseValue"] + math.fsum(c["shap"] for c in data["contributions"])
    assert view.margin == pytest.approx(full, abs=1e-4)
    # Each driver on the card is worded the same by the app (its latest value recorded with it).
    by_variable = {d.variable: d for d in view.drivers}
    for d in data["drivers"]:
        if d["variable"] in by_variable:
            assert driver_phrase(by_variable[d["variable"]]) == d["text"]
    assert all(d.value_known for d in view.drivers if f"{d.variable}__last" in labels)


def test_a_readmission_card_s_drivers_give_its_probability_and_a_missing_hba1c_is_said_plainly() -> None:
    discharged = datetime(2026, 3, 1, 12, tzinfo=UTC)
    body = discharge_hook_request(discharge_to_fhir(row(A1Cresult=None), discharged_at=discharged))
    scored = _scored(READMISSION, body, discharged)
    data = scored.card["extension"]["org.cds-ml.risk"]["shap"]
    _margin_gives_the_card_s_probability(_model("readmission"), data, scored.probability)
    detail = scored.card["detail"]
    assert "**What drives this score**" in detail
    assert data["drivers"] and all(d["text"] in detail.replace("**", "") for d in data["drivers"])
    a1c = group_contributions([F("a1c", "Highest HbA1c", "band-a1c", None, 0.2)])[0]
    assert gap_phrase(a1c) == "no HbA1c measured this stay"
    insulin = group_contributions([F("drug:insulin", "Insulin", "drug-status", 2.0, 0.2)])[0]
    assert driver_phrase(insulin) == "Insulin: dose increased"
