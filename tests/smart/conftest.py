"""Real parts for the SMART app's tests: the demo EHR's FHIR server, SMART's reference launcher as
its authorization server (skips outside CI when node or the launcher is missing, fails in CI),
our server trusting that launcher, and a card issued for the demo patient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from cds import Settings
from cds.settings import SmartEhr
from demo_ehr import DemoFhirServer, LoopbackServer, StayResources, patient_view_request, serve_in_thread
from testkit.helpers import serve_cds, synthetic_stay
from tests.conftest import unavailable
from tests.smart.launcher import Launcher, launch_code, missing, start_launcher

CLIENT_ID = "cds-explain"
FRAME_ORIGIN = "http://127.0.0.1:9999"


@pytest.fixture(scope="module")
def stay() -> StayResources:
    return synthetic_stay(hours=30)


@pytest.fixture(scope="module")
def fhir_ehr(stay: StayResources) -> Iterator[tuple[DemoFhirServer, LoopbackServer]]:
    """The demo EHR's FHIR server (behind the launcher's proxy, which checks the access token)."""
    ehr = DemoFhirServer(page_size=200)
    ehr.add(stay.all())
    with serve_in_thread(ehr.app()) as server:
        yield ehr, server


@pytest.fixture(scope="module")
def launcher(
    fhir_ehr: tuple[DemoFhirServer, LoopbackServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    if problem := missing():
        unavailable(problem)
    running = start_launcher(fhir_ehr[1].url, tmp_path_factory.mktemp("launcher") / "launcher.log")
    try:
        yield running
    finally:
        running.stop()


def standalone_code(stay: StayResources, **options: str) -> str:
    return launch_code(launch_type="provider-standalone", patient=stay.patient_id, provider="dr-1", **options)


@dataclass(frozen=True)
class ClientKey:
    """Our private_key_jwt key: the PEM file we sign with, the JWKS registered with the EHR."""

    pem: Path
    jwks: str
    stranger_pem: Path  # a key the EHR never registered, under the same kid
    kid: str = "cds-explain-1"


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    key = RSAKey.generate_key(2048)
    pem = tmp_path_factory.mktemp("key") / "client.pem"
    pem.write_bytes(key.as_pem(private=True))
    public = {**key.as_dict(private=False), "alg": "RS384", "kid": "cds-explain-1", "key_ops": ["verify"]}
    stranger = pem.with_name("stranger.pem")
    stranger.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    return ClientKey(pem, json.dumps({"keys": [public]}), stranger)


@pytest.fixture(scope="module")
def stranger_jwks() -> Iterator[str]:
    """A JWKS of keys the launcher never signed with: its id_tokens must not verify against it."""
    keys = {"keys": [{**RSAKey.generate_key(2048).as_dict(private=False), "alg": "RS256", "kid": "stranger"}]}
    app = Starlette(routes=[Route("/jwks.json", lambda request: JSONResponse(keys))])
    with serve_in_thread(app) as server:
        yield f"{server.url}/jwks.json"


# Launch options per client type: each is its own `iss` (the launcher encodes them in the URL).
SECRET = "s3cret-for-tests"
SYMMETRIC = {"client_type": "confidential-symmetric", "client_secret": SECRET}
REFRESHING = {"client_id": "refreshing"}  # its own iss, for the entry that asks for online_access
WRONG_SECRET = {"client_type": "confidential-symmetric", "client_secret": "the-ehr-has-another-secret"}


def asymmetric(key: ClientKey) -> dict[str, str]:
    return {"client_type": "confidential-asymmetric", "jwks": key.jwks}


def smart_settings(
    tmp: Path,
    launcher: Launcher,
    stay: StayResources,
    key: ClientKey,
    stranger_jwks: str,
    *,
    frame_origins: tuple[str, ...] = (FRAME_ORIGIN,),
    **overrides: object,
) -> Settings:
    def standalone(**options: str) -> str:
        return launcher.standalone_iss(standalone_code(stay, **options))

    ehrs = (
        SmartEhr(iss=launcher.iss, client_id=CLIENT_ID, frame_origins=frame_origins),
        SmartEhr(iss=standalone(), client_id=CLIENT_ID, card_sources=(launcher.iss,)),
        SmartEhr(
            iss=standalone(**SYMMETRIC),
            client_id=CLIENT_ID,
            client_auth="client_secret_basic",
            client_secret=SECRET,
            card_sources=(launcher.iss,),
        ),
        SmartEhr(
            iss=standalone(**WRONG_SECRET),
            client_id=CLIENT_ID,
            client_auth="client_secret_basic",
            client_secret=SECRET,
            card_sources=(launcher.iss,),
        ),
        SmartEhr(
            iss=standalone(**asymmetric(key)),
            client_id=CLIENT_ID,
            client_auth="private_key_jwt",
            private_key_file=key.pem,
            key_id=key.kid,
            signing_alg="RS384",
            card_sources=(launcher.iss,),
        ),
        SmartEhr(
            iss=standalone(**asymmetric(key), client_id="unregistered-key"),
            client_id="unregistered-key",
            client_auth="private_key_jwt",
            private_key_file=key.stranger_pem,
            key_id=key.kid,
            card_sources=(launcher.iss,),
        ),
        SmartEhr(
            iss=standalone(**REFRESHING),
            client_id="refreshing",
            online_access=True,
            card_sources=(launcher.iss,),
        ),
        SmartEhr(
            iss=launcher.standalone_iss(standalone_code(stay, client_id="pinned-keys")),
            client_id="pinned-keys",
            jwks_url=stranger_jwks,
            card_sources=(launcher.iss,),
        ),
    )
    return Settings(
        var_dir=tmp / "var",
        pseudonym_key="test-key-0123456789abcdef",
        auth_disabled_for_local_demo=True,
        smart_ehrs=ehrs,
        **overrides,  # type: ignore[arg-type]
    )


@dataclass
class Running:
    server: LoopbackServer
    settings: Settings
    card: dict  # the card as the EHR received it

    @property
    def smart(self):  # the SmartApp inside the running server (to look at what it keeps)
        return self.server.server.config.app.state.smart


def issue_card(server: LoopbackServer, stay: StayResources, fhir_server: str) -> dict:
    body = patient_view_request(stay, fhir_server=fhir_server)
    response = httpx.post(f"{server.url}/cds-services/sepsis-risk", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["cards"][0]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
    launcher: Launcher,
    stay: StayResources,
    client_key: ClientKey,
    stranger_jwks: str,
) -> Iterator[Running]:
    settings = smart_settings(tmp_path_factory.mktemp("smart"), launcher, stay, client_key, stranger_jwks)
    with serve_cds(settings) as server:
        yield Running(server, settings, issue_card(server, stay, launcher.iss))
