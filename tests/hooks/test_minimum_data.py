"""No card from zero (or too little) usable data: each service's `minimum_data`, the NoCard it
answers below it, and the reason code that reaches the hook outcome (over real HTTP)."""

from __future__ import annotations

import copy
import math
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest

from demo_ehr import discharge_hook_request, discharge_to_fhir, patient_view_request
from fhir_mappings import CANONICAL_COLUMNS, DISCHARGE_COLUMNS, Pseudonymizer
from hooks import (
    INSUFFICIENT_DATA,
    READMISSION,
    SEPSIS,
    MinimumData,
    NoCard,
    ScoredCard,
    ScoringInput,
    Service,
)
from models import ModelRegistry, RiskModel, model_task
from testkit.helpers import synthetic_stay
from testkit.metrics import metric
from testkit.readmission_rows import row
from tests.handmade import vital_sign

PSEUDO = Pseudonymizer(b"minimum-data-key-0123456789")
DISCHARGED = datetime(2026, 3, 1, 12, tzinfo=UTC)
NAN = math.nan


def test_counts_per_row_stay_within_the_window_and_the_stay() -> None:
    rule = MinimumData(variables=("A", "B"), count=3, distinct=2, window_hours=3)
    columns = ("A", "B", "C")
    values = np.array(
        [  # stay 1: rows 0-4; stay 2: rows 5-6
            [1, NAN, 9],
            [1, NAN, 9],
            [1, 1, 9],
            [NAN, NAN, 9],
            [NAN, NAN, 9],
            [1, 1, NAN],
            [1, NAN, NAN],
        ]
    )
    start = np.array([0, 0, 0, 0, 0, 5, 5])
    found, distinct = rule.per_row(columns, values, start)
    assert found.tolist() == [1, 2, 4, 3, 2, 2, 3]  # C never counts; stay 2 does not see stay 1
    assert distinct.tolist() == [1, 1, 2, 2, 2, 2, 2]
    assert rule.met(columns, values, start).tolist() == [False, False, True, True, False, False, True]
    # One stay's own table: the verdict of its last row, with the counts for the log.
    assert rule.assess(columns, values[:4]) == (True, {"values": 3, "variables": 2})
    assert rule.assess(columns, values[:5]) == (False, {"values": 2, "variables": 2})
    assert rule.assess(columns, values[:0]) == (False, {"values": 0, "variables": 0})
    assert (
        "at least 3 measured values, of at least 2 different variables, among A, B in the last 3 hours"
        == rule.describe()
    )


def test_both_services_declare_their_minimum() -> None:
    sepsis, readmission = SEPSIS.minimum_data, READMISSION.minimum_data
    assert sepsis is not None and sepsis.window_hours == 6 and sepsis.count == 3 and sepsis.distinct == 2
    assert set(sepsis.variables) == {"HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2"}
    assert (
        readmission is not None and readmission.variables == ("dx1", "dx2", "dx3") and readmission.count == 1
    )
    assert sepsis.reason == readmission.reason == INSUFFICIENT_DATA


@cache
def _model(name: str) -> RiskModel:
    spec = model_task(name).feature_spec()
    return RiskModel(ModelRegistry().load(name, spec), spec, nthread=1)


def _fetched(body: dict[str, Any]) -> dict[str, Any]:
    return {
        k: [e["resource"] for e in v["entry"]] if v.get("resourceType") == "Bundle" else v
        for k, v in body["prefetch"].items()
    }


def _score(service: Service, body: dict[str, Any], now: datetime) -> ScoredCard | NoCard | None:
    inp = ScoringInput(
        context=body["context"],
        fetched=_fetched(body),
        model=_model(service.model_name),
        now=now,
        pseudonymizer=PSEUDO,
        card_uuid=str(uuid.uuid4()),
        source="",
    )
    return service.score(inp)


def _no_zone(obs: dict[str, Any]) -> None:
    obs["effectiveDateTime"] = obs["effectiveDateTime"][:19]  # 2026-03-01T10:30:00, no offset


def _garbage_date(obs: dict[str, Any]) -> None:
    obs["effectiveDateTime"] = "yesterday evening"


def _other_patient(obs: dict[str, Any]) -> None:
    obs["subject"] = {"reference": "Patient/someone-else"}


def _entered_in_error(obs: dict[str, Any]) -> None:
    obs["status"] = "entered-in-error"


def _impossible_value(obs: dict[str, Any]) -> None:
    for part in [obs, *obs.get("component", ())]:
        if "valueQuantity" in part:
            part["valueQuantity"]["value"] = -50


UNUSABLE = {
    "no-time-zone": (_no_zone, "bad-time"),
    "garbage-date": (_garbage_date, "bad-time"),
    "other-patient": (_other_patient, "other-patient"),
    "entered-in-error": (_entered_in_error, "status:entered-in-error"),
}


def _sepsis_request(spoil: Any = None) -> dict[str, Any]:
    body = patient_view_request(synthetic_stay(hours=12))
    if spoil is not None:
        for key in ("vitals", "labs"):
            for entry in body["prefetch"][key]["entry"]:
                spoil(entry["resource"])
    return body


@pytest.mark.parametrize("how", [*sorted(UNUSABLE), "impossible-values"])
def test_a_stay_with_no_usable_observation_gets_no_card_with_a_reason(how: str) -> None:
    now = datetime.now(UTC)
    assert isinstance(_score(SEPSIS, _sepsis_request(), now), ScoredCard)  # the same stay, unspoiled
    spoil, skipped = UNUSABLE.get(how, (_impossible_value, None))
    body = _sepsis_request(spoil)
    sent = sum(len(body["prefetch"][key]["entry"]) for key in ("vitals", "labs"))
    answer = _score(SEPSIS, body, now)
    assert isinstance(answer, NoCard) and answer.reason == INSUFFICIENT_DATA
    assert answer.log["minimum"] == {"values": 0, "variables": 0} and answer.log["measurements"] == 0
    if skipped:
        assert answer.log["skipped"] == {skipped: sent} and sent > 0
    else:
        assert sum(answer.log["implausible"].values()) > 0


def _vital(i: int, loinc: str, at: datetime) -> dict[str, Any]:
    return vital_sign(f"v{i}", loinc, 92, "/min", at, subject="Patient/p-9")


HR, RESP = "8867-4", "9279-1"


@pytest.mark.parametrize(
    ("measured", "card"),
    [
        ([(HR, 0.2), (HR, 1.2), (RESP, 2.2)], True),  # 3 values, 2 vital signs, within 6 h
        ([(HR, 0.2), (HR, 1.2), (HR, 2.2)], False),  # one vital sign only
        ([(HR, 0.2), (RESP, 1.2)], False),  # too few values
        ([(HR, 0.2), (HR, 0.4), (RESP, 0.6)], False),  # the same hour: one value per variable and hour
        ([(HR, 6.2), (HR, 7.2), (RESP, 8.2)], False),  # all older than the last 6 ICU hours
        ([(HR, 5.2), (HR, 7.2), (RESP, 4.2)], False),  # one of them too old
        ([(HR, 5.2), (HR, 3.2), (RESP, 4.2)], True),
    ],
)
def test_the_sepsis_minimum_counts_recent_vital_signs(measured: list[tuple[str, float]], card: bool) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    icu_start = now - timedelta(hours=10, minutes=30)  # now is in ICU hour 11
    body = {
        "context": {"userId": "Practitioner/1", "patientId": "p-9", "encounterId": "e-9"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p-9", "gender": "male", "birthDate": "1950-01-01"},
            "encounters": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "Encounter",
                            "id": "e-9",
                            "status": "in-progress",
                            "class": {"code": "IMP"},
                            "period": {"start": (icu_start - timedelta(hours=3)).isoformat()},
                            "location": [
                                {
                                    "location": {"display": "MICU 3"},
                                    "period": {"start": icu_start.isoformat()},
                                }
                            ],
                        }
                    }
                ],
            },
            "vitals": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [
                    {"resource": _vital(i, code, now - timedelta(hours=ago))}
                    for i, (code, ago) in enumerate(measured)
                ],
            },
        },
    }
    answer = _score(SEPSIS, body, now)
    assert isinstance(answer, ScoredCard if card else NoCard), answer
    if not card:
        assert answer.reason == INSUFFICIENT_DATA and answer.log["icu_hour"] == 11


def _discharge(change: Any = None) -> dict[str, Any]:
    res = discharge_to_fhir(row(), discharged_at=DISCHARGED)
    if change is not None:
        change(res)
    return discharge_hook_request(res)


def _no_diagnoses(res: Any) -> None:
    del res.encounter["diagnosis"]
    res.conditions.clear()


def _named_only(res: Any) -> None:
    res.encounter["diagnosis"] = [{"condition": {"display": "Heart failure"}, "rank": 1}]


def _unmapped_codes(res: Any) -> None:
    for condition in res.conditions:
        condition["code"] = {"coding": [{"system": "http://example.org/local-dx", "code": "HF-1"}]}


def _no_start(res: Any) -> None:
    del res.encounter["period"]["start"]


@pytest.mark.parametrize(
    "change", [_no_diagnoses, _named_only, _unmapped_codes, _no_start], ids=lambda f: f.__name__[1:]
)
def test_a_discharge_without_a_usable_diagnosis_or_start_gets_no_card(change: Any) -> None:
    assert isinstance(_score(READMISSION, _discharge(), DISCHARGED), ScoredCard)
    answer = _score(READMISSION, _discharge(change), DISCHARGED)
    assert isinstance(answer, NoCard) and answer.reason == INSUFFICIENT_DATA
    assert answer.log["minimum"] in ({"values": 0, "variables": 0}, {"period_start": 0})


def test_the_thresholds_read_the_table_the_model_reads() -> None:
    """The rules name columns of the tables the services score: a typo would make them vacuous."""
    assert SEPSIS.minimum_data is not None and READMISSION.minimum_data is not None
    assert set(SEPSIS.minimum_data.variables) <= set(CANONICAL_COLUMNS)
    assert set(READMISSION.minimum_data.variables) <= set(DISCHARGE_COLUMNS)


# --- over HTTP: no card, and the reason in the service's metrics -------------------------------


def _calls(client: httpx.Client, service: str, reason: str) -> int:
    return int(metric(client.get("/metrics").text, "cds_hook_calls_total", service=service, reason=reason))


def test_zero_usable_data_gets_no_card_over_http(cds_server) -> None:
    with httpx.Client(base_url=cds_server.url, timeout=10) as client:
        response = client.post("/cds-services/sepsis-risk", json=_sepsis_request(_no_zone))
        assert response.status_code == 200 and response.json() == {"cards": []}
        assert _calls(client, "sepsis-risk", INSUFFICIENT_DATA) == 1
        discharge = _discharge(_no_diagnoses)
        response = client.post("/cds-services/readmission-risk", json=copy.deepcopy(discharge))
        assert response.status_code == 200 and response.json() == {"cards": []}
        assert _calls(client, "readmission-risk", INSUFFICIENT_DATA) == 1
        # The same calls with usable data get their cards, and count as cards.
        assert len(client.post("/cds-services/sepsis-risk", json=_sepsis_request()).json()["cards"]) == 1
        assert _calls(client, "sepsis-risk", "card") == 1
