"""CDS Hooks 2.0 conformance: the specification's own example payloads go through our models, and
what our server sends (discovery, cards) passes the same strict models."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds.schemas import CardsResponse, DiscoveryResponse, FeedbackRequest, HookRequest
from demo_ehr import patient_view_request
from hooks import SEPSIS, sepsis_bundle_suggestion, template_tokens
from testkit.helpers import feedback, no_empty_values, synthetic_stay

EXAMPLES = Path(__file__).parent / "spec_examples"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def test_the_spec_examples_pass_our_models() -> None:
    DiscoveryResponse.model_validate(example("discovery"))
    request = HookRequest.model_validate(example("request"))
    assert request.context["patientId"] == "1288992" and "some-opaque" not in repr(request)
    CardsResponse.model_validate(example("cards"))
    for name in ("feedback_accepted", "feedback_overridden", "feedback_override_reason"):
        FeedbackRequest.model_validate(example(name))
    for entry in example("discovery")["services"]:
        for template in entry.get("prefetch", {}).values():
            assert all(t.startswith("context.") for t in template_tokens(template))


@pytest.mark.parametrize(
    "broken",
    [
        lambda c: c["cards"][0].update(summary="x" * 140),
        lambda c: c["cards"][0].update(indicator="urgent"),
        lambda c: c["cards"][0].update(detail=None),
        lambda c: c["cards"][0].update(links=[]),
        lambda c: c["cards"][0].update(
            suggestions=[{"label": "Do it", "uuid": "s1"}]
        ),  # no selectionBehavior
        lambda c: c["cards"][0]["links"][0].update(appContext="x"),  # appContext on an absolute link
        lambda c: c["cards"][1]["overrideReasons"][0].pop("display"),
        lambda c: c["cards"][0].pop("source"),
        lambda c: c["cards"][0].update(
            suggestions=[{"label": "x", "actions": [{"type": "create", "description": "d"}]}],
            selectionBehavior="any",
        ),
    ],
)
def test_our_card_model_refuses_what_the_spec_forbids(broken) -> None:
    cards = example("cards")
    broken(cards)
    with pytest.raises(ValidationError):
        CardsResponse.model_validate(cards)


def test_our_discovery_is_conformant(ehr_client: httpx.Client) -> None:
    services = DiscoveryResponse.model_validate(ehr_client.get("/cds-services").json()).services
    sepsis = next(s for s in services if s.id == "sepsis-risk")
    assert (
        sepsis.hook == "patient-view"
        and sepsis.title
        and sepsis.description
        and sepsis.prefetch
        and sepsis.usageRequirements
    )


def test_our_cards_are_conformant(ehr_client: httpx.Client, secure_server) -> None:
    response = ehr_client.post("/cds-services/sepsis-risk", json=patient_view_request(synthetic_stay()))
    body = response.json()
    assert no_empty_values(body) == []
    [card] = CardsResponse.model_validate(body).cards
    assert uuid.UUID(card.uuid)
    assert card.selectionBehavior == "at-most-one" and card.suggestions
    for suggestion in card.suggestions:
        assert uuid.UUID(suggestion.uuid) and suggestion.label and suggestion.actions
        for action in suggestion.actions:
            assert action.type == "create"
            order = ServiceRequest.model_validate(action.resource)
            assert order.status == "draft" and order.priority == "stat"
    codes = {a.resource["code"]["coding"][0]["code"] for a in card.suggestions[0].actions}
    assert codes == {"2524-7", "600-7"}  # lactate, blood cultures
    assert card.overrideReasons and all(r.display and r.system == NON_ADHERENCE for r in card.overrideReasons)
    [link] = [link for link in card.links if link.type == "smart"]
    assert link.url.startswith(f"{secure_server.url}/smart/launch?card=")
    assert json.loads(link.appContext)["cardUuid"] == card.uuid


def test_no_advice_is_an_empty_card_list(ehr_client: httpx.Client) -> None:
    stay = synthetic_stay()
    stay.encounter["status"] = "finished"
    response = ehr_client.post(
        "/cds-services/sepsis-risk", json=patient_view_request(stay, with_encounter_id=False)
    )
    assert response.json() == {"cards": []}
    CardsResponse.model_validate(response.json())


def test_low_risk_cards_offer_no_orders() -> None:
    from hooks import sepsis_card

    common = dict(
        card_uuid=str(uuid.uuid4()),
        probability=0.01,
        threshold=0.05,
        icu_hour=3,
        model_label="m",
        model_version="1",
        drivers=[],
        all_contributions=[],
        base_value=-3.0,
        patient_id="p1",
        encounter_id="e1",
    )
    low = sepsis_card(band="low", level="below", **common)
    high = sepsis_card(band="high", level="alert", **common)
    assert (low["indicator"], high["indicator"]) == ("info", "warning")
    assert "suggestions" not in low and "selectionBehavior" not in low
    assert high["suggestions"][0]["uuid"] == sepsis_bundle_suggestion(common["card_uuid"], "p1", "e1")["uuid"]
    assert high["suggestions"][0]["actions"][0]["resource"]["encounter"] == {"reference": "Encounter/e1"}
    CardsResponse.model_validate({"cards": [low, high]})
    assert len(SEPSIS.override_reasons) >= 3


def test_feedback_batches_for_several_cards_are_all_or_nothing(ehr_client: httpx.Client) -> None:
    cards = [
        ehr_client.post(
            "/cds-services/sepsis-risk", json=patient_view_request(synthetic_stay(patient=p))
        ).json()["cards"][0]
        for p in (1, 2)
    ]
    accepted = feedback(cards[0]["uuid"], "accepted", accepted=[cards[0]["suggestions"][0]["uuid"]])
    overridden = feedback(cards[1]["uuid"], reason=cards[1]["overrideReasons"][2])
    spec_unknown = example("feedback_overridden")["feedback"][0]  # a card we never issued
    refused = ehr_client.post(
        "/cds-services/sepsis-risk/feedback", json={"feedback": [accepted, overridden, spec_unknown]}
    )
    assert refused.status_code == 404 and "nothing was recorded" in refused.json()["issue"][0]["diagnostics"]
    done = ehr_client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [accepted, overridden]})
    assert [r["status"] for r in done.json()["results"]] == [
        "created",
        "created",
    ]  # the refused batch left nothing
    again = ehr_client.post(
        "/cds-services/sepsis-risk/feedback", json={"feedback": [overridden, accepted, accepted]}
    )
    assert [r["status"] for r in again.json()["results"]] == ["unchanged"] * 3
