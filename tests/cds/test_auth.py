"""Caller authentication over real HTTP: the loopback test EHR signs ES384/RS384 JWTs and serves
its JWKS; each attack gets a bare 401 (and the metric says why), the valid token gets 200."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from cds import Settings, TrustedIssuer
from cds.responses import UNAUTHORIZED_BODY
from demo_ehr import EhrIdentity, LoopbackServer, patient_view_request, serve_in_thread
from testkit.helpers import serve_cds, synthetic_stay
from testkit.metrics import by_label

SERVICE = "/cds-services/sepsis-risk"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def tenant_identity(ehr_identity: EhrIdentity) -> EhrIdentity:
    ehr_identity.tenant = "hospital-a"
    return ehr_identity


@pytest.fixture
def server(tmp_path: Path, tenant_identity: EhrIdentity) -> Iterator[LoopbackServer]:
    issuer = TrustedIssuer(
        iss=tenant_identity.issuer,
        jwks_url=tenant_identity.jwks_url,
        jku=(tenant_identity.jwks_url,),
        tenants=("hospital-a",),
    )
    settings = Settings(
        var_dir=tmp_path / "var", pseudonym_key="k" * 32, auth_issuers=(issuer,), jwks_min_refresh_s=60
    )
    with serve_cds(settings) as s:
        yield s


@pytest.fixture
def body() -> dict:
    return patient_view_request(synthetic_stay())


def post(server: LoopbackServer, token: str | None, body: dict, path: str = SERVICE) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=10)


def auth_failures(server: LoopbackServer) -> dict[str, int]:
    return by_label(httpx.get(f"{server.url}/metrics").text, "cds_auth_failures_total", "reason")


def _alg_none(ehr: EhrIdentity, aud: str) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": ehr.keys["ES384"].kid}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(ehr.claims(aud)).encode())}."


def _hs256_with_public_key(ehr: EhrIdentity, aud: str) -> str:
    """The classic key-confusion attack: HMAC keyed with the RSA public key the JWKS publishes."""
    key = ehr.keys["RS384"]
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(ehr.claims(aud)).encode())}"
    signature = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _tampered(ehr: EhrIdentity, aud: str) -> str:
    head, payload, sig = ehr.token(aud).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"


def _jku_off_list(ehr: EhrIdentity, aud: str) -> str:
    """Signed with an attacker's key that its own (off-list) JWKS would publish."""
    attacker = EhrIdentity(issuer=ehr.issuer, tenant=ehr.tenant)
    return attacker.token(aud, header={"jku": "http://127.0.0.1:9/evil/jwks.json"})


ATTACKS: dict[str, tuple[Callable[[EhrIdentity, str], str | None], str]] = {
    "missing token": (lambda ehr, aud: None, "missing-token"),
    "alg none": (_alg_none, "alg-not-allowed"),
    "HS256 signed with the public key": (_hs256_with_public_key, "alg-not-allowed"),
    "wrong aud": (
        lambda ehr, aud: ehr.token("https://cds.example.org/cds-services/sepsis-risk"),
        "wrong-aud",
    ),
    "aud of another endpoint": (lambda ehr, aud: ehr.token(aud.rsplit("/", 1)[0]), "wrong-aud"),
    "expired": (
        lambda ehr, aud: ehr.token(
            aud, claims={"iat": int(time.time()) - 900, "exp": int(time.time()) - 300}
        ),
        "expired",
    ),
    "iat in the future": (
        lambda ehr, aud: ehr.token(
            aud, claims={"iat": int(time.time()) + 600, "exp": int(time.time()) + 900}
        ),
        "iat-in-future",
    ),
    "nbf in the future": (
        lambda ehr, aud: ehr.token(aud, claims={"nbf": int(time.time()) + 600}),
        "not-yet-valid",
    ),
    "unknown iss": (
        lambda ehr, aud: ehr.token(aud, claims={"iss": "https://evil.example.org"}),
        "unknown-iss",
    ),
    "jku off the allow-list": (_jku_off_list, "jku-not-allowed"),
    "unknown kid": (lambda ehr, aud: ehr.token(aud, header={"kid": "not-a-key-of-ours"}), "unknown-kid"),
    "tampered payload": (_tampered, "bad-signature"),
    "wrong tenant": (lambda ehr, aud: ehr.token(aud, claims={"tenant": "hospital-b"}), "wrong-tenant"),
    "no tenant": (lambda ehr, aud: ehr.token(aud, claims={"tenant": None}), "wrong-tenant"),
    "no jti": (lambda ehr, aud: ehr.token(aud, claims={"jti": None}), "missing-jti"),
    "no exp": (lambda ehr, aud: ehr.token(aud, claims={"exp": None}), "missing-exp"),
    "typ not JWT": (lambda ehr, aud: ehr.token(aud, header={"typ": "at+jwt"}), "typ-not-jwt"),
    "a day-long token": (
        lambda ehr, aud: ehr.token(aud, claims={"exp": int(time.time()) + 86400}),
        "lifetime-too-long",
    ),
    "garbage": (lambda ehr, aud: "not.a.jwt", "malformed-token"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_gets_a_bare_401(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict, attack: str
) -> None:
    make, reason = ATTACKS[attack]
    aud = server.url + SERVICE
    response = post(server, make(tenant_identity, aud), body)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY  # the same answer whatever went wrong
    assert response.headers["www-authenticate"] == "Bearer"
    assert auth_failures(server) == {reason: 1}


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
@pytest.mark.parametrize("epic", [False, True])
def test_a_valid_token_gets_200(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict, alg: str, epic: bool
) -> None:
    response = post(server, tenant_identity.token(server.url + SERVICE, alg=alg, epic=epic), body)
    assert response.status_code == 200, response.text
    assert response.json()["cards"]


def test_aud_may_be_an_array_and_jku_an_allow_listed_url(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict
) -> None:
    token = tenant_identity.token([server.url + SERVICE, "https://other.example.org"], jku=True)
    assert post(server, token, body).status_code == 200


def test_a_replayed_jti_is_refused(server: LoopbackServer, tenant_identity: EhrIdentity, body: dict) -> None:
    token = tenant_identity.token(server.url + SERVICE)
    assert post(server, token, body).status_code == 200
    again = post(server, token, body)
    assert again.status_code == 401 and again.json() == UNAUTHORIZED_BODY
    assert auth_failures(server) == {"replayed-jti": 1}


def test_discovery_and_feedback_need_a_token_too(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict
) -> None:
    assert httpx.get(f"{server.url}/cds-services").status_code == 401
    discovery_token = tenant_identity.token(f"{server.url}/cds-services")
    assert (
        httpx.get(
            f"{server.url}/cds-services", headers={"Authorization": f"Bearer {discovery_token}"}
        ).status_code
        == 200
    )
    card = post(server, tenant_identity.token(server.url + SERVICE), body).json()["cards"][0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z"}
    feedback_url = f"{server.url}{SERVICE}/feedback"
    assert httpx.post(feedback_url, json={"feedback": [item]}).status_code == 401
    # A token for the service endpoint is not a token for its feedback endpoint.
    service_token = tenant_identity.token(server.url + SERVICE)
    assert post(server, service_token, {"feedback": [item]}, path=f"{SERVICE}/feedback").status_code == 401
    ok = post(server, tenant_identity.token(feedback_url), {"feedback": [item]}, path=f"{SERVICE}/feedback")
    assert ok.status_code == 200, ok.text
    # Unknown services are 401 before 404: nothing is revealed to a stranger.
    assert httpx.post(f"{server.url}/cds-services/nope", json=body).status_code == 401


def test_key_rotation_refetches_the_jwks_once(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict
) -> None:
    assert post(server, tenant_identity.token(server.url + SERVICE), body).status_code == 200
    fetched = tenant_identity.jwks_requests
    assert fetched == 1
    for _ in range(3):  # cached: no more fetches
        assert post(server, tenant_identity.token(server.url + SERVICE, alg="RS384"), body).status_code == 200
    assert tenant_identity.jwks_requests == 1
    tenant_identity.rotate()
    assert (
        post(server, tenant_identity.token(server.url + SERVICE), body).status_code == 200
    )  # unknown kid: refetched
    assert tenant_identity.jwks_requests == 2
    for _ in range(5):  # forged kids do not make us hammer the EHR (rate limit)
        assert (
            post(
                server, tenant_identity.token(server.url + SERVICE, header={"kid": "forged"}), body
            ).status_code
            == 401
        )
    assert tenant_identity.jwks_requests == 2


def test_the_jwks_is_never_fetched_from_a_url_off_the_allow_list(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict
) -> None:
    evil = EhrIdentity(issuer=tenant_identity.issuer, tenant="hospital-a")
    with serve_in_thread(evil.app()) as evil_server:
        evil.jwks_url = f"{evil_server.url}/.well-known/jwks.json"
        token = evil.token(server.url + SERVICE, jku=True)
        assert post(server, token, body).status_code == 401
    assert evil.jwks_requests == 0


def test_a_jku_off_the_list_is_verified_with_the_pinned_keys(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """The reference CDS Hooks sandbox names a public jku on every call: with the issuer's keys
    pinned, that jku is set aside (never fetched) and the token verified with the pinned keys."""
    public = EhrIdentity(issuer=tenant_identity.issuer)  # stands for the sandbox's public JWKS host
    with serve_in_thread(public.app()) as elsewhere:
        token = tenant_identity.token(
            server.url + SERVICE, header={"jku": f"{elsewhere.url}/.well-known/jwks.json"}
        )
        assert post(server, token, body).status_code == 200
        caplog.set_level(logging.WARNING)
        forged = public.token(server.url + SERVICE, header={"jku": f"{elsewhere.url}/.well-known/jwks.json"})
        assert post(server, forged, body).status_code == 401
    assert public.jwks_requests == 0
    refused = [getattr(r, "event", {}) for r in caplog.records if r.getMessage() == "caller refused"]
    assert refused and refused[-1]["reason"] == "jku-not-allowed" and "pinned" in refused[-1]["why"]


def test_without_pinned_keys_a_jku_off_the_list_is_refused(
    tmp_path: Path, tenant_identity: EhrIdentity, body: dict
) -> None:
    issuer = TrustedIssuer(iss=tenant_identity.issuer, jku=(tenant_identity.jwks_url,))
    with serve_cds(Settings(var_dir=tmp_path / "var", pseudonym_key="k" * 32, auth_issuers=(issuer,))) as s:
        listed = tenant_identity.token(s.url + SERVICE, jku=True)
        assert post(s, listed, body).status_code == 200
        off = tenant_identity.token(s.url + SERVICE, header={"jku": "http://127.0.0.1:9/jwks.json"})
        assert post(s, off, body).status_code == 401
        assert auth_failures(s) == {"jku-not-allowed": 1}


def test_tokens_never_reach_the_logs(
    server: LoopbackServer, tenant_identity: EhrIdentity, body: dict, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = tenant_identity.token(server.url + SERVICE)
    body = {
        **body,
        "fhirServer": "http://127.0.0.1:9",
        "fhirAuthorization": {
            "access_token": "secret-fhir-access-token",
            "token_type": "Bearer",
            "expires_in": 30,
            "scope": "patient/*.rs",
            "subject": "cds",
        },
    }
    post(server, token, body)
    post(server, token, body)  # a replay, logged as a failure
    post(server, token[:-4] + "AAAA", body)
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'event', '')}" for r in caplog.records)
    assert token not in text and token.split(".")[2] not in text and "secret-fhir-access-token" not in text


def test_no_trusted_issuer_means_every_call_is_refused(
    tmp_path: Path, ehr_identity: EhrIdentity, body: dict
) -> None:
    with serve_cds(Settings(var_dir=tmp_path / "var", pseudonym_key="k" * 32)) as s:
        assert post(s, ehr_identity.token(s.url + SERVICE), body).status_code == 401
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # health and metrics stay open


def test_the_demo_switch_is_loud_and_loopback_only(
    tmp_path: Path, body: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValidationError):
        Settings(host="0.0.0.0", auth_disabled_for_local_demo=True)
    caplog.set_level(logging.WARNING)
    with serve_cds(
        Settings(var_dir=tmp_path / "var", pseudonym_key="k" * 32, auth_disabled_for_local_demo=True)
    ) as s:
        assert post(s, None, body).status_code == 200
    assert any(
        "AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )


@pytest.mark.parametrize("algorithms", [("none",), ("HS256",), ("ES384", "HS384"), ()])
def test_only_asymmetric_algorithms_can_be_configured(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError):
        Settings(auth_algorithms=algorithms)


def test_cors_allows_listed_origins_and_never_star_with_credentials(
    tmp_path: Path, ehr_identity: EhrIdentity
) -> None:
    with pytest.raises(ValidationError):
        Settings(cors_origins=("*",), cors_allow_credentials=True)
    issuer = TrustedIssuer(iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url)
    settings = Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="k" * 32,
        auth_issuers=(issuer,),
        cors_origins=("https://ehr.example.org",),
        cors_allow_credentials=True,
    )
    with serve_cds(settings) as s:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        allowed = httpx.options(
            f"{s.url}{SERVICE}", headers={"Origin": "https://ehr.example.org", **preflight}
        )
        refused = httpx.options(
            f"{s.url}{SERVICE}", headers={"Origin": "https://evil.example.org", **preflight}
        )
        token = ehr_identity.token(f"{s.url}/cds-services")
        get = httpx.get(
            f"{s.url}/cds-services",
            headers={"Origin": "https://ehr.example.org", "Authorization": f"Bearer {token}"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.example.org"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in refused.headers
    assert get.status_code == 200 and get.headers["access-control-allow-origin"] == "https://ehr.example.org"
