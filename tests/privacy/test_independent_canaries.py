"""The privacy office's check, independent of our own encoder and test helpers: its own FHIR
resources full of its own canaries (ids shaped like canaries, names, MRN, SSN, phone, email,
address, birth date, narrative, notes, a free-text comment, the access token), sent to `cds serve`
started as a separate process exactly as a site runs it (JSON logs at DEBUG, JWT authentication),
through the prefetch and the FHIR fallback against a loopback EHR, feedback with canary comments,
and the error paths (ids with spaces and unicode, a refusing EHR, a failing EHR that echoes the
patient, an unknown card, an oversized comment, a broken body, no JWT). Then everything the server
wrote is searched for every canary: every file of its var dir (the SQLite store and its WAL, the
replay window, the anchors, the key), its stdout and stderr, /metrics, every answer it gave, and
what `cds feedback export`, `cds audit export` and `cds audit verify` write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from demo_ehr import DemoFhirServer, EhrIdentity, EhrJwtAuth, free_port, serve_in_thread, wait_until_healthy

KEY = "privacy-office-key-0a1b2c3d4e5f"
PID = "CNRY-Pt.7731-x"
ENC = "CNRY-Enc.5512"
LOC = "CNRY-Loc-3"
PRACT = "CNRY-Dr-991"
TOKEN = "CNRYACCESSTOKEN-7c1e0f9a2b"
BAD_IDS = ["CNRY Pätiënt 42", "CNRY-Ωmega-7", "CNRY/../Pt-8"]  # not FHIR ids: refused, never echoed
CANARIES = [
    PID,
    ENC,
    LOC,
    PRACT,
    "CNRY-Obs-",
    TOKEN,
    "CNRY-HOOKINSTANCE",
    *BAD_IDS,
    "Pätiënt",
    "Ωmega",
    "Zephyrine",
    "Oglethorpe",
    "MRN-CNRY-604413",
    "987-65-4329",
    "013-4477",
    "zo.cnry@example.net",
    "Quillfeather",
    "Brindlemoor",
    "1948-02-29",
    "CNRYNARRATIVE",
    "CNRYOBSNOTE",
    "CNRYECHO",
]
# A word of the comment that identifies nobody: kept only when a site opts in to scrubbed comments.
COMMENT_WORD = "CNRYCOMMENT"
LOINC = "http://loinc.org"
VITALS = {
    "8867-4": ("/min", 104.0),
    "9279-1": ("/min", 26.0),
    "59408-5": ("%", 93.0),
    "8310-5": ("Cel", 38.6),
    "8480-6": ("mm[Hg]", 96.0),
    "8478-0": ("mm[Hg]", 64.0),
}
LABS = {"2524-7": ("mmol/L", 3.4), "6690-2": ("10*3/uL", 15.1), "2160-0": ("mg/dL", 1.9)}


def _category(code: str) -> list[dict[str, Any]]:
    return [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}
    ]


def _resources(now: datetime) -> dict[str, Any]:
    """The office's own encoding of one ICU stay (validated with fhir.resources R4B)."""
    start = now - timedelta(hours=10)
    narrative = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Zephyrine Oglethorpe-Vance CNRYNARRATIVE</div>',
    }
    patient = {
        "resourceType": "Patient",
        "id": PID,
        "text": narrative,
        "gender": "female",
        "birthDate": "1948-02-29",
        "identifier": [
            {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-CNRY-604413"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "987-65-4329"},
        ],
        "name": [{"family": "Oglethorpe-Vance", "given": ["Zephyrine"]}],
        "telecom": [
            {"system": "phone", "value": "+1 (555) 013-4477"},
            {"system": "email", "value": "zo.cnry@example.net"},
        ],
        "address": [{"line": ["7 Quillfeather Lane"], "city": "Brindlemoor", "postalCode": "CN-90210"}],
    }
    encounter = {
        "resourceType": "Encounter",
        "id": ENC,
        "status": "in-progress",
        "text": narrative,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "identifier": [{"value": "MRN-CNRY-604413"}],
        "subject": {"reference": f"Patient/{PID}", "display": "Zephyrine Oglethorpe-Vance"},
        "period": {"start": (start - timedelta(hours=6)).isoformat()},
        "location": [
            {
                "location": {"reference": f"Location/{LOC}"},
                "status": "active",
                "period": {"start": start.isoformat()},
            }
        ],
    }
    location = {
        "resourceType": "Location",
        "id": LOC,
        "name": "ICU bed of Zephyrine Oglethorpe-Vance",
        "type": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "ICU"}]}
        ],
    }
    vitals, labs = [], []
    for hour in range(1, 11):
        when = (start + timedelta(hours=hour, minutes=3)).isoformat()
        for table, category, out in ((VITALS, "vital-signs", vitals), (LABS, "laboratory", labs)):
            if category == "laboratory" and hour % 4:
                continue
            for code, (unit, value) in table.items():
                out.append(
                    {
                        "resourceType": "Observation",
                        "id": f"CNRY-Obs-{code}-{hour}",
                        "status": "final",
                        "category": _category(category),
                        "code": {"coding": [{"system": LOINC, "code": code}]},
                        "subject": {"reference": f"Patient/{PID}", "display": "Zephyrine Oglethorpe-Vance"},
                        "encounter": {"reference": f"Encounter/{ENC}"},
                        "effectiveDateTime": when,
                        "valueQuantity": {
                            "value": value + hour / 10,
                            "unit": unit,
                            "system": "http://unitsofmeasure.org",
                            "code": unit,
                        },
                        "performer": [{"reference": f"Practitioner/{PRACT}", "display": "Dr Oglethorpe"}],
                        "note": [{"text": "CNRYOBSNOTE phoned +1 (555) 013-4477"}],
                    }
                )
    Patient.model_validate(patient)
    Encounter.model_validate(encounter)
    for o in vitals + labs:
        Observation.model_validate(o)
    return {"patient": patient, "encounter": encounter, "location": location, "vitals": vitals, "labs": labs}


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)],
    }
    Bundle.model_validate(bundle)
    return bundle


def _hook(
    fhir_server: str, *, prefetch: dict[str, Any] | None, token: str = TOKEN, patient: str = PID
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "CNRY-HOOKINSTANCE",
        "context": {"userId": f"Practitioner/{PRACT}", "patientId": patient, "encounterId": ENC},
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.rs",
            "subject": "cds",
            "patient": patient,
        },
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def _echoing_ehr() -> Starlette:
    """A failing EHR that puts the patient and a canary in its error answers."""

    async def fail(request: Request) -> JSONResponse:
        text = f"CNRYECHO no record for {request.url.path}?{request.url.query} Zephyrine Oglethorpe-Vance"
        return JSONResponse(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
            },
            status_code=500,
        )

    return Starlette(routes=[Route("/{path:path}", fail)])


class _Recording(EhrJwtAuth):
    def __init__(self, identity: EhrIdentity) -> None:
        super().__init__(identity)
        self.jwts: list[str] = []

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:  # type: ignore[override]
        for prepared in super().auth_flow(request):
            self.jwts.append(prepared.headers["Authorization"].removeprefix("Bearer "))
            yield prepared


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("backend", "comments"), [("sqlite", "omit"), ("sqlite", "scrubbed"), ("postgres", "omit")]
)
def test_no_canary_leaves_the_server(
    backend: str, comments: str, request: pytest.FixtureRequest, tmp_path: Path, ehr_identity: EhrIdentity
) -> None:
    database_url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    now = datetime.now(UTC)
    stay = _resources(now)
    ehr = DemoFhirServer(token=TOKEN, page_size=25)
    ehr.add([stay["patient"], stay["encounter"], stay["location"], *stay["vitals"], *stay["labs"]])
    var = tmp_path / "var"
    port = free_port()
    answers: list[str] = []
    with serve_in_thread(ehr.app()) as ehr_server, serve_in_thread(_echoing_ehr()) as bad_ehr:
        issuer = {
            "iss": ehr_identity.issuer,
            "jwks_url": ehr_identity.jwks_url,
            "fhir_servers": [ehr_server.url, bad_ehr.url],
        }
        env = {
            **os.environ,
            "CDS_VAR_DIR": str(var),
            "CDS_PORT": str(port),
            "CDS_PSEUDONYM_KEY": KEY,
            "CDS_LOG_LEVEL": "DEBUG",
            "CDS_AUTH_ISSUERS": json.dumps([issuer]),
            "CDS_FEEDBACK_COMMENTS": comments,
            "CDS_PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        if database_url:
            env["CDS_DATABASE_URL"] = database_url
        log_path = tmp_path / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "cds.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        auth = _Recording(ehr_identity)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, timeout_s=120)
            with httpx.Client(base_url=url, timeout=20, auth=auth) as client:

                def post(path: str, **kwargs: Any) -> httpx.Response:
                    response = client.post(path, **kwargs)
                    answers.append(response.text)
                    return response

                prefetch = {
                    "patient": stay["patient"],
                    "encounters": _bundle([stay["encounter"]]),
                    "vitals": _bundle(stay["vitals"]),
                    "labs": _bundle(stay["labs"]),
                    "consent": _bundle([]),
                }
                prefetched = post("/cds-services/sepsis-risk", json=_hook(ehr_server.url, prefetch=prefetch))
                fetched = post("/cds-services/sepsis-risk", json=_hook(ehr_server.url, prefetch=None))
                assert prefetched.status_code == fetched.status_code == 200, (prefetched.text, fetched.text)
                cards = [prefetched.json()["cards"][0], fetched.json()["cards"][0]]
                assert any(s.path == "/Observation" for s in ehr.seen) and any(
                    s.path == f"/Location/{LOC}" for s in ehr.seen
                )
                comment = (
                    "CNRYCOMMENT spoke with Mrs Oglethorpe-Vance and Zephyrine, MRN-CNRY-604413, born "
                    "1948-02-29, "
                    f"call +1 (555) 013-4477 or zo.cnry@example.net; {PID} seen by {PRACT}; lactate repeat "
                    "pending"
                )
                items = [
                    {
                        "card": c["uuid"],
                        "outcome": "overridden",
                        "outcomeTimestamp": now.isoformat(),
                        "overrideReason": {"reason": c["overrideReasons"][0], "userComment": comment},
                    }
                    for c in cards
                ]
                assert post("/cds-services/sepsis-risk/feedback", json={"feedback": items}).status_code == 200

                # Error paths.
                for bad in BAD_IDS:
                    assert (
                        post(
                            "/cds-services/sepsis-risk",
                            json=_hook(ehr_server.url, prefetch=None, patient=bad),
                        ).status_code
                        == 400
                    )
                assert (
                    post(
                        "/cds-services/sepsis-risk",
                        json=_hook(ehr_server.url, prefetch=None, token=TOKEN + "-wrong"),
                    ).status_code
                    == 412
                )
                assert (
                    post("/cds-services/sepsis-risk", json=_hook(bad_ehr.url, prefetch=None)).status_code
                    == 412
                )
                unknown = [{**items[0], "card": "CNRY-Pt.7731-x-card"}]
                assert (
                    post("/cds-services/sepsis-risk/feedback", json={"feedback": unknown}).status_code == 404
                )
                huge = [{**items[0], "overrideReason": {"userComment": comment * 40}}]
                assert post("/cds-services/sepsis-risk/feedback", json={"feedback": huge}).status_code == 400
                broken = json.dumps(_hook(ehr_server.url, prefetch=None))[:-7]
                assert (
                    post(
                        "/cds-services/sepsis-risk",
                        content=broken,
                        headers={"content-type": "application/json"},
                    ).status_code
                    == 400
                )
                anonymous = httpx.post(
                    f"{url}/cds-services/sepsis-risk", json=_hook(ehr_server.url, prefetch=None), timeout=20
                )
                answers.append(anonymous.text)
                assert anonymous.status_code == 401
                metrics = client.get("/metrics").text
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    exports = tmp_path / "export"
    cli_out = _cli(env, "feedback", "export", "--out", str(exports))
    cli_out += _cli(env, "audit", "export", "--out", str(exports / "AuditEvent.ndjson"))
    cli_out += _cli(env, "audit", "verify")
    assert json.loads(cli_out.strip().splitlines()[-1])["ok"]

    # The only identifiers an answer may carry: the EHR's own references inside the draft orders it
    # proposes back to that EHR (ServiceRequest.subject/encounter are required there).
    shown = []
    for text in answers:
        try:
            body = json.loads(text)
        except ValueError:
            shown.append(text)
            continue
        for card in body.get("cards", []) if isinstance(body, dict) else []:
            for suggestion in card.get("suggestions", []):
                for action in suggestion["actions"]:
                    assert action["resource"]["subject"] == {"reference": f"Patient/{PID}"}
                    del action["resource"]["subject"], action["resource"]["encounter"]
        shown.append(json.dumps(body, ensure_ascii=False))

    places: dict[str, str] = {
        "answers": "\n".join(shown),
        "metrics": metrics,
        "server log": log_path.read_text(encoding="utf-8", errors="replace"),
        "cli output": cli_out,
    }
    if database_url:
        from tests.test_deid_canaries import _postgres_dump

        places["postgres (every row of every table)"] = _postgres_dump(database_url)
    files = sorted(p for p in var.rglob("*") if p.is_file()) + sorted(
        p for p in exports.rglob("*") if p.is_file()
    )
    assert {
        "cds.sqlite3",
        "audit-anchors.jsonl",
        "RiskAssessment.ndjson",
        "Provenance.ndjson",
        "AuditEvent.ndjson",
    } <= {p.name for p in files}  # (PostgreSQL mode: the SQLite file holds the replay window)
    for path in files:
        raw = path.read_bytes()
        places[str(path.relative_to(tmp_path))] = raw.decode("utf-8", errors="replace") + raw.decode(
            "latin-1"
        )
    canaries = CANARIES if comments == "scrubbed" else [*CANARIES, COMMENT_WORD]
    leaks = {
        where: [c for c in canaries if c in text or c.casefold() in text.casefold()]
        for where, text in places.items()
    }
    leaks |= {
        f"{where} (JWT)": ["jwt"] for where, text in places.items() if any(j in text for j in auth.jwts)
    }
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}
    assert len(auth.jwts) >= 10 and KEY not in places["server log"]

    # It was all there to leak: the cards, the feedback, the comment's length (and in scrubbed mode
    # its clinical words).
    stored = places.get("postgres (every row of every table)") or places["var/cds.sqlite3"]
    assert all(c["uuid"] in stored for c in cards)
    provenances = [json.loads(line) for line in (exports / "Provenance.ndjson").read_text().splitlines()]
    assert len(provenances) == 2
    lengths = [
        e["valueInteger"]
        for p in provenances
        for e in p["extension"]
        if e["url"].endswith("override-comment-length")
    ]
    assert lengths == [len(comment)] * 2
    texts = [
        e["valueString"]
        for p in provenances
        for e in p["extension"]
        if e["url"].endswith("/override-comment")
    ]
    if comments == "omit":
        assert texts == []
    else:
        assert len(texts) == 2 and all(
            "lactate repeat pending" in t and "spoke with" in t and COMMENT_WORD in t for t in texts
        ), texts
    print(f"canaries: {len(canaries)}; places searched: {len(places)}: {sorted(places)}")
