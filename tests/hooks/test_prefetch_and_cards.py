from __future__ import annotations

from dataclasses import dataclass

import pytest

from fhir_mappings import FhirQuery, InvalidIdError
from hooks import (
    SEPSIS,
    SERVICES,
    check_context_ids,
    format_percent,
    format_value,
    render_template,
    sepsis_card,
    strip_empty,
    template_tokens,
)
from hooks.drivers import group_contributions


@dataclass(frozen=True)
class D:
    feature: str
    label: str
    unit: str
    value: float | None
    shap: float


def _url(template: str, ctx: dict) -> str | None:
    query = render_template(template, ctx)
    return None if query is None else query.relative_url()


def test_render_context_and_user_tokens() -> None:
    ctx = {"patientId": "123", "userId": "Practitioner/abc", "encounterId": "e-1.2"}
    assert _url("Patient/{{context.patientId}}", ctx) == "Patient/123"
    assert _url("Encounter/{{context.encounterId}}", ctx) == "Encounter/e-1.2"
    assert _url("Observation?performer={{userPractitionerId}}", ctx) == "Observation?performer=abc"
    assert _url("Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date", ctx) == (
        "Observation?patient=123&category=vital-signs&_sort=-date"
    )
    assert render_template("Observation?performer={{userPatientId}}", ctx) is None
    assert render_template("Encounter/{{context.missing}}", ctx) is None
    assert template_tokens("A/{{context.a}}?b={{ userPractitionerId }}") == [
        "context.a",
        "userPractitionerId",
    ]


# Ids an attacker (or a broken EHR) puts in the hook context: none may reach a URL.
INJECTION_IDS = [
    "../../admin",
    "..",
    ".",
    "p1?_id=x&",
    "p1&_id=x",
    "a\r\nX-Injected: 1",
    "a\nb",
    "a b",
    "a/b",
    "a#b",
    "%2e%2e",
    "a%2Fb",
    "é",
    "x" * 65,
    "",
    "p1;drop",
    "p1\x00",
    "\u202eabc",
]


@pytest.mark.parametrize("value", INJECTION_IDS)
@pytest.mark.parametrize(
    "template", ["Patient/{{context.patientId}}", "Observation?patient={{context.patientId}}&category=x"]
)
def test_hostile_context_ids_never_render(template: str, value: str) -> None:
    if value == "":
        assert (
            render_template(template, {"patientId": value}) is None
        )  # no value: skipped, like a missing one
        return
    with pytest.raises(InvalidIdError) as raised:
        render_template(template, {"patientId": value})
    assert value not in str(raised.value) or len(value) < 2


@pytest.mark.parametrize("value", [*INJECTION_IDS, ["p1"], 5, {"id": "p1"}])
def test_check_context_ids_refuses_every_hostile_id(value: object) -> None:
    for name in ("patientId", "encounterId"):
        if value == "":
            continue
        with pytest.raises(InvalidIdError):
            check_context_ids({name: value})
    user = f"Practitioner/{value}" if isinstance(value, str) else value
    with pytest.raises(InvalidIdError):
        check_context_ids({"userId": user})
    check_context_ids({"patientId": "p-1.2", "encounterId": "E1", "userId": "PractitionerRole/a.b"})


def test_fhir_query_encodes_values_and_refuses_bad_parts() -> None:
    query = FhirQuery.search(
        "Observation", [("patient", "p1"), ("code", "http://loinc.org|8480-6,8462-4"), ("x", "a&b=c d")]
    )
    assert (
        query.relative_url() == "Observation?patient=p1&code=http://loinc.org|8480-6,8462-4&x=a%26b%3Dc%20d"
    )
    for bad in (
        lambda: FhirQuery.read("Patient", ".."),
        lambda: FhirQuery.read("patient", "1"),
        lambda: FhirQuery.read("Patient/x", "1"),
        lambda: FhirQuery.search("Observation", [("a&b", "1")]),
    ):
        with pytest.raises(InvalidIdError):
            bad()


def test_every_prefetch_template_uses_only_cds_hooks_2_tokens() -> None:
    allowed_user = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
    for service in SERVICES.values():
        for template in service.prefetch.values():
            for token in template_tokens(template):
                assert token.startswith("context.") or token in allowed_user


def test_value_formatting_in_clinical_words() -> None:
    assert format_value("Temp__last", 38.44, "Cel") == "38.4 °C"
    assert format_value("SBP__last", 92, "mm[Hg]") == "92 mmHg"
    assert format_value("Lactate__last", None, "mmol/L") == "not measured"
    assert format_value("Gender", 1.0, "1") == "male"
    assert format_value("Age", 67, "a") == "67 years"
    assert (
        format_percent(0.0004) == "<0.1%"
        and format_percent(0.0734) == "7.3%"
        and format_percent(0.42) == "42%"
    )


def test_sepsis_card_shape() -> None:
    features = [
        D("Lactate__last", "Lactate", "mmol/L", 4.2, 0.8),
        D("Lactate__hours_since", "Lactate: hours since measured", "h", 2, 0.1),
        D("SBP__min_6h", "Systolic blood pressure, lowest over 6 h", "mm[Hg]", 84, 0.3),
        D("SBP__last", "Systolic blood pressure", "mm[Hg]", 88, 0.05),
        D("Age", "Age", "a", 54, -0.2),
    ]
    drivers = group_contributions(features)
    card = sepsis_card(
        card_uuid="u-1",
        probability=0.071,
        band="high",
        level="interrupt",
        band_validation={"ppv": 0.34, "sensitivity": 0.2, "measuredOn": "validation"},
        threshold=0.03,
        icu_hour=12,
        model_label="Sepsis risk (XGBoost)",
        model_version="3",
        drivers=drivers,
        all_contributions=[*features, D("HR__last", "Heart rate", "/min", None, 0.0)],
        base_value=-3.2,
    )
    assert card["indicator"] == "critical" and card["summary"].startswith("Sepsis risk 7.1%")
    assert "↑ **Lactate 4.2 mmol/L**, 2 h ago (raises risk)" in card["detail"]
    assert "↑ **Systolic blood pressure 88 mmHg** (raises risk)" in card["detail"]  # its 6 h low summed in
    assert "↓ **Age 54 years** (lowers risk)" in card["detail"]
    assert card["source"]["label"] == "Sepsis risk (XGBoost) v3"
    contributions = card["extension"]["org.cds-ml.risk"]["shap"]["contributions"]
    assert [c["feature"] for c in contributions] == [
        "Lactate__last",
        "Lactate__hours_since",
        "SBP__min_6h",
        "SBP__last",
        "Age",
    ]  # zero contributions left out
    worded = card["extension"]["org.cds-ml.risk"]["shap"]["drivers"]
    assert [(d["variable"], d["shap"]) for d in worded] == [("Lactate", 0.9), ("SBP", 0.35), ("Age", -0.2)]
    assert len(card["overrideReasons"]) == len(SEPSIS.override_reasons)


def test_strip_empty_removes_nulls_and_empties_but_keeps_zero() -> None:
    assert strip_empty({"a": None, "b": "", "c": [], "d": {}, "e": 0, "f": [{"g": None}], "h": False}) == {
        "e": 0,
        "h": False,
    }


def test_summary_longer_than_140_is_refused() -> None:
    from hooks import RiskCardText, build_risk_card

    with pytest.raises(ValueError):
        build_risk_card(
            card_uuid="u",
            service=SEPSIS,
            band="low",
            level="below",
            probability=0.1,
            threshold=0.2,
            model_label="m",
            model_version="1",
            text=RiskCardText("x" * 140, "h", "f"),
            drivers=[],
            all_contributions=[],
            base_value=0.0,
        )
