"""Every way a launch can go wrong, over HTTP through the reference launcher: each ends on a clear
page, opens no session, records nothing and logs no token or code."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from html import escape
from pathlib import Path

import httpx
import pytest

from demo_ehr import StayResources
from testkit.helpers import serve_cds, synthetic_stay
from tests.smart.conftest import ClientKey, Running, issue_card, smart_settings, standalone_code
from tests.smart.launcher import Launcher, follow, launch_code, query
from tests.smart.test_launch import card_launch, provenances, server_log

pytestmark = pytest.mark.slow


def ehr_launch(running: Running, launcher: Launcher, stay: StayResources) -> str:
    code = launch_code(patient=stay.patient_id, provider="dr-1", encounter=str(stay.encounter["id"]))
    return f"{running.server.url}/smart/launch?card={running.card['uuid']}&launch={code}&iss={launcher.iss}"


def to_callback(browser: httpx.Client, running: Running, url: str) -> str:
    """Walk a launch up to the EHR's redirect back to us, and stop there: the callback URL."""
    walk = follow(browser, url, stop_at=f"{running.server.url}/smart/callback")
    return walk.stopped_at  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def untouched(running: Running, caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """After the test: no session opened, no Provenance written, no code or state in the log.
    The test appends the secrets it saw."""
    caplog.set_level(logging.DEBUG)
    sessions, feedback = len(running.smart.sessions), len(provenances(running))
    secrets: list[str] = []
    yield secrets
    assert len(running.smart.sessions) == sessions
    assert len(provenances(running)) == feedback
    logged = server_log(caplog)
    assert secrets and not [s for s in secrets if s in logged]


def page(response: httpx.Response, status: int, title: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert f"<h1>{escape(title)}</h1>" in response.text
    assert "frame-ancestors" in response.headers["content-security-policy"]
    return response.text


def test_an_unknown_iss_is_refused_before_anything_is_fetched(running: Running, untouched: list[str]) -> None:
    flows = len(running.smart.flows)
    response = httpx.get(
        f"{running.server.url}/smart/launch",
        params={"iss": "http://127.0.0.1:9/fhir", "launch": "x"},
        timeout=10,
    )
    page(response, 403, "This EHR is not trusted by the app")
    assert len(running.smart.flows) == flows
    untouched.append("127.0.0.1:9/fhir/.well-known")


def test_a_tampered_state_is_refused_and_spends_nothing(
    running: Running, launcher: Launcher, stay: StayResources, untouched: list[str]
) -> None:
    with httpx.Client(timeout=30) as browser:
        callback = to_callback(browser, running, ehr_launch(running, launcher, stay))
        state = query(callback)["state"]
        tampered = callback.replace(
            f"state={state}", f"state={state[:-2]}{'AA' if state[-2:] != 'AA' else 'BB'}"
        )
        pending = len(running.smart.flows)
        page(browser.get(tampered), 400, "This sign-in answer does not belong to a launch of this app")
        assert len(running.smart.flows) == pending  # the forgery does not spend the genuine launch
        untouched += [query(callback)["code"], state]


def test_a_replayed_state_and_a_replayed_code_are_refused(
    running: Running, launcher: Launcher, stay: StayResources, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with httpx.Client(timeout=30) as browser:
        callback = to_callback(browser, running, ehr_launch(running, launcher, stay))
        first = follow(browser, callback).last
        assert first.status_code == 200
        opened = len(running.smart.sessions)
        page(browser.get(callback), 400, "This sign-in answer was already used")
        # the used code under a fresh, genuine state: refused before it is sent to the EHR again
        fresh = to_callback(browser, running, ehr_launch(running, launcher, stay))
        code = query(callback)["code"]
        injected = fresh.replace(f"code={query(fresh)['code']}", f"code={code}")
        page(browser.get(injected), 400, "This authorization code was already used")
    assert len(running.smart.sessions) == opened
    logged = server_log(caplog)
    assert code not in logged and query(callback)["state"] not in logged


def test_a_code_from_another_launch_fails_pkce_at_the_launcher(
    running: Running, launcher: Launcher, stay: StayResources, untouched: list[str]
) -> None:
    """Code injection: launch A's code delivered with launch B's state is exchanged with B's
    verifier; the launcher (PKCE `always`) answers invalid_grant and we say so."""
    with httpx.Client(timeout=30) as browser:
        a = to_callback(browser, running, ehr_launch(running, launcher, stay))
        b = to_callback(browser, running, ehr_launch(running, launcher, stay))
        crossed = b.replace(f"code={query(b)['code']}", f"code={query(a)['code']}")
        text = page(browser.get(crossed), 502, "The EHR refused to issue an access token")
    assert "invalid_grant" in text
    untouched += [query(a)["code"], query(b)["state"]]


def test_an_ehr_error_is_shown_and_spends_the_launch(
    running: Running, launcher: Launcher, stay: StayResources, untouched: list[str]
) -> None:
    with httpx.Client(timeout=30) as browser:
        callback = to_callback(browser, running, ehr_launch(running, launcher, stay))
        state = query(callback)["state"]
        base = callback.split("?")[0]
        denied = browser.get(
            base,
            params={"state": state, "error": "access_denied", "error_description": "<b>user said no</b>"},
        )
        text = page(denied, 400, "The EHR did not authorize the app")
        assert "access_denied" in text and "<b>" not in text
        page(browser.get(callback), 400, "This sign-in answer was already used")
    untouched += [query(callback)["code"], state]


def test_an_id_token_that_does_not_verify_opens_nothing(
    running: Running, launcher: Launcher, stay: StayResources, untouched: list[str]
) -> None:
    """This EHR entry pins a JWKS the launcher never signed with: the signature check fails."""
    iss = launcher.standalone_iss(standalone_code(stay, client_id="pinned-keys"))
    with httpx.Client(timeout=30) as browser:
        callback = to_callback(browser, running, card_launch(running, iss))
        page(follow(browser, callback).last, 502, "The EHR's identity token could not be verified")
    untouched += [query(callback)["code"]]


def test_a_card_about_another_patient_is_refused(
    running: Running, launcher: Launcher, stay: StayResources, untouched: list[str]
) -> None:
    other = issue_card(running.server, synthetic_stay(hours=20, patient=777001), launcher.iss)
    with httpx.Client(timeout=30) as browser:
        callback = to_callback(
            browser,
            running,
            card_launch(running, launcher.standalone_iss(standalone_code(stay)), other["uuid"]),
        )
        page(follow(browser, callback).last, 403, "This card is about another patient")
    untouched += [query(callback)["code"]]


def test_an_unknown_session_handle_is_a_clear_page(running: Running) -> None:
    response = httpx.get(f"{running.server.url}/smart/app/not-a-session", timeout=10)
    page(response, 401, "This app session has ended")


def test_an_expired_launch_is_refused(
    tmp_path: Path,
    launcher: Launcher,
    stay: StayResources,
    client_key: ClientKey,
    stranger_jwks: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = smart_settings(tmp_path, launcher, stay, client_key, stranger_jwks, smart_flow_ttl_s=0.0)
    with serve_cds(settings) as server, httpx.Client(timeout=30) as browser:
        running = Running(server, settings, issue_card(server, stay, launcher.iss))
        callback = to_callback(browser, running, ehr_launch(running, launcher, stay))
        page(browser.get(callback), 400, "The launch expired")
        assert len(running.smart.sessions) == 0
    assert query(callback)["code"] not in server_log(caplog)
