"""/metrics (prometheus-client), /healthz and /readyz over real HTTP; `cds serve --workers 2`
reports the calls of both workers (multi-process mode) and shares the drift tallies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cds import Settings
from cds.settings import TrustedIssuer
from demo_ehr import DemoFhirServer, EhrIdentity, EhrJwtAuth, LoopbackServer, patient_view_request
from demo_ehr.loopback import free_port
from testkit.helpers import feedback, serve_cds, synthetic_stay
from testkit.metrics import ALLOWED_LABELS, metric, samples

ROOT = Path(__file__).resolve().parents[2]
SEPSIS = "/cds-services/sepsis-risk"


def test_metrics_count_hooks_feedback_and_refusals_without_patient_labels(
    secure_server: LoopbackServer, ehr_identity: EhrIdentity
) -> None:
    stay = synthetic_stay()
    patient_id = stay.patient["id"]
    with httpx.Client(base_url=secure_server.url, timeout=10, auth=EhrJwtAuth(ehr_identity)) as client:
        card = client.post(SEPSIS, json=patient_view_request(stay)).json()["cards"][0]
        reason = card["overrideReasons"][0]
        given = feedback(card["uuid"], reason=reason)
        assert client.post(f"{SEPSIS}/feedback", json={"feedback": [given]}).status_code == 200
    refused = httpx.post(f"{secure_server.url}{SEPSIS}", json={}, headers={"Authorization": "Bearer x.y.z"})
    assert refused.status_code == 401
    response = httpx.get(f"{secure_server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert metric(text, "cds_hook_calls_total", service="sepsis-risk", reason="card") == 1
    assert metric(text, "cds_hook_seconds_count", service="sepsis-risk") == 1
    assert (
        metric(
            text,
            "cds_feedback_outcomes_total",
            outcome="overridden",
            reason=reason["code"],
            service="sepsis-risk",
        )
        == 1
    )
    assert metric(text, "cds_auth_failures_total") >= 1
    assert metric(text, "cds_model_serving", model="sepsis", role="champion") == 1
    for name, labels, _ in samples(text):
        assert set(labels) <= ALLOWED_LABELS, (name, labels)
        for value in labels.values():
            assert patient_id not in value and card["uuid"] not in value and "Practitioner" not in value


def test_fhir_fetches_are_counted_by_configured_issuer(
    tmp_path: Path, ehr_identity: EhrIdentity, ehr: DemoFhirServer, ehr_server: LoopbackServer
) -> None:
    issuer = TrustedIssuer(
        iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url, fhir_servers=(ehr_server.url,)
    )
    settings = Settings(
        var_dir=tmp_path / "var", pseudonym_key="test-key-0123456789abcdef", auth_issuers=(issuer,)
    )
    stay = synthetic_stay(hours=20)
    ehr.add(stay.all())
    with serve_cds(settings) as server:
        with httpx.Client(base_url=server.url, timeout=10, auth=EhrJwtAuth(ehr_identity)) as client:
            body = patient_view_request(
                stay, prefetch=False, fhir_server=ehr_server.url, access_token=ehr.token
            )
            assert client.post(SEPSIS, json=body).json()["cards"]
            wrong = patient_view_request(
                stay, prefetch=False, fhir_server=ehr_server.url, access_token="expired"
            )
            assert client.post(SEPSIS, json=wrong).status_code == 412  # the EHR refused the token
        text = httpx.get(f"{server.url}/metrics").text
    ok = metric(text, "cds_fhir_requests_total", issuer=ehr_identity.issuer, outcome="ok")
    # one per read or search (a search's further pages are part of it)
    assert ok == len([s for s in ehr.seen if s.authorized and "_offset" not in s.query]) >= 3
    assert metric(text, "cds_fhir_errors_total", issuer=ehr_identity.issuer, kind="error") >= 1
    assert {labels["issuer"] for name, labels, _ in samples(text) if "issuer" in labels} == {
        ehr_identity.issuer
    }


def test_readyz_waits_for_the_ehr_keys_and_healthz_stays_alive(tmp_path: Path) -> None:
    dead_jwks = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_issuers=(TrustedIssuer(iss="https://ehr.example.org", jwks_url=dead_jwks),),
    )
    with serve_cds(settings) as server:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"models": "ok", "store": "ok", "jwks": "cold"}
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_readyz_is_ready_once_the_jwks_is_cached(
    secure_server: LoopbackServer, ehr_identity: EhrIdentity
) -> None:
    ready = httpx.get(f"{secure_server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["jwks"] == "ok"
    before = ehr_identity.jwks_requests
    assert httpx.get(f"{secure_server.url}/readyz").status_code == 200
    assert ehr_identity.jwks_requests == before  # warm: answered from the cache


# --- several workers -------------------------------------------------------------------------


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    var = tmp_path / "var"
    env = {
        **os.environ,
        "CDS_VAR_DIR": str(var),
        "CDS_PSEUDONYM_KEY": "test-key-0123456789abcdef",
        "CDS_AUTH_DISABLED_FOR_LOCAL_DEMO": "true",
        "CDS_PORT": str(port),
        "CDS_DRIFT_FLUSH_S": "0.2",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cds.cli", "serve", "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cds serve --workers 2 did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, var
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_two_workers_report_every_call_and_share_drift_tallies(two_workers: tuple[str, Path]) -> None:
    url, var = two_workers
    body = patient_view_request(synthetic_stay(hours=12))
    calls = 24
    for _ in range(calls):  # a new connection each time: the kernel spreads them over the workers
        with httpx.Client(base_url=url, timeout=20) as client:
            assert client.post(SEPSIS, json=body).status_code == 200
    workers = {p.name.split("_")[-1] for p in (var / "prometheus").glob("counter_*.db")}
    assert len(workers) >= 2, workers  # both workers counted calls (each keeps its own file)
    for _ in range(8):  # whichever worker answers the scrape, it reports both workers' calls
        with httpx.Client(base_url=url, timeout=10) as client:
            text = client.get("/metrics").text
        assert metric(text, "cds_hook_calls_total", service="sepsis-risk") == calls
        assert metric(text, "cds_hook_seconds_count", service="sepsis-risk") == calls
        assert metric(text, "cds_model_serving", model="sepsis", role="champion") == 1
    deadline = time.monotonic() + 30
    while True:  # each worker flushes its drift tallies to the shared SQLite file every 0.2 s
        with httpx.Client(base_url=url, timeout=10) as client:
            report = client.get("/drift", params={"since": "1h"}).json()
        sepsis = [m for m in report["models"] if m["model"] == "sepsis"]
        if sepsis and sepsis[0]["all"]["calls"] == calls:
            break
        assert time.monotonic() < deadline, report["models"]
        time.sleep(0.3)
    assert sepsis[0]["issuers"].keys() == {"none"}
