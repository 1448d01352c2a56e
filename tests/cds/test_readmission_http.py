"""The readmission-risk service over real HTTP: discovery, encounter-discharge with prefetch,
the same answer fetched from a loopback FHIR server, patient-view rules, feedback."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from demo_ehr import DemoFhirServer, discharge_hook_request, discharge_to_fhir
from testkit.helpers import feedback, no_empty_values
from testkit.readmission_rows import row

URL = "/cds-services/readmission-risk"


@pytest.fixture
def client(cds_server) -> httpx.Client:
    with httpx.Client(base_url=cds_server.url, timeout=10) as c:
        yield c


def stay(**changes):
    return discharge_to_fhir(row(**changes), discharged_at=datetime.now(UTC))


def card_of(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    return card


def test_discovery_lists_both_hooks(client: httpx.Client) -> None:
    services = client.get("/cds-services").json()["services"]
    entries = [s for s in services if s["id"] == "readmission-risk"]
    assert {e["hook"] for e in entries} == {"encounter-discharge", "patient-view"}
    assert {
        "patient",
        "encounter",
        "encounters",
        "conditions",
        "medications",
        "labs",
        "procedures",
    } <= entries[0]["prefetch"].keys()
    assert any(s["id"] == "sepsis-risk" for s in services)  # both models are served
    assert no_empty_values(services) == []


def test_discharge_card_explains_and_suggests_follow_up(client: httpx.Client) -> None:
    s = stay()
    card = card_of(client.post(URL, json=discharge_hook_request(s)))
    assert no_empty_values(card) == []
    data = card["extension"]["org.cds-ml.risk"]
    assert data["model"] == "readmission" and 0 < data["probability"] < 1
    assert "30-day readmission risk" in card["summary"] and "%" in card["summary"]
    assert card["indicator"] in ("warning", "critical")  # this patient is high risk by any reading
    assert "**What drives this score** (SHAP, each clinical variable" in card["detail"]
    assert card["detail"].count("\n- ") >= 3 and ("raises risk" in card["detail"])
    [suggestion] = card["suggestions"]
    assert "7 days" in suggestion["label"]
    resource = suggestion["actions"][0]["resource"]
    ServiceRequest.model_validate(resource)
    assert resource["status"] == "draft" and resource["subject"]["reference"] == f"Patient/{s.patient_id}"
    assert all(r["display"] for r in card["overrideReasons"])


def test_a_low_risk_discharge_gets_no_suggestion(client: httpx.Client) -> None:
    s = stay(
        age="[30-40)",
        number_inpatient=0,
        number_emergency=0,
        number_outpatient=0,
        discharge_disposition_id=1,
        diag_1="V57",
        diag_2="401",
        diag_3=None,
        admission_type_id=3,
        admission_source_id=1,
        time_in_hospital=1,
        A1Cresult="Norm",
        max_glu_serum="None",
        insulin="No",
        **{"glyburide-metformin": "No"},
    )
    card = card_of(client.post(URL, json=discharge_hook_request(s)))
    high = card_of(client.post(URL, json=discharge_hook_request(stay())))
    p_low = card["extension"]["org.cds-ml.risk"]["probability"]
    assert p_low < high["extension"]["org.cds-ml.risk"]["probability"]
    assert card["extension"]["org.cds-ml.risk"]["band"] == "low"  # the stay is chosen to be low risk
    assert "suggestions" not in card and card["indicator"] == "info"


def test_fetched_from_fhir_equals_prefetched(client: httpx.Client, ehr: DemoFhirServer, ehr_server) -> None:
    s = stay()
    ehr.add(s.all())
    prefetched = card_of(client.post(URL, json=discharge_hook_request(s)))
    assert ehr.seen == []
    body = discharge_hook_request(s, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token)
    fetched = card_of(client.post(URL, json=body))
    assert (
        fetched["extension"]["org.cds-ml.risk"]["probability"]
        == prefetched["extension"]["org.cds-ml.risk"]["probability"]
    )
    paths = {x.path for x in ehr.seen}
    assert {
        f"/Patient/{s.patient_id}",
        f"/Encounter/{s.encounter_id}",
        "/Condition",
        "/MedicationRequest",
        "/Observation",
        "/Procedure",
    } <= paths
    assert any("_offset" in x.query for x in ehr.seen)  # labs needed more than one page
    assert all(x.authorized for x in ehr.seen)


def test_patient_view_needs_an_inpatient_encounter(client: httpx.Client) -> None:
    s = stay()
    with_encounter = discharge_hook_request(s, hook="patient-view")
    assert (
        card_of(client.post(URL, json=with_encounter))["extension"]["org.cds-ml.risk"]["model"]
        == "readmission"
    )
    without = discharge_hook_request(s, hook="patient-view")
    del without["context"]["encounterId"]
    response = client.post(URL, json=without)
    assert response.status_code == 200 and response.json() == {"cards": []}
    s.encounter["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    response = client.post(URL, json=discharge_hook_request(s, hook="patient-view"))
    assert response.status_code == 200 and response.json() == {"cards": []}


def test_feedback_on_a_readmission_card_is_recorded(client: httpx.Client) -> None:
    card = card_of(client.post(URL, json=discharge_hook_request(stay())))
    item = feedback(card["uuid"], reason=card["overrideReasons"][1], comment="follow-up booked")
    result = client.post(f"{URL}/feedback", json={"feedback": [item]})
    assert result.status_code == 200 and result.json()["results"][0]["status"] == "created"
