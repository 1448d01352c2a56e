"""The FHIR fallback asks for the Observation categories the EHR's vendor profile names (a real
loopback FHIR server; the hook pipeline called in-process so the profile can be swapped)."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from pathlib import Path

import httpx

from cds import FhirClient, HookDeps, Settings, SQLiteStore, run_hook
from cds.app import load_models
from cds.schemas import HookRequest
from demo_ehr import DemoFhirServer, patient_view_request, serve_in_thread
from fhir_mappings import GENERIC, Pseudonymizer, VendorProfile
from hooks import SEPSIS
from tests.cds.helpers import synthetic_stay


def _run(profile: VendorProfile, body: dict, tmp_path: Path) -> dict:
    models = load_models(Settings(_env_file=None))

    async def go() -> dict:
        store = SQLiteStore(tmp_path / f"{profile.name}-{len(profile.observation_categories)}.sqlite3")
        async with httpx.AsyncClient(timeout=5) as http:
            deps = HookDeps(
                fhir=FhirClient(http),
                store=store,
                models=models,
                pseudonymizer=Pseudonymizer(b"k" * 32),
                profiles=lambda server, issuer: profile,
            )
            outcome = await run_hook(SEPSIS, HookRequest.model_validate(body), deps)
        await store.close()
        return outcome.details

    return asyncio.run(go())


def _categories(ehr: DemoFhirServer) -> set[str]:
    return {q.split("category=")[1].split("&")[0] for s in ehr.seen if s.path == "/Observation" for q in [s.query]}


def test_fallback_fetches_the_profiles_categories(tmp_path: Path) -> None:
    stay = synthetic_stay()
    ehr = DemoFhirServer(token="t", page_size=500)
    ehr.add(stay.all())
    exam = copy.deepcopy(stay.vitals()[0])  # the same kind of measurement, filed by this EHR under "exam"
    exam["id"] = "filed-under-exam"
    exam["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam"}]}]
    ehr.add([exam])
    with serve_in_thread(ehr.app()) as server:
        body = patient_view_request(stay, prefetch=["patient", "encounters"], fhir_server=server.url, access_token="t")
        generic = _run(GENERIC, body, tmp_path)
        assert _categories(ehr) == {"vital-signs", "laboratory"}
        ehr.seen.clear()
        wider = _run(replace(GENERIC, observation_categories=("vital-signs", "laboratory", "exam")), body, tmp_path)
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
        body = patient_view_request(stay, prefetch=["patient", "encounters", "vitals"], fhir_server=server.url, access_token="t")
        _run(replace(GENERIC, observation_categories=("vital-signs", "laboratory", "exam")), body, tmp_path)
    assert _categories(ehr) == {"laboratory", "exam"}
