"""Feedback survives a server restart and comes out of `cds feedback export` as valid FHIR R4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.riskassessment import RiskAssessment

from cds import Settings, TrustedIssuer
from demo_ehr import EhrIdentity, EhrJwtAuth, patient_view_request
from testkit.helpers import feedback, serve_cds, synthetic_stay


@pytest.fixture(params=["sqlite", "postgres"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path, ehr_identity: EhrIdentity) -> Settings:
    extra: dict = {"auth_issuers": (TrustedIssuer(iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url),)}
    if request.param == "postgres":
        extra |= {"database_url": request.getfixturevalue("postgres_url")}
    return Settings(var_dir=tmp_path / "var", pseudonym_key="test-key-0123456789abcdef", **extra)


def test_feedback_round_trips_to_the_export_across_a_restart(
    backend_settings: Settings, tmp_path: Path, ehr_identity: EhrIdentity
) -> None:
    stay = synthetic_stay()
    auth = EhrJwtAuth(ehr_identity, alg="RS384", epic=True)
    with serve_cds(backend_settings) as server:
        card = httpx.post(
            f"{server.url}/cds-services/sepsis-risk", json=patient_view_request(stay), timeout=10, auth=auth
        ).json()["cards"][0]
        item = feedback(
            card["uuid"], reason=card["overrideReasons"][1], comment="lactate was from a tourniquet draw"
        )
        first = httpx.post(
            f"{server.url}/cds-services/sepsis-risk/feedback",
            json={"feedback": [item]},
            timeout=10,
            auth=auth,
        )
        assert first.json()["results"][0]["status"] == "created"

    with serve_cds(backend_settings) as server:  # a new process would see the same
        again = httpx.post(
            f"{server.url}/cds-services/sepsis-risk/feedback",
            json={"feedback": [item]},
            timeout=10,
            auth=auth,
        )
        assert again.json()["results"][0]["status"] == "unchanged"

    env = {
        **os.environ,
        "CDS_VAR_DIR": str(backend_settings.var_dir),
        "CDS_PSEUDONYM_KEY": "test-key-0123456789abcdef",
    }
    if backend_settings.database_url:
        env["CDS_DATABASE_URL"] = backend_settings.database_url.get_secret_value()
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "feedback", "export", "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert json.loads(done.stdout) == {
        "out": str(out),
        "RiskAssessment": 1,
        "Provenance": 1,
        "spooled": 0,
        "withheld": 0,
    }
    risks = [json.loads(line) for line in (out / "RiskAssessment.ndjson").read_text().splitlines()]
    provenances = [json.loads(line) for line in (out / "Provenance.ndjson").read_text().splitlines()]
    assert [r["id"] for r in risks] == [card["uuid"]]
    assert len(provenances) == 1
    risk = RiskAssessment.model_validate(risks[0])
    prov = Provenance.model_validate(provenances[0])
    assert float(risk.prediction[0].probabilityDecimal) == pytest.approx(
        card["extension"]["org.cds-ml.risk"]["probability"]
    )
    assert prov.target[0].reference == f"RiskAssessment/{card['uuid']}"
    assert prov.activity.coding[0].code == "overridden"
    assert prov.reason[0].coding[0].code == card["overrideReasons"][1]["code"]
    assert provenances[0]["recorded"].startswith("2026-11-20T10:00:00")
    assert prov.agent[0].who.identifier.value.startswith("pr-")
    assert "demo-clinician" not in json.dumps(provenances) and stay.patient_id not in json.dumps(risks)
    # The comment's text is not kept by default (CDS_FEEDBACK_COMMENTS=omit), only its presence and length.
    assert "tourniquet" not in json.dumps(provenances)
    assert [e.valueInteger for e in prov.extension if e.url.endswith("/override-comment-length")] == [
        len("lactate was from a tourniquet draw")
    ]
    shap = [e for e in risk.extension if e.url.endswith("/shap-contribution")]
    card_shap = card["extension"]["org.cds-ml.risk"]["shap"]
    # The 20 largest one by one; the value and timing features of the drivers' variables in one list.
    kept = {next(x.valueString for x in e.extension if x.url == "feature") for e in shap}
    largest = sorted(card_shap["contributions"], key=lambda c: -abs(c["shap"]))[:20]
    assert {c["feature"] for c in largest} <= kept and len(shap) == 20
    context = [
        row for e in risk.extension if e.url.endswith("/shap-context") for row in json.loads(e.valueString)
    ]
    assert context and not {f for f, _, _ in context} & kept
    # Recorded contributions, the remainder and the base value add up to the card's margin.
    recorded = sum(float(next(x.valueDecimal for x in e.extension if x.url == "shap")) for e in shap)
    recorded += sum(shap_value for _, shap_value, _ in context)
    other = sum(float(e.valueDecimal) for e in risk.extension if e.url.endswith("/shap-other"))
    base = float(next(e.valueDecimal for e in risk.extension if e.url.endswith("/shap-base-value")))
    assert recorded + other + base == pytest.approx(
        card_shap["baseValue"] + sum(c["shap"] for c in card_shap["contributions"]), abs=1e-4
    )
