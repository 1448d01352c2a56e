"""The FHIR fallback asks for the Observation categories the EHR's vendor profile names (a real
loopback FHIR server; the hook pipeline called in-process so the profile can be swapped)."""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cds import FhirClient, HookDeps, Settings, SQLiteStore, run_hook
from cds.app import load_models
from cds.schemas import HookRequest
from demo_ehr import DemoFhirServer, patient_view_request, serve_in_thread
from fhir_mappings import GENERIC, PROFILES, Pseudonymizer, VendorProfile
from hooks import SEPSIS
from testkit.helpers import synthetic_stay
from testkit.vendor_payloads import all_fixtures


def _run(
    profile: VendorProfile, body: dict, tmp_path: Path, *, outcome: bool = False, now: datetime | None = None
) -> Any:
    models = load_models(Settings(_env_file=None))

    async def go() -> Any:
        store = SQLiteStore(tmp_path / f"{profile.name}-{len(profile.observation_categories)}.sqlite3")
        async with httpx.AsyncClient(timeout=5) as http:
            deps = HookDeps(
                fhir=FhirClient(http),
                store=store,
                models=models,
                pseudonymizer=Pseudonymizer(b"k" * 32),
                profiles=lambda server, issuer: profile,
                **({"clock": lambda: now} if now is not None else {}),
            )
            answer = await run_hook(SEPSIS, HookRequest.model_validate(body), deps)
        await store.close()
        return answer if outcome else answer.details

    return asyncio.run(go())


def _categories(ehr: DemoFhirServer) -> set[str]:
    return {
        q.split("category=")[1].split("&")[0] for s in ehr.seen if s.path == "/Observation" for q in [s.query]
    }


def test_fallback_fetches_the_profiles_categories(tmp_path: Path) -> None:
    stay = synthetic_stay()
    ehr = DemoFhirServer(token="t", page_size=500)
    ehr.add(stay.all())
    exam = copy.deepcopy(stay.vitals()[0])  # the same kind of measurement, filed by this EHR under "exam"
    exam["id"] = "filed-under-exam"
    exam["category"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam"}]}
    ]
    ehr.add([exam])
    with serve_in_thread(ehr.app()) as server:
        body = patient_view_request(
            stay, prefetch=["patient", "encounters"], fhir_server=server.url, access_token="t"
        )
        generic = _run(GENERIC, body, tmp_path)
        assert _categories(ehr) == {"vital-signs", "laboratory"}
        ehr.seen.clear()
        wider = _run(
            replace(GENERIC, observation_categories=("vital-signs", "laboratory", "exam")), body, tmp_path
        )
        assert _categories(ehr) == {"vital-signs", "laboratory", "exam"}
        assert wider["observations"] == generic["observations"] + 1
        ehr.seen.clear()
        vitals_only = _run(replace(GENERIC, observation_categories=("vital-signs",)), body, tmp_path)
        assert _categories(ehr) == {"vital-signs"}
        assert vitals_only["observations"] < generic["observations"]


def test_prefetched_categories_are_not_fetched_again(tmp_path: Path) -> None:
    stay = synthetic_stay()
    ehr = DemoFhirServer(token="t", page_size=500)
    ehr.add(stay.all())
    with serve_in_thread(ehr.app()) as server:
        body = patient_view_request(
            stay, prefetch=["patient", "encounters", "vitals"], fhir_server=server.url, access_token="t"
        )
        _run(replace(GENERIC, observation_categories=("vital-signs", "laboratory", "exam")), body, tmp_path)
    assert _categories(ehr) == {"laboratory", "exam"}


def test_vendor_stays_over_the_fhir_fallback(tmp_path: Path) -> None:
    """Each hand-written vendor payload served by a loopback EHR and fetched by the fallback (no
    prefetch): a Cerner outpatient visit without a period, an Epic preadmission and a MEDITECH
    301-day clock are answered "not applicable" with the stay's reason; real ICU stays score."""
    for fixture in all_fixtures():
        resources = [e["resource"] for e in fixture.bundle()["entry"]]
        ehr = DemoFhirServer(token="t", page_size=500)
        ehr.add(resources)
        encounter = next(r for r in resources if r["resourceType"] == "Encounter")
        with serve_in_thread(ehr.app()) as server:
            body = {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": server.url,
                "fhirAuthorization": {
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.rs",
                    "subject": "cds",
                },
                "context": {
                    "userId": "Practitioner/p1",
                    "patientId": encounter["subject"]["reference"].split("/")[1],
                },
            }
            answer = _run(PROFILES[fixture.profile], body, tmp_path, outcome=True, now=fixture.now)
        if fixture.hook == "scored":
            assert answer.reason == "card" and len(answer.body["cards"]) == 1, (
                fixture.name,
                answer.reason,
                answer.details,
            )
        else:
            reason, _, stay = fixture.hook.partition(":")
            assert (answer.reason, answer.body) == (reason, {"cards": []}), fixture.name
            assert answer.details.get("stay") == (stay or None), (fixture.name, answer.details)
