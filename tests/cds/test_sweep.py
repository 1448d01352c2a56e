"""The census sweep end to end: SMART's reference launcher as the authorization server (SMART
Backend Services: client_credentials with our private_key_jwt, our key in JWKS form) and FHIR
proxy, in front of the demo EHR's FHIR server, read by Bulk Data $export and by the paged-search
fallback; 429/503 answered politely; and the batch scores equal the hook's for the same patients."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from cds.census_fetch import retry_after_s
from cds.errors import FHIRServerError
from cds.keys import pseudonym_key
from cds.settings import Settings, SweepEhr
from cds.stores import SQLiteStore
from cds.sweep import run_sweep
from demo_ehr import (
    DemoFhirServer,
    DischargeResources,
    LoopbackServer,
    StayResources,
    discharge_hook_request,
    discharge_to_fhir,
    patient_view_request,
    serve_in_thread,
)
from fhir_mappings import Pseudonymizer
from hooks import READMISSION, SEPSIS, ScoredCard, ScoringInput
from models import ModelRegistry, RiskModel, model_task, serving_device
from testkit.helpers import synthetic_stay
from testkit.readmission_rows import row as discharge_row
from tests.conftest import unavailable
from tests.smart.launcher import Launcher, launch_code, missing, start_launcher

CLIENT_ID = "cds-sweep"
KID = "cds-sweep-1"
NOW = datetime.now(UTC).replace(microsecond=0)
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _refusing_consent(patient_id: str) -> dict:
    return {
        "resourceType": "Consent",
        "id": f"consent-{patient_id}",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "provision": {"type": "deny", "purpose": [{"system": ACT_REASON, "code": "TREAT"}]},
    }


@dataclass
class Census:
    scored: list[StayResources]  # the hook would give each a card
    refused: StayResources  # a Consent refuses decision support
    discharged: StayResources  # its encounter is finished: not in the census
    leaving_today: list[DischargeResources]  # in hospital, expected to be discharged today
    leaving_tomorrow: DischargeResources


def _expected_discharge(n: int, when: datetime, **changes: object) -> DischargeResources:
    stay = discharge_to_fhir(
        discharge_row(encounter_id=910000 + n, patient_nbr=710000 + n, **changes), discharged_at=when
    )
    stay.encounter["status"] = "in-progress"  # period.end: the planned discharge
    return stay


@pytest.fixture(scope="module")
def census() -> Census:
    scored = [synthetic_stay(hours=30 + i, patient=5000 + i, septic_like=i % 2 == 0) for i in range(4)]
    refused = synthetic_stay(hours=20, patient=5100)
    discharged = synthetic_stay(hours=25, patient=5200)
    discharged.encounter["status"] = "finished"
    today = [
        _expected_discharge(1, NOW),
        _expected_discharge(2, NOW, age="[40-50)", number_inpatient=0, number_emergency=0),
    ]
    return Census(scored, refused, discharged, today, _expected_discharge(3, NOW + timedelta(days=1)))


@pytest.fixture(scope="module")
def ehr(census: Census) -> Iterator[tuple[DemoFhirServer, LoopbackServer]]:
    server = DemoFhirServer(page_size=40, export_retry_after=1)
    for stay in [
        *census.scored,
        census.refused,
        census.discharged,
        *census.leaving_today,
        census.leaving_tomorrow,
    ]:
        server.add(stay.all())
    server.add([_refusing_consent(census.refused.patient_id)])
    with serve_in_thread(server.app()) as running:
        yield server, running


@pytest.fixture(scope="module")
def launcher(
    ehr: tuple[DemoFhirServer, LoopbackServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    if problem := missing():
        unavailable(problem)
    running = start_launcher(ehr[1].url, tmp_path_factory.mktemp("launcher") / "launcher.log")
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Keys:
    jwks_file: Path  # our private key, as a JWKS (what the sweep signs with)
    public_jwks: str  # what the EHR registered
    stranger_file: Path  # another key under the same kid


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    key = RSAKey.generate_key(2048)
    private = {"keys": [{**key.as_dict(private=True), "kid": KID, "alg": "RS384"}]}
    (folder / "sweep.jwks.json").write_text(json.dumps(private))
    public = {"keys": [{**key.as_dict(private=False), "kid": KID, "alg": "RS384", "key_ops": ["verify"]}]}
    stranger = {"keys": [{**RSAKey.generate_key(2048).as_dict(private=True), "kid": KID, "alg": "RS384"}]}
    (folder / "stranger.jwks.json").write_text(json.dumps(stranger))
    return Keys(folder / "sweep.jwks.json", json.dumps(public), folder / "stranger.jwks.json")


@pytest.fixture(scope="module")
def backend_base(launcher: Launcher, keys: Keys, ehr: tuple[DemoFhirServer, LoopbackServer]) -> str:
    """The launcher's FHIR base for our backend client (its launch options name our JWKS)."""
    code = launch_code(
        launch_type="backend-service",
        client_type="backend-service",
        client_id=CLIENT_ID,
        jwks=keys.public_jwks,
    )
    base = launcher.standalone_iss(code)
    ehr[0].public_base = base  # the status URL the EHR hands out goes through the launcher too
    return base


def sweep_settings(tmp: Path, base: str, key_file: Path, **ehr_options: object) -> Settings:
    ehr = SweepEhr(
        fhir_base=base,
        client_id=CLIENT_ID,
        private_key_file=key_file,
        key_id=KID,
        signing_alg="RS384",
        **ehr_options,  # type: ignore[arg-type]
    )
    return Settings(
        var_dir=tmp / "var", pseudonym_key="sweep-test-key-0123456789", sweep_ehr=ehr, device="cpu"
    )


async def _sweep(settings: Settings, **options: object):
    store = SQLiteStore(settings.sqlite_path)
    try:
        outcome = await run_sweep(settings, store, now=NOW, **options)  # type: ignore[arg-type]
        stored = [r async for r in store.iter_resources("RiskAssessment")]
        audit = [e async for e in store.iter_audit()]
    finally:
        await store.close()
    return outcome, stored, audit


def _identifiers(census: Census) -> list[str]:
    stays = [
        *census.scored,
        census.refused,
        census.discharged,
        *census.leaving_today,
        census.leaving_tomorrow,
    ]
    return [s.patient_id for s in stays]


def test_sweep_by_bulk_export_through_the_launcher(
    tmp_path: Path, census: Census, ehr: tuple[DemoFhirServer, LoopbackServer], backend_base: str, keys: Keys
) -> None:
    server = ehr[0]
    server.seen.clear()
    settings = sweep_settings(tmp_path, backend_base, keys.jwks_file, group_id="inpatients")
    outcome, stored, audit = asyncio.run(_sweep(settings))

    assert outcome.fetch is not None and outcome.fetch.method == "bulk-export"
    paths = [s.path for s in server.seen]
    assert any(p.endswith("/Group/inpatients/$export") for p in paths)
    assert any("/$export-status/" in p for p in paths) and any("/$export-file/" in p for p in paths)
    assert not any(p.startswith("/Observation") for p in paths)  # no search was needed
    assert outcome.fetch.files >= 4  # Patient, Encounter, Observation, Consent (+ Location)

    assert len(outcome.rows) == len(census.scored)
    assert outcome.skipped["decision-support-refused"] == 1
    assert outcome.written == len(census.scored)
    sweep_ras = [r for r in stored if r.get("meta", {}).get("tag", [{}])[0].get("code") == "census-sweep"]
    assert len(sweep_ras) == len(census.scored)
    pseudonyms = {r["subject"]["identifier"]["value"] for r in sweep_ras}
    assert pseudonyms == {r.stay.pseudonym for r in outcome.rows}
    assert sum(1 for e in audit if e.kind == "card-scored" and e.details.get("origin") == "census-sweep") == 4

    # The report: ranked within each unit, pseudonyms only, the worklist flagged.
    assert outcome.report_path is not None
    text = outcome.report_path.read_text() + json.dumps(stored)
    for identifier in _identifiers(census):
        assert identifier not in text
    probabilities = [r["probability"] for r in outcome.report if r["unit"] == outcome.report[0]["unit"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(r["change"] is None and len(r["drivers"]) == 3 for r in outcome.report)


def test_search_fallback_gives_the_same_scores_and_the_change_since_the_last_sweep(
    tmp_path: Path, census: Census, ehr: tuple[DemoFhirServer, LoopbackServer], backend_base: str, keys: Keys
) -> None:
    server = ehr[0]
    settings = sweep_settings(tmp_path, backend_base, keys.jwks_file)  # system-level $export
    by_bulk, _, _ = asyncio.run(_sweep(settings))
    assert by_bulk.fetch is not None and by_bulk.fetch.method == "bulk-export"
    server.bulk_export = False
    server.seen.clear()
    try:
        by_search, stored, _ = asyncio.run(_sweep(settings))
    finally:
        server.bulk_export = True
    assert by_search.fetch is not None and by_search.fetch.method == "search"
    assert any(s.path == "/Observation" for s in server.seen)
    assert {r.stay.pseudonym: r.probability for r in by_search.rows} == {
        r.stay.pseudonym: r.probability for r in by_bulk.rows
    }
    assert all(r["change"] == 0.0 for r in by_search.report)  # the same data as the sweep before
    assert len(stored) == 2 * len(census.scored)


def test_429_and_503_are_retried_after_retry_after(
    tmp_path: Path,
    census: Census,
    ehr: tuple[DemoFhirServer, LoopbackServer],
    keys: Keys,
    backend_base: str,
    launcher: Launcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Straight to the EHR (the launcher's proxy drops Retry-After), with the launcher's token."""
    import cds.census_fetch as fetch

    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(fetch.asyncio, "sleep", recorded)
    server, running = ehr
    token_endpoint = backend_base.removesuffix("/fhir") + "/auth/token"
    settings = sweep_settings(
        tmp_path, running.url, keys.jwks_file, token_endpoint=token_endpoint, bulk="never", max_retries=3
    )
    server.throttle = [429, 503, 429]
    server.throttle_retry_after = "7"
    try:
        outcome, _, _ = asyncio.run(_sweep(settings, write=False))
    finally:
        server.throttle = []
    assert outcome.fetch is not None and dict(outcome.fetch.stats.retries) == {"429": 2, "503": 1}
    assert waits.count(7.0) == 3
    assert len(outcome.rows) == len(census.scored)

    server.throttle = [503] * 5  # more than max_retries: the sweep stops with the EHR's answer
    try:
        with pytest.raises(FHIRServerError, match="503"):
            asyncio.run(_sweep(settings, write=False))
    finally:
        server.throttle = []


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("12") == 12.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None


def test_a_key_the_ehr_never_registered_gets_no_token(
    tmp_path: Path, backend_base: str, keys: Keys, ehr: tuple[DemoFhirServer, LoopbackServer]
) -> None:
    settings = sweep_settings(tmp_path, backend_base, keys.stranger_file)
    with pytest.raises(FHIRServerError, match="refused the backend token request \\(401 invalid_client\\)"):
        asyncio.run(_sweep(settings, write=False))


def test_batch_scores_equal_the_hooks_single_patient_scores(
    tmp_path: Path, census: Census, backend_base: str, keys: Keys, ehr: tuple[DemoFhirServer, LoopbackServer]
) -> None:
    """The same patients through `sepsis-risk`'s own scoring (one patient, the serving model on the
    CPU) and through the sweep (all at once): the same feature rows, probabilities and SHAP."""
    settings = sweep_settings(tmp_path, backend_base, keys.jwks_file)
    outcome, stored, audit = asyncio.run(_sweep(settings))
    by_pseudonym = {r.stay.pseudonym: r for r in outcome.rows}
    hashes = {e.details["card"]: e.details["features_sha256"] for e in audit if e.kind == "card-scored"}
    sweep_hash = {r["subject"]["identifier"]["value"]: hashes[r["id"]] for r in stored}

    spec = model_task("sepsis").feature_spec()
    model = RiskModel(
        ModelRegistry(settings.model_dir).load("sepsis", spec), spec, device=serving_device(), nthread=1
    )
    pseudonymizer = Pseudonymizer(pseudonym_key(settings))
    for stay in census.scored:
        request = patient_view_request(stay)
        fetched = {
            k: v if k == "patient" else [e["resource"] for e in v.get("entry", [])]
            for k, v in request["prefetch"].items()
        }
        scored = SEPSIS.score(
            ScoringInput(
                context=request["context"],
                fetched=fetched,
                model=model,
                now=NOW,
                pseudonymizer=pseudonymizer,
                card_uuid=str(uuid.uuid4()),
                source=backend_base,
            )
        )
        assert isinstance(scored, ScoredCard)
        pseudonym = scored.risk_assessment["subject"]["identifier"]["value"]
        row = by_pseudonym[pseudonym]
        assert row.probability == scored.probability
        assert row.band == scored.band
        assert sweep_hash[pseudonym] == scored.features_sha256
        hook_shap = {
            part["valueString"]: next(p["valueDecimal"] for p in e["extension"] if p["url"] == "shap")
            for e in scored.risk_assessment["extension"]
            if e["url"].endswith("/shap-contribution")
            for part in e["extension"]
            if part["url"] == "feature"
        }
        names = spec.names
        assert hook_shap == {
            names[j]: round(float(row.shap[j]), 6) for j in range(len(names)) if names[j] in hook_shap
        }
        assert len(hook_shap) > 0


@pytest.mark.parametrize("bulk", ["auto", "never"])
def test_readmission_sweep_scores_todays_expected_discharges_as_the_hook_does(
    tmp_path: Path,
    census: Census,
    backend_base: str,
    keys: Keys,
    ehr: tuple[DemoFhirServer, LoopbackServer],
    bulk: str,
) -> None:
    settings = sweep_settings(tmp_path, backend_base, keys.jwks_file, group_id="inpatients", bulk=bulk)
    outcome, stored, _ = asyncio.run(_sweep(settings, model_name="readmission"))
    assert outcome.fetch is not None
    assert outcome.fetch.method == ("bulk-export" if bulk == "auto" else "search")
    assert len(outcome.rows) == 2 and outcome.written == 2
    assert outcome.skipped["not-discharged-today"] >= 1  # tomorrow's, and the ICU stays without an end
    text = outcome.report_path.read_text() + json.dumps(stored) if outcome.report_path else ""
    for identifier in _identifiers(census):
        assert identifier not in text
    assert [r["probability"] for r in outcome.report] == sorted(
        (r["probability"] for r in outcome.report), reverse=True
    )

    spec = model_task("readmission").feature_spec()
    model = RiskModel(
        ModelRegistry(settings.model_dir).load("readmission", spec), spec, device=serving_device(), nthread=1
    )
    by_pseudonym = {r.pseudonym: r for r in outcome.rows}
    for stay in census.leaving_today:
        request = discharge_hook_request(stay)
        fetched = {
            k: v if k in ("patient", "encounter") else [e["resource"] for e in v.get("entry", [])]
            for k, v in request["prefetch"].items()
        }
        scored = READMISSION.score(
            ScoringInput(
                context=request["context"],
                fetched=fetched,
                model=model,
                now=NOW,
                pseudonymizer=Pseudonymizer(pseudonym_key(settings)),
                card_uuid=str(uuid.uuid4()),
                source=backend_base,
            )
        )
        assert isinstance(scored, ScoredCard)
        found = by_pseudonym[scored.risk_assessment["subject"]["identifier"]["value"]]
        assert found.probability == scored.probability
        assert found.features_sha256 == scored.features_sha256


def test_the_cds_sweep_command_prints_the_ranked_report_and_a_summary(
    tmp_path: Path,
    census: Census,
    backend_base: str,
    keys: Keys,
    ehr: tuple[DemoFhirServer, LoopbackServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from cds.cli import app
    from cds.settings import get_settings

    ehr_json = {"fhir_base": backend_base, "client_id": CLIENT_ID, "private_key_file": str(keys.jwks_file)}
    monkeypatch.setenv("CDS_SWEEP_EHR", json.dumps({**ehr_json, "key_id": KID}))
    monkeypatch.setenv("CDS_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CDS_PSEUDONYM_KEY", "sweep-test-key-0123456789")
    monkeypatch.setenv("CDS_DEVICE", "cpu")
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(app, ["sweep", "sepsis", "--limit", "3"])
        printed = CliRunner().invoke(app, ["sweep", "sepsis", "--jwks"])
    finally:
        get_settings.cache_clear()
    # What we would register with the EHR: the public half of the key that signed, nothing private.
    published = json.loads(printed.output)["keys"][0]
    registered = json.loads(keys.public_jwks)["keys"][0]
    assert {k: published[k] for k in ("kty", "n", "e", "kid")} == {
        k: registered[k] for k in ("kty", "n", "e", "kid")
    }
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published)
    assert done.exit_code == 0, done.output
    lines = done.output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["scored"] == len(census.scored) and summary["read_by"] == "bulk-export"
    assert summary["written"] == len(census.scored) and summary["device"] == "cpu"
    assert lines[0].startswith("unit") and len(lines) == 1 + 3 + 1  # header, 3 rows, summary
    for identifier in _identifiers(census):
        assert identifier not in done.output


def test_the_sweep_writes_in_batches_and_a_refused_batch_stops_it_with_the_count(tmp_path: Path) -> None:
    """`record_assessments`: one transaction per batch; the batch the store refuses is not kept
    and the error says how many were recorded before it (no identifier in it)."""
    import sqlite3

    from cds.errors import StoreError
    from cds.sweep import Assessed, record_assessments
    from hooks import ConsentDecision

    spec = model_task("sepsis").feature_spec()
    model = RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    assessed = [
        Assessed(i, {"resourceType": "RiskAssessment", "id": i}, "0" * 64, 0.5, "moderate", ConsentDecision())
        for i in ids
    ]
    path = tmp_path / "cds.sqlite3"

    async def write(records: list[Assessed]) -> int:
        store = SQLiteStore(path)
        try:
            return await record_assessments(store, records, model, "sepsis-risk", batch=2)
        finally:
            await store.close()

    assert asyncio.run(write(assessed[:3])) == 3
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON card WHEN NEW.card_uuid = '{ids[3]}'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        db.execute("DELETE FROM card")
    with pytest.raises(
        StoreError, match="recorded 2 of 5 RiskAssessments; a batch of 2 was not recorded"
    ) as caught:
        asyncio.run(write(assessed))
    assert not any(i in str(caught.value) for i in ids)
    with sqlite3.connect(path) as db:
        assert {r[0] for r in db.execute("SELECT card_uuid FROM card")} == set(ids[:2])
        scored = [r[0] for r in db.execute("SELECT details FROM audit_event WHERE kind = 'card-scored'")]
    assert len(scored) == 3 + 2 and all('"origin":"census-sweep"' in d for d in scored)


def _cli(monkeypatch: pytest.MonkeyPatch, var: Path, ehr_json: dict, args: list[str]):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from cds.cli import app
    from cds.settings import get_settings

    monkeypatch.setenv("CDS_SWEEP_EHR", json.dumps({**ehr_json, "client_id": CLIENT_ID, "key_id": KID}))
    monkeypatch.setenv("CDS_VAR_DIR", str(var))
    monkeypatch.setenv("CDS_PSEUDONYM_KEY", "sweep-test-key-0123456789")
    monkeypatch.setenv("CDS_DEVICE", "cpu")
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, args)
    finally:
        get_settings.cache_clear()


def _reports(var: Path) -> list[dict]:
    """The sweeps' reports, oldest first (not the `-latest` copy)."""
    found = sorted(p for p in (var / "sweeps").glob("sepsis-*.json") if not p.name.endswith("-latest.json"))
    return [json.loads(p.read_text()) for p in sorted(found, key=lambda p: p.stat().st_mtime_ns)]


def test_the_sweep_loop_sweeps_every_interval_and_the_second_report_has_the_change(
    tmp_path: Path,
    census: Census,
    backend_base: str,
    keys: Keys,
    ehr: tuple[DemoFhirServer, LoopbackServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ehr_json = {"fhir_base": backend_base, "private_key_file": str(keys.jwks_file)}
    done = _cli(
        monkeypatch, tmp_path / "var", ehr_json, ["sweep", "sepsis", "--every", "1s", "--max-sweeps", "2"]
    )
    assert done.exit_code == 0, done.output
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [s["scored"] for s in summaries] == [len(census.scored)] * 2
    assert all(s["written"] == len(census.scored) for s in summaries)
    first, second = _reports(tmp_path / "var")
    assert first["at"] < second["at"]
    assert all(p["change"] is None for p in first["patients"])  # nothing to compare with yet
    pseudonyms = {p["pseudonym"] for p in first["patients"]}
    assert {p["pseudonym"] for p in second["patients"]} == pseudonyms
    for p in second["patients"]:
        assert p["change"] == round(p["probability"] - first["probabilities"][p["pseudonym"]], 4)
    for identifier in _identifiers(census):
        assert identifier not in done.output


def test_a_failing_sweep_is_logged_and_retried_at_the_next_tick(
    tmp_path: Path,
    census: Census,
    backend_base: str,
    keys: Keys,
    ehr: tuple[DemoFhirServer, LoopbackServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The EHR answers the first sweep's first request with 503 (no retries allowed): that sweep
    fails, is logged, and the loop sweeps again at the next tick; the status is the last sweep's."""
    server, running = ehr
    ehr_json = {
        "fhir_base": running.url,
        "private_key_file": str(keys.jwks_file),
        "token_endpoint": backend_base.removesuffix("/fhir") + "/auth/token",
        "bulk": "never",
        "max_retries": 0,
    }
    server.throttle = [503]
    try:
        with caplog.at_level("WARNING", logger="cds.sweep"):
            done = _cli(
                monkeypatch,
                tmp_path / "var",
                ehr_json,
                ["sweep", "sepsis", "--every", "1s", "--max-sweeps", "2"],
            )
    finally:
        server.throttle = []
    assert done.exit_code == 0, done.output
    assert "error: sweep 1 failed, retried at the next tick: FHIRServerError" in done.stderr
    (summary,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert summary["scored"] == len(census.scored) and summary["read_by"] == "search"
    (failed,) = [r for r in caplog.records if r.getMessage().startswith("census sweep failed")]
    assert failed.sweep == {"number": 1, "error": "FHIRServerError", "code": "fhir-server-error"}  # type: ignore[attr-defined]
    (report,) = _reports(tmp_path / "var")
    assert len(report["patients"]) == len(census.scored)

    server.throttle = [503] * 50  # every sweep fails: the loop still ends by itself, status 1
    try:
        again = _cli(
            monkeypatch,
            tmp_path / "var2",
            ehr_json,
            ["sweep", "sepsis", "--every", "0.2s", "--max-sweeps", "2"],
        )
    finally:
        server.throttle = []
    assert again.exit_code == 1 and again.stderr.count("failed, retried at the next tick") == 2
