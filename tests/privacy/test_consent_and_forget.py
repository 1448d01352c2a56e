"""Consent and the right to be forgotten, end to end over HTTP with a loopback EHR: a refusal of
decision support read from the EHR (fallback) or the prefetch means no score; a refusal of
training use keeps the record out of `cds feedback export`; `cds forget` removes a patient's
records, from the database file too, and leaves a tombstone in a chain that still verifies;
`cds purge` applies the retention period."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.consent import Consent

from cds import Settings
from demo_ehr import DemoFhirServer, patient_view_request, serve_in_thread
from fhir_mappings import Pseudonymizer
from testkit.helpers import feedback, serve_cds, synthetic_stay

KEY = "test-key-0123456789abcdef"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SEPSIS = "/cds-services/sepsis-risk"


def consent(
    patient_id: str, purpose: str | None, *, cid: str = "optout-1", scope: str = "patient-privacy"
) -> dict[str, Any]:
    """An active opt-out, valid FHIR R4: deny, for `purpose` (None: for every purpose)."""
    provision: dict[str, Any] = {"type": "deny"}
    if purpose:
        provision["purpose"] = [{"system": ACT_REASON, "code": purpose}]
    resource = {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": scope}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-01-05T09:00:00Z",
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
        },
        "provision": provision,
    }
    Consent.model_validate(resource)
    return resource


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(var_dir=tmp_path / "var", pseudonym_key=KEY, auth_disabled_for_local_demo=True, **extra)


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "CDS_VAR_DIR": str(settings.var_dir), "CDS_PSEUDONYM_KEY": KEY}


def _cli(settings: Settings, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cards_stored(settings: Settings) -> int:
    with sqlite3.connect(settings.sqlite_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM card").fetchone()[0])


def _hook_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        getattr(r, "event", {}).get("reason") for r in caplog.records if r.getMessage() == "hook answered"
    ]


@pytest.mark.parametrize("info_card", [False, True])
def test_decision_support_refused_in_the_ehr_means_no_score(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, info_card: bool
) -> None:
    settings = _settings(tmp_path, consent_refused_card=info_card)
    stay = synthetic_stay(hours=12)
    ehr = DemoFhirServer(token="ehr-token")
    ehr.add([*stay.all(), consent(stay.patient_id, "TREAT")])
    caplog.set_level(logging.INFO, logger="cds")
    with serve_cds(settings) as cds, serve_in_thread(ehr.app()) as ehr_server:
        body = patient_view_request(stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token)
        answer = httpx.post(f"{cds.url}{SEPSIS}", json=body, timeout=10)
        assert answer.status_code == 200
        cards = answer.json()["cards"]
        if info_card:
            assert len(cards) == 1 and cards[0]["indicator"] == "info" and "declined" in cards[0]["summary"]
            assert "extension" not in cards[0]  # no score
        else:
            assert cards == []
        # The same patient through the prefetch: the same refusal.
        prefetched = patient_view_request(stay, consents=[consent(stay.patient_id, "TREAT")])
        again = httpx.post(f"{cds.url}{SEPSIS}", json=prefetched, timeout=10).json()["cards"]
        assert [c["summary"] for c in again] == [c["summary"] for c in cards]
        # Another patient, no Consent: scored.
        other = synthetic_stay(hours=12, patient=99)
        assert httpx.post(f"{cds.url}{SEPSIS}", json=patient_view_request(other), timeout=10).json()["cards"][
            0
        ]["extension"]
    consent_reads = [s for s in ehr.seen if s.path == "/Consent"]
    assert (
        len(consent_reads) == 1
        and f"patient={stay.patient_id}" in consent_reads[0].query
        and consent_reads[0].authorized
    )
    assert _hook_reasons(caplog) == ["consent-refused", "consent-refused", "card"]
    refused = [
        r
        for r in caplog.records
        if r.getMessage().startswith("no score: the patient declined decision support")
    ]
    assert len(refused) == 2
    assert _cards_stored(settings) == 1  # only the other patient's


def test_training_use_refused_keeps_the_record_out_of_exports(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    refused, other = synthetic_stay(hours=12, patient=1), synthetic_stay(hours=12, patient=2)
    with serve_cds(settings) as cds, httpx.Client(base_url=cds.url, timeout=10) as client:
        card = client.post(
            SEPSIS, json=patient_view_request(refused, consents=[consent(refused.patient_id, "HRESCH")])
        ).json()["cards"][0]
        kept = client.post(SEPSIS, json=patient_view_request(other)).json()["cards"][0]
        assert card["extension"]["org.cds-ml.risk"]["probability"] > 0  # decision support goes on
        for c in (card, kept):
            item = feedback(c["uuid"], "overridden", reason=c["overrideReasons"][0])
            assert (
                client.post(f"{SEPSIS}/feedback", json={"feedback": [item]}).json()["results"][0]["status"]
                == "created"
            )
    out = tmp_path / "export"
    counts = _cli(settings, "feedback", "export", "--out", str(out))
    assert counts | {"out": ""} == {
        "out": "",
        "RiskAssessment": 1,
        "Provenance": 1,
        "spooled": 0,
        "withheld": 2,
    }
    exported = (out / "RiskAssessment.ndjson").read_text() + (out / "Provenance.ndjson").read_text()
    assert kept["uuid"] in exported and card["uuid"] not in exported
    with sqlite3.connect(settings.sqlite_path) as db:  # kept for the clinical record, labelled
        (resource,) = db.execute("SELECT resource FROM card WHERE card_uuid = ?", (card["uuid"],)).fetchone()
    assert json.loads(resource)["meta"]["security"][0]["code"] == "NOREUSE"
    trail = _cli(settings, "audit", "verify")
    assert trail["ok"] and trail["kinds"] == {"card-scored": 2, "feedback-recorded": 2}


def test_forget_removes_every_record_of_the_patient_and_the_chain_still_verifies(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    gone, stays = synthetic_stay(hours=12, patient=31), synthetic_stay(hours=12, patient=32)
    ehr = DemoFhirServer(token="ehr-token")
    ehr.add(gone.all())
    with (
        serve_cds(settings) as cds,
        serve_in_thread(ehr.app()) as ehr_server,
        httpx.Client(base_url=cds.url, timeout=10) as client,
    ):
        fetched = patient_view_request(
            gone, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token
        )
        cards = [
            client.post(SEPSIS, json=body).json()["cards"][0]
            for body in (fetched, patient_view_request(gone), patient_view_request(stays))
        ]
        for c in cards:
            item = feedback(c["uuid"], "overridden", reason=c["overrideReasons"][0])
            assert client.post(f"{SEPSIS}/feedback", json={"feedback": [item]}).status_code == 200
        ehr_url = ehr_server.url
    pseudo = Pseudonymizer(KEY.encode())
    pseudonyms = [pseudo.pseudonym("Patient", gone.patient_id, source=s) for s in ("", ehr_url)]
    before = settings.sqlite_path.read_bytes()
    assert all(p.encode() in before for p in pseudonyms)  # both sources' pseudonyms were stored

    done = _cli(settings, "forget", "--patient", gone.patient_id, "--fhir-server", ehr_url)
    assert done["cards"] == 2 and done["feedback"] == 2 and done["request"]
    assert gone.patient_id not in json.dumps(done)

    stored = settings.sqlite_path.read_bytes()
    wal = settings.sqlite_path.with_name(settings.sqlite_path.name + "-wal")
    stored += wal.read_bytes() if wal.exists() else b""
    for p in pseudonyms:
        assert p.encode() not in stored  # not in a free page or the WAL either
    for c in cards[:2]:
        assert c["uuid"].encode() in stored  # the audit entries keep the card uuids (no patient identity)
    assert _cards_stored(settings) == 1
    out = tmp_path / "export"
    counts = _cli(settings, "feedback", "export", "--out", str(out))
    assert (counts["RiskAssessment"], counts["Provenance"]) == (1, 1)
    assert cards[2]["uuid"] in (out / "RiskAssessment.ndjson").read_text()
    trail = _cli(settings, "audit", "verify")
    assert trail["ok"] and trail["kinds"]["patient-forgotten"] == 1 and trail["kinds"]["card-scored"] == 3


def test_purge_applies_the_retention_period(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with serve_cds(settings) as cds, httpx.Client(base_url=cds.url, timeout=10) as client:
        card = client.post(SEPSIS, json=patient_view_request(synthetic_stay(hours=12))).json()["cards"][0]
        client.post(
            f"{SEPSIS}/feedback",
            json={"feedback": [feedback(card["uuid"], "overridden", reason=card["overrideReasons"][0])]},
        )
    assert _cli(settings, "purge", "--older-than-days", "30")["cards"] == 0  # younger than the period: kept
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "purge"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "CDS_RETENTION_DAYS" in done.stderr
    env_days = _env(settings) | {"CDS_RETENTION_DAYS": "0.000001"}  # ~0.1 s
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "purge"], env=env_days, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cards"] == 1 and json.loads(done.stdout)["feedback"] == 1
    assert _cards_stored(settings) == 0
    trail = _cli(settings, "audit", "verify")
    assert trail["ok"] and trail["kinds"]["records-purged"] == 2


class _NoConsentSearch(DemoFhirServer):
    """An EHR whose FHIR server does not support Consent search (400)."""

    async def _search(self, request: Any) -> Any:
        if request.path_params["rtype"] == "Consent":
            from starlette.responses import JSONResponse

            return JSONResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "not-supported"}],
                },
                status_code=400,
            )
        return await super()._search(request)


def test_an_ehr_without_consent_search_is_scored_and_says_so_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    stay = synthetic_stay(hours=12)
    ehr = _NoConsentSearch(token="ehr-token")
    ehr.add(stay.all())
    caplog.set_level(logging.INFO, logger="cds")
    with serve_cds(settings) as cds, serve_in_thread(ehr.app()) as ehr_server:
        body = patient_view_request(stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token)
        answer = httpx.post(f"{cds.url}{SEPSIS}", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["cards"][0]["extension"]
    lines = [getattr(r, "event", {}) for r in caplog.records if r.getMessage() == "hook answered"]
    assert lines[-1]["reason"] == "card" and lines[-1]["consent_unreadable"] == 1
