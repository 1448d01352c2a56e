"""The service over real HTTP (uvicorn on loopback): discovery, a hook call, bad input, feedback."""

from __future__ import annotations

import uuid

import httpx
import pytest

from demo_ehr import patient_view_request
from fhir_mappings import sepsis_feature_spec
from hooks.drivers import FeatureShare, group_contributions, split_drivers
from testkit.helpers import feedback, no_empty_values, synthetic_stay
from testkit.metrics import metric


@pytest.fixture
def client(ehr_client: httpx.Client) -> httpx.Client:
    """Every call here is authenticated as the loopback test EHR (ES384 JWT per request)."""
    return ehr_client


@pytest.fixture
def settings(secure_settings):
    return secure_settings


def call(client: httpx.Client, body: dict) -> httpx.Response:
    return client.post("/cds-services/sepsis-risk", json=body)


def test_discovery_lists_the_sepsis_service(client: httpx.Client) -> None:
    services = client.get("/cds-services").json()["services"]
    sepsis = next(s for s in services if s["id"] == "sepsis-risk")
    assert sepsis["hook"] == "patient-view"
    assert sepsis["title"] and sepsis["description"] and sepsis["usageRequirements"]
    assert sepsis["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert {"encounters", "vitals", "labs"} <= sepsis["prefetch"].keys()
    assert no_empty_values(services) == []


def test_hook_call_answers_with_an_explained_card(client: httpx.Client) -> None:
    response = call(client, patient_view_request(synthetic_stay()))
    assert response.status_code == 200
    body = response.json()
    assert no_empty_values(body) == []
    [card] = body["cards"]
    assert uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140 and "%" in card["summary"]
    assert card["indicator"] in ("info", "warning", "critical")
    data = card["extension"]["org.cds-ml.risk"]
    assert 0 < data["probability"] < 1 and data["modelVersion"] == card["source"]["label"].rsplit("v", 1)[1]
    assert f"{100 * data['probability']:.1f}%" in card["summary"] or "<0.1%" in card["summary"]
    assert data["icuHour"] == 30
    contributions = data["shap"]["contributions"]
    assert contributions and all({"feature", "shap"} <= c.keys() for c in contributions)
    top = max(contributions, key=lambda c: abs(c["shap"]))
    assert "**What drives this score** (SHAP, each clinical variable" in card["detail"]
    assert card["detail"].count("\n- ") >= 3  # driver lines with values and units
    assert any(unit in card["detail"] for unit in ("/min", "mmHg", "°C", " h", "mmol/L", "years"))
    # The largest clinical driver (a variable's features summed) is the first the clinician reads,
    # named by its physiology; the largest single feature belongs to one of the drivers worded.
    worded = data["shap"]["drivers"]
    body_text = card["detail"].split("features summed):", 1)[1].strip().replace("**", "")
    assert body_text.splitlines()[0].startswith(
        f"- {'↑' if worded[0]['shap'] > 0 else '↓'} {worded[0]['text']}"
    )
    measured = [d for d in worded if not d["text"].startswith("no ")]
    assert [abs(d["shap"]) for d in measured] == sorted((abs(d["shap"]) for d in measured), reverse=True)
    # The worded drivers are the card's exact contributions grouped by variable: the 5 largest
    # measured recently, then up to 3 gaps in the data.
    labels = {f.name: (f.label, f.unit) for f in sepsis_feature_spec().features}
    shares = [
        FeatureShare(c["feature"], *labels[c["feature"]], c.get("value"), c["shap"]) for c in contributions
    ]
    drivers, gaps = split_drivers(group_contributions(shares, labels), 5, min_abs=0.01)
    assert [d["variable"] for d in worded] == [d.variable for d in (*drivers, *gaps[:3])]
    assert top["feature"] in {c["feature"] for c in contributions}
    assert all(r["display"] for r in card["overrideReasons"])


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda b: "{not json", 400),
        (lambda b: {**b, "context": {k: v for k, v in b["context"].items() if k != "patientId"}}, 400),
        (lambda b: {k: v for k, v in b.items() if k != "hookInstance"}, 400),
        (lambda b: {**b, "hook": "order-sign"}, 400),
        (lambda b: {**b, "prefetch": {**b["prefetch"], "patient": "<html>502 Bad Gateway</html>"}}, 412),
        (
            lambda b: {
                **b,
                "prefetch": {
                    **b["prefetch"],
                    "vitals": {"resourceType": "Bundle", "entry": [{"resource": {"no": "type"}}]},
                },
            },
            422,
        ),
        (
            lambda b: {
                **b,
                "prefetch": {
                    **b["prefetch"],
                    "patient": {**b["prefetch"]["patient"], "birthDate": "yesterday"},
                },
            },
            422,
        ),
        (
            lambda b: {
                **b,
                "fhirAuthorization": {
                    "access_token": "x",
                    "token_type": "Bearer",
                    "expires_in": 1,
                    "scope": "s",
                    "subject": "c",
                },
            },
            400,
        ),
        (lambda b: [b], 400),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_stores_nothing(
    client: httpx.Client, settings, mutate, status: int
) -> None:
    body = mutate(patient_view_request(synthetic_stay()))
    if isinstance(body, str):
        response = client.post(
            "/cds-services/sepsis-risk", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = call(client, body)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]
    assert _stored_cards(settings) == 0


def test_unknown_service_is_404(client: httpx.Client) -> None:
    response = client.post("/cds-services/no-such-service", json=patient_view_request(synthetic_stay()))
    assert response.status_code == 404
    assert "no-such-service" in response.json()["issue"][0]["diagnostics"]


def test_patient_not_in_hospital_gets_no_cards(client: httpx.Client) -> None:
    stay = synthetic_stay()
    stay.encounter["status"] = "finished"
    body = patient_view_request(stay, with_encounter_id=False)
    response = call(client, body)
    assert response.status_code == 200 and response.json() == {"cards": []}


def test_feedback_is_recorded_once_and_later_decisions_win(client: httpx.Client) -> None:
    card = call(client, patient_view_request(synthetic_stay())).json()["cards"][0]
    reason = card["overrideReasons"][0]
    item = feedback(card["uuid"], reason=reason, comment="reviewed at bedside")
    first = client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [item]})
    assert first.status_code == 200 and first.json()["results"][0]["status"] == "created"
    again = client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [item, item]})
    assert [r["status"] for r in again.json()["results"]] == ["unchanged", "unchanged"]
    accepted = [card["suggestions"][0]["uuid"]]
    later = feedback(card["uuid"], "accepted", when="2026-11-20T11:00:00Z", accepted=accepted)
    assert (
        client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [later]}).json()["results"][0][
            "status"
        ]
        == "updated"
    )
    earlier = feedback(card["uuid"], "accepted", when="2026-11-20T09:00:00Z", accepted=accepted)
    assert (
        client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [earlier]}).json()["results"][0][
            "status"
        ]
        == "unchanged"
    )


@pytest.mark.parametrize(
    "bad_item",
    [
        {"card": "unknown-card", "outcome": "accepted", "outcomeTimestamp": "2026-11-20T10:00:00Z"},
        {"outcome": "accepted", "outcomeTimestamp": "2026-11-20T10:00:00Z"},
        {"card": "CARD", "outcome": "accepted", "outcomeTimestamp": "2026-11-20T10:00:00Z"},
        {
            "card": "CARD",
            "outcome": "accepted",
            "acceptedSuggestions": [],
            "outcomeTimestamp": "2026-11-20T10:00:00Z",
        },
        {
            "card": "CARD",
            "outcome": "overridden",
            "acceptedSuggestions": [{"id": "x"}],
            "outcomeTimestamp": "2026-11-20T10:00:00Z",
        },
        "not an object",
        {"card": "CARD", "outcome": "maybe", "outcomeTimestamp": "2026-11-20T10:00:00Z"},
        {"card": "CARD", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00"},
        {"card": "CARD", "outcome": "overridden", "outcomeTimestamp": "9999-12-31T23:59:59Z"},
        {
            "card": "CARD",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-20T10:00:00Z",
            "overrideReason": {"userComment": "x" * 2001},
        },
        {
            "card": "CARD",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-20T10:00:00Z",
            "overrideReason": {"reason": {"system": "x"}},
        },
    ],
)
def test_a_bad_feedback_item_refuses_the_whole_batch(client: httpx.Client, settings, bad_item: dict) -> None:
    card = call(client, patient_view_request(synthetic_stay())).json()["cards"][0]
    good = feedback(card["uuid"], comment="ok")
    bad = (
        {k: (card["uuid"] if v == "CARD" else v) for k, v in bad_item.items()}
        if isinstance(bad_item, dict)
        else bad_item
    )
    response = client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [good, bad]})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["issue"][0]["diagnostics"]
    assert _stored_feedback(settings) == 0


@pytest.mark.parametrize(
    ("odd", "flag"),
    [
        (
            {
                "overrideReason": {
                    "reason": {"system": "urn:site:reasons", "code": "made-up", "display": "Made up"}
                }
            },
            "reason-not-offered",
        ),
        (
            {"outcome": "accepted", "acceptedSuggestions": [{"id": "not-on-the-card"}]},
            "suggestion-not-offered",
        ),
    ],
)
def test_odd_feedback_is_recorded_as_given_and_flagged(
    client: httpx.Client, settings, odd: dict, flag: str
) -> None:
    card = call(client, patient_view_request(synthetic_stay())).json()["cards"][0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z", **odd}
    response = client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [item]})
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"card": card["uuid"], "status": "created", "flags": [flag]}]
    import json
    import sqlite3

    [(text,)] = sqlite3.connect(settings.sqlite_path).execute("SELECT resource FROM feedback").fetchall()
    provenance = json.loads(text)
    assert {
        "url": "http://cds-ml.org/fhir/StructureDefinition/feedback-flag",
        "valueCode": flag,
    } in provenance["extension"]
    if "overrideReason" in odd:
        assert provenance["reason"][0]["coding"][0]["code"] == "made-up"  # kept as the clinician gave it
    metrics = client.get("/metrics").text
    assert metric(metrics, "cds_feedback_flags_total", service="sepsis-risk", flag=flag) == 1


def _stored_cards(settings) -> int:
    import sqlite3

    if not settings.sqlite_path.exists():
        return 0
    return sqlite3.connect(settings.sqlite_path).execute("SELECT COUNT(*) FROM card").fetchone()[0]


def _stored_feedback(settings) -> int:
    import sqlite3

    return sqlite3.connect(settings.sqlite_path).execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def test_operation_outcome_entries_in_a_prefetch_bundle_are_skipped_and_counted(client: httpx.Client) -> None:
    stay = synthetic_stay()
    plain = call(client, patient_view_request(stay)).json()["cards"][0]
    body = patient_view_request(stay)
    warning = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "incomplete"}]}
    body["prefetch"]["vitals"]["entry"].append({"resource": warning, "search": {"mode": "outcome"}})
    before = _outcome_count(client)
    response = call(client, body)
    assert response.status_code == 200
    card = response.json()["cards"][0]
    key = "org.cds-ml.risk"
    assert card["extension"][key]["probability"] == plain["extension"][key]["probability"]
    assert _outcome_count(client) == before + 1


def _outcome_count(client: httpx.Client) -> int:
    return int(metric(client.get("/metrics").text, "cds_ehr_operation_outcomes_total", service="sepsis-risk"))


def test_the_hook_log_says_why_a_stay_is_not_scored(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A Cerner outpatient visit without a period: no card, and the log line names the stay reason
    (and local codes overruled by LOINC, when there are any)."""
    import logging

    from testkit.vendor_payloads import oracle_health_outpatient

    fixture = oracle_health_outpatient()
    resources = [e["resource"] for e in fixture.bundle()["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")

    def searchset(kind: str) -> dict[str, object]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources if r["resourceType"] == kind],
        }

    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u1", "patientId": patient["id"]},
        "prefetch": {
            "patient": patient,
            "encounters": searchset("Encounter"),
            "vitals": searchset("Observation"),
            "labs": searchset("Nothing"),
            "consent": None,
        },
    }
    caplog.set_level(logging.INFO, logger="cds.hook")
    response = call(client, body)
    assert response.status_code == 200 and response.json() == {"cards": []}
    [event] = [r.event for r in caplog.records if r.getMessage() == "hook answered"]  # type: ignore[attr-defined]
    assert event["reason"] == "not-applicable" and event["stay"] == "no-icu-clock"
