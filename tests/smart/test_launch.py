"""SMART App Launch 2.x through SMART's reference launcher (a real authorization server proxying
the demo EHR): EHR launch and standalone launch, PKCE S256 always, public and confidential
clients, the page that follows, and feedback recorded as the CDS Hooks Provenance."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import httpx
import pytest

from cds.stores import SQLiteStore
from demo_ehr import StayResources
from fhir_mappings.writeback import provenance_id
from testkit.helpers import serve_cds
from tests.smart.conftest import (
    FRAME_ORIGIN,
    REFRESHING,
    SYMMETRIC,
    WRONG_SECRET,
    ClientKey,
    Running,
    asymmetric,
    issue_card,
    standalone_code,
)
from tests.smart.launcher import Launcher, follow, launch_code, query

pytestmark = pytest.mark.slow


def ehr_launch_url(running: Running, launcher: Launcher, stay: StayResources, **options: str) -> str:
    """What the CDS Hooks sandbox opens for a card's SMART link: `<link url>&launch=..&iss=..`."""
    link = next(link for link in running.card["links"] if link["type"] == "smart")
    code = launch_code(
        patient=stay.patient_id, provider="dr-1", encounter=str(stay.encounter["id"]), **options
    )
    return f"{link['url']}&launch={code}&iss={launcher.iss}"


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every log line but the test browser's own request lines (httpx, httpcore) and uvicorn's
    access log, which `cds serve` turns off (access_log=False) and pytest's capture turns back on."""
    skipped = ("httpx", "httpcore", "uvicorn.access")
    return "\n".join(
        f"{r.getMessage()} {getattr(r, 'event', '')}"
        for r in caplog.records
        if not r.name.startswith(skipped)
    )


def provenances(running: Running) -> list[dict]:
    async def read() -> list[dict]:
        store = SQLiteStore(running.settings.sqlite_path)
        try:
            return [r async for r in store.iter_resources("Provenance")]
        finally:
            await store.close()

    return asyncio.run(read())


def test_ehr_launch_from_a_card_shows_the_explanation_and_records_feedback(
    running: Running, launcher: Launcher, stay: StayResources, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with httpx.Client(timeout=30) as browser:
        walk = follow(browser, ehr_launch_url(running, launcher, stay))
        authorize = walk.hops[1]
        assert str(authorize.request.url).startswith(f"{launcher.url}/v/r4/auth/authorize")
        asked = query(str(authorize.request.url))
        assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
        assert (
            asked["scope"]
            == "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/Encounter.rs"
        )
        assert asked["aud"] == launcher.iss
        page = walk.last
        assert page.status_code == 200, page.text
        assert str(page.url).startswith(f"{running.server.url}/smart/app/")
        html = page.text
        risk = running.card["extension"]["org.cds-ml.risk"]
        assert f"{100 * risk['probability']:.1f} %" in html
        assert f"{risk['band']} risk" in html
        assert "waterfall.svg" in html and "trend.svg" in html and "Full model card" in html
        csp = page.headers["content-security-policy"]
        assert (
            "script-src" not in csp
            and "default-src 'none'" in csp
            and f"frame-ancestors 'self' {FRAME_ORIGIN}" in csp
        )
        assert page.headers["referrer-policy"] == "no-referrer" and "set-cookie" not in page.headers
        for picture in ("waterfall.svg", "trend.svg"):
            svg = browser.get(f"{page.url}/{picture}")
            assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
            assert svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
        assert "alert threshold" in browser.get(f"{page.url}/trend.svg").text

        sent = browser.post(
            f"{page.url}/feedback", data={"decision": "override:1", "comment": "picture fits pneumonia"}
        )
        assert sent.status_code == 303
        again = browser.post(
            f"{page.url}/feedback", data={"decision": "override:1", "comment": "picture fits pneumonia"}
        )
        assert again.status_code == 303
        confirmed = browser.get(str(page.url))
        assert "Recorded: overridden: Disagree: clinical picture does not fit" in confirmed.text
    found = [
        p
        for p in provenances(running)
        if p["target"][0]["reference"] == f"RiskAssessment/{running.card['uuid']}"
    ]
    assert len(found) == 1  # one Provenance per card, as CDS Hooks feedback makes
    assert found[0]["activity"]["coding"][0]["code"] == "overridden"
    assert found[0]["reason"][0]["coding"][0]["code"] == "recipient-disagrees-evidence"
    # Who decided: the SMART fhirUser signed in to the app (dr-1), as a keyed pseudonym, not the
    # user the hook call named (demo-clinician), and never the id itself.
    pseudonymizer = running.smart.pseudonymizer
    who = found[0]["agent"][0]["who"]["identifier"]["value"]
    assert who == pseudonymizer.pseudonym("Practitioner", "Practitioner/dr-1", source=launcher.iss)
    assert who != pseudonymizer.pseudonym("Practitioner", "Practitioner/demo-clinician", source=launcher.iss)
    assert "dr-1" not in json.dumps(found[0])
    session = next(iter(running.smart.sessions._sessions.values()))
    logged = server_log(caplog)
    assert session.token.access_token not in logged and str(page.url).rsplit("/", 1)[1] not in logged
    assert "smart session opened" in logged


def card_launch(running: Running, iss: str, card: str | None = None) -> str:
    return f"{running.server.url}/smart/launch?iss={iss}&card={card or running.card['uuid']}"


@pytest.mark.parametrize(
    "options, method",
    [({}, "none"), (SYMMETRIC, "client_secret_basic"), ("asymmetric", "private_key_jwt")],
    ids=["public", "confidential-secret", "confidential-private-key-jwt"],
)
def test_standalone_launch_with_each_client_type(
    running: Running,
    launcher: Launcher,
    stay: StayResources,
    client_key: ClientKey,
    options: object,
    method: str,
) -> None:
    chosen = asymmetric(client_key) if options == "asymmetric" else options
    iss = launcher.standalone_iss(standalone_code(stay, **chosen))  # type: ignore[arg-type]
    assert running.settings.smart_ehr(iss).client_auth == method  # type: ignore[union-attr]
    with httpx.Client(timeout=30) as browser:
        walk = follow(browser, card_launch(running, iss))
        asked = query(str(walk.hops[1].request.url))
        assert asked["scope"].startswith("launch/patient openid fhirUser ") and "launch" not in asked
        assert walk.last.status_code == 200, walk.last.text
        assert f"{100 * running.card['extension']['org.cds-ml.risk']['probability']:.1f} %" in walk.last.text


def test_a_wrong_client_secret_is_the_ehrs_refusal_shown_plainly(
    running: Running, launcher: Launcher, stay: StayResources
) -> None:
    before = len(running.smart.sessions)
    with httpx.Client(timeout=30) as browser:
        page = follow(
            browser, card_launch(running, launcher.standalone_iss(standalone_code(stay, **WRONG_SECRET)))
        ).last
    assert (
        page.status_code == 502
        and "refused to issue an access token" in page.text
        and "invalid_client" in page.text
    )
    assert len(running.smart.sessions) == before


def test_a_client_assertion_signed_with_an_unregistered_key_is_refused(
    running: Running, launcher: Launcher, stay: StayResources, client_key: ClientKey
) -> None:
    before = len(running.smart.sessions)
    iss = launcher.standalone_iss(
        standalone_code(stay, **asymmetric(client_key), client_id="unregistered-key")
    )
    with httpx.Client(timeout=30) as browser:
        page = follow(browser, card_launch(running, iss)).last
    assert (
        page.status_code == 502
        and "refused to issue an access token" in page.text
        and "invalid_client" in page.text
    )
    assert len(running.smart.sessions) == before


def test_an_expired_access_token_is_refreshed_when_the_ehr_offered_a_refresh_token(
    running: Running, launcher: Launcher, stay: StayResources
) -> None:
    with httpx.Client(timeout=30) as browser:
        walk = follow(
            browser, card_launch(running, launcher.standalone_iss(standalone_code(stay, **REFRESHING)))
        )
        assert query(str(walk.hops[1].request.url))["scope"].endswith(" online_access")
        page = walk.last
        assert page.status_code == 200, page.text
        session = running.smart.sessions.cached(str(page.url).rsplit("/", 1)[1])
        assert session is not None and session.token.refresh_token is not None
        first = session.token.access_token
        session.token = dataclasses.replace(session.token, expires_at=time.time() - 1)
        session.trend = None  # read the EHR again, with the refreshed token
        again = browser.get(str(page.url))
        assert again.status_code == 200 and "Re-scored hour by hour" in again.text
    assert session.token.access_token != first and session.token.expires_at > time.time()  # type: ignore[operator]


def test_without_a_refresh_token_an_expired_session_ends_plainly(
    running: Running, launcher: Launcher, stay: StayResources
) -> None:
    """We ask for no refresh token unless configured (minimal scopes): then an expired access token
    ends the session with a clear page."""
    with httpx.Client(timeout=30) as browser:
        page = follow(browser, card_launch(running, launcher.standalone_iss(standalone_code(stay)))).last
        assert page.status_code == 200
        session = running.smart.sessions.cached(str(page.url).rsplit("/", 1)[1])
        assert session is not None and session.token.refresh_token is None
        session.token = dataclasses.replace(session.token, expires_at=time.time() - 1)
        ended = browser.get(str(page.url))
    assert ended.status_code == 401 and "This app session has ended" in ended.text


def test_app_feedback_is_the_same_provenance_as_cds_hooks_feedback(
    running: Running, launcher: Launcher, stay: StayResources
) -> None:
    card = issue_card(running.server, stay, launcher.iss)
    with httpx.Client(timeout=30) as browser:
        page = follow(
            browser, card_launch(running, launcher.standalone_iss(standalone_code(stay)), card["uuid"])
        ).last
        assert page.status_code == 200
        assert browser.post(f"{page.url}/feedback", data={"decision": "override:0"}).status_code == 303
        assert (
            browser.post(f"{page.url}/feedback", data={"decision": "override:0"}).status_code == 303
        )  # a double submit
    reason = card["overrideReasons"][0]
    older = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-01-01T00:00:00Z",
        "overrideReason": {"reason": reason},
    }
    answer = httpx.post(
        f"{running.server.url}/cds-services/sepsis-risk/feedback", json={"feedback": [older]}, timeout=10
    )
    assert (
        answer.status_code == 200 and answer.json()["results"][0]["status"] == "unchanged"
    )  # an older decision: same record
    mine = [
        p for p in provenances(running) if p["target"][0]["reference"] == f"RiskAssessment/{card['uuid']}"
    ]
    assert [p["id"] for p in mine] == [provenance_id(card["uuid"])]
    assert mine[0]["reason"][0]["coding"][0] == reason


def test_a_launch_and_its_session_are_shared_by_the_workers(
    running: Running, launcher: Launcher, stay: StayResources
) -> None:
    """A second worker on the same CDS_VAR_DIR (as `cds serve --workers 2` runs them): the EHR's
    redirect back reaches the other worker, and the page and the feedback work on either."""
    first = running.server.url
    with serve_cds(running.settings) as other, httpx.Client(timeout=30) as browser:
        walk = follow(browser, ehr_launch_url(running, launcher, stay), stop_at=f"{first}/smart/callback")
        callback = walk.stopped_at.replace(first, other.url, 1)  # type: ignore[attr-defined]
        page = follow(browser, callback).last
        assert page.status_code == 200 and str(page.url).startswith(f"{other.url}/smart/app/"), page.text
        handle = str(page.url).rsplit("/", 1)[1]
        on_first = browser.get(f"{first}/smart/app/{handle}")
        assert on_first.status_code == 200 and "What drives this score" in on_first.text
        assert browser.get(f"{first}/smart/app/{handle}/waterfall.svg").status_code == 200
        sent = browser.post(f"{first}/smart/app/{handle}/feedback", data={"decision": "override:0"})
        assert sent.status_code == 303
        confirmed = browser.get(f"{other.url}/smart/app/{handle}")
        assert "Recorded: overridden: Not applicable" in confirmed.text, confirmed.text
