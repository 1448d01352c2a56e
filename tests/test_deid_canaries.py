"""HIPAA Safe Harbor, end to end: resources full of canary identifiers go through the whole
service over HTTP, and none of them comes out in features, cards, stores (the SQLite file, every
row of every PostgreSQL table, the card spool), exports (`cds feedback export`), JSON logs or /metrics."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cds import Settings, TrustedIssuer
from cds.logs import JsonFormatter
from demo_ehr import EhrIdentity, EhrJwtAuth, StayResources, patient_view_request
from fhir_mappings import PatientRecord, Pseudonymizer, build_features, sepsis_feature_spec, to_canonical
from testkit.helpers import feedback, serve_cds, synthetic_stay

KEY = "canary-key-0123456789abcdef"
PID = "CANARYPID7731"
CANARIES = [
    PID,
    "Zebulon",
    "Quackenbush",
    "MRN88442211",
    "999-12-3456",
    "42 Wallaby Way",
    "Springfieldia",
    "555-0199",
    "zq.canary@example.org",
    "1951-04-17",
    "CANARYNARRATIVE",
    "CANARYNOTE",
    "CANARYDOC991",
    "CANARYFREETEXT",
]


def _canary_stay() -> StayResources:
    stay = synthetic_stay(hours=20)
    text = json.dumps(stay.all()).replace(stay.patient_id, PID)
    patient, encounter, location, *observations = json.loads(text)
    narrative = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Zebulon Quackenbush CANARYNARRATIVE</div>',
    }
    patient.update(
        name=[{"family": "Quackenbush", "given": ["Zebulon"]}],
        identifier=[
            {"system": "urn:mrn", "value": "MRN88442211"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"},
        ],
        address=[{"line": ["42 Wallaby Way"], "city": "Springfieldia"}],
        telecom=[
            {"system": "phone", "value": "555-0199"},
            {"system": "email", "value": "zq.canary@example.org"},
        ],
        birthDate="1951-04-17",
        text=narrative,
    )
    encounter.update(text=narrative, identifier=[{"value": "MRN88442211"}])
    encounter["location"][0]["location"]["display"] += " (Zebulon Quackenbush)"
    for obs in observations:
        obs["subject"]["display"] = "Zebulon Quackenbush"
        obs["note"] = [{"text": "CANARYNOTE called 555-0199"}]
        obs["performer"] = [{"reference": "Practitioner/CANARYDOC991", "display": "Dr Quackenbush"}]
    single = next(o for o in observations if "valueQuantity" in o and "component" not in o)
    free = json.loads(json.dumps(single))
    free.update(
        id="free-text",
        code={"coding": [{"system": "urn:local", "code": "Zebulon Quackenbush"}], "text": "CANARYFREETEXT"},
    )
    free.pop("valueQuantity", None)
    free["valueString"] = "CANARYFREETEXT Zebulon"
    odd_unit = json.loads(json.dumps(single))
    odd_unit.update(id="odd-unit")
    odd_unit["valueQuantity"] = {"value": 80, "unit": "MRN88442211 Quackenbush"}
    return StayResources(patient, encounter, location, [*observations, free, odd_unit])


class _RecordingAuth(EhrJwtAuth):
    """Signs every call as the loopback EHR does, and keeps the tokens to prove none is kept by us."""

    def __init__(self, identity: EhrIdentity) -> None:
        super().__init__(identity)
        self.tokens: list[str] = []

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        for prepared in super().auth_flow(request):
            self.tokens.append(prepared.headers["Authorization"].removeprefix("Bearer "))
            yield prepared


def _feedback_for(card: dict) -> dict:
    """Accept the card's suggestion when it has one (2.0 requires acceptedSuggestions), else override."""
    if card.get("suggestions"):
        return feedback(card["uuid"], "accepted", accepted=[card["suggestions"][0]["uuid"]])
    return feedback(card["uuid"], "overridden", reason=card["overrideReasons"][0])


def _leaks(blob: str) -> list[str]:
    return [c for c in CANARIES if c in blob]


def _postgres_dump(url: str) -> str:
    """Every row of every table in the database, as text."""
    import psycopg

    parts = []
    with psycopg.connect(url) as db:
        tables = [
            r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ]
        assert {"card", "feedback", "audit_event", "registry_state"} <= set(tables)
        for table in tables:
            rows = db.execute(f'SELECT t::text FROM "{table}" t').fetchall()  # type: ignore[call-overload]
            parts += [f"{table}: {row[0]}" for row in rows]
    assert any(p.startswith("card: ") for p in parts) and any(p.startswith("feedback: ") for p in parts)
    return "\n".join(parts)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_canary_identifier_leaves_the_service(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, ehr_identity: EhrIdentity
) -> None:
    extra = {}
    if backend == "postgres":
        extra = {"database_url": request.getfixturevalue("postgres_url")}
    assert ehr_identity.jwks_url
    issuer = TrustedIssuer(iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url)
    settings = Settings(var_dir=tmp_path / "var", pseudonym_key=KEY, auth_issuers=(issuer,), **extra)
    auth = _RecordingAuth(ehr_identity)
    stay = _canary_stay()

    # Features: the canonical table and the feature rows computed from the same resources.
    record = PatientRecord(PID, stay.patient, stay.encounter, stay.observations, {})
    mapped = to_canonical(record, as_of=datetime.now(UTC), pseudonymizer=Pseudonymizer(KEY.encode()))
    features = build_features(mapped.table, sepsis_feature_spec())
    assert not _leaks(
        mapped.table.to_frame().to_string() + repr(features.tolist()) + json.dumps(mapped.report.as_dict())
    )
    assert mapped.table.column("Age")[0] == 75  # the birth date was read, and only the age leaves

    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with (
            serve_cds(settings) as server,
            httpx.Client(base_url=server.url, timeout=10, auth=auth) as client,
        ):
            body = patient_view_request(stay, user="Practitioner/CANARYDOC991")
            response = client.post("/cds-services/sepsis-risk", json=body)
            assert response.status_code == 200, response.text
            card = response.json()["cards"][0]
            done = client.post("/cds-services/sepsis-risk/feedback", json={"feedback": [_feedback_for(card)]})
            assert done.status_code == 200
            metrics = client.get("/metrics").text
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    # The only identifiers a card may carry are the EHR's own patient and encounter references,
    # inside the draft orders it proposes back to that EHR (ServiceRequest.subject is required);
    # nowhere else, and never stored.
    outside_orders = json.loads(response.text)
    for suggestion in outside_orders["cards"][0].get("suggestions", []):
        for action in suggestion["actions"]:
            assert action["resource"]["subject"] == {"reference": f"Patient/{PID}"}
            del action["resource"]["subject"], action["resource"]["encounter"]
    assert not _leaks(json.dumps(outside_orders)), "card"
    assert not _leaks(metrics), "metrics"
    log_text = logs.getvalue()
    assert "hook answered" in log_text
    assert not _leaks(log_text), "logs"
    assert KEY not in log_text
    assert len(auth.tokens) >= 3 and not any(token in log_text for token in auth.tokens), "bearer JWT in logs"

    stored = settings.sqlite_path.read_bytes().decode("latin-1")  # the replay window too, in both modes
    if backend == "postgres":
        assert settings.database_url
        stored += _postgres_dump(settings.database_url.get_secret_value())
        if settings.spool_path.exists():
            stored += settings.spool_path.read_bytes().decode("latin-1")
    assert card["uuid"] in stored
    assert not _leaks(stored), "store"
    assert not any(token in stored for token in auth.tokens), "bearer JWT in store"

    env = {**os.environ, "CDS_VAR_DIR": str(settings.var_dir), "CDS_PSEUDONYM_KEY": KEY}
    if settings.database_url:
        env["CDS_DATABASE_URL"] = settings.database_url.get_secret_value()
    out = tmp_path / "export"
    subprocess.run(
        [sys.executable, "-m", "cds.cli", "feedback", "export", "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    exported = "".join(p.read_text() for p in out.glob("*.ndjson"))
    assert card["uuid"] in exported
    assert not _leaks(exported), "export"
