"""The OAuth 2.0 / SMART App Launch 2.x client side: discovery, PKCE, the authorization request,
the code exchange, refresh, and id_token checks.

Protocol pieces come from authlib (grant URI, token request body, S256 challenge, the
private_key_jwt client assertion); id_tokens are checked with joserfc against the EHR's JWKS
(signature, `iss`, `aud`, `exp`, `nonce`). HTTP goes through our own httpx client (no
redirects followed, no proxy from the environment). No token, code or verifier is logged or put
in an error message.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_qs
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from ..settings import SmartEhr
from .errors import BadIdToken, EhrDiscoveryFailed, TokenRefused

__all__ = [
    "ID_TOKEN_ALGORITHMS",
    "SmartConfiguration",
    "TokenResponse",
    "authorization_url",
    "discover",
    "exchange_code",
    "new_pkce",
    "refresh",
    "scopes_for",
    "verify_id_token",
]

ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]
# What the app reads, nothing more (SMART v2 `.rs`; v1 `.read` when that is all the EHR offers).
_RESOURCES = ("Patient", "Observation", "Encounter")
_MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class SmartConfiguration:
    issuer: str  # the FHIR base it was read from
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    capabilities: frozenset[str]
    scopes_supported: frozenset[str]
    fetched: float


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    if len(response.content) > _MAX_BODY:
        raise EhrDiscoveryFailed(f"{what} is larger than {_MAX_BODY} bytes")
    try:
        body = response.json()
    except ValueError as exc:
        raise EhrDiscoveryFailed(f"{what} is not JSON") from exc
    if not isinstance(body, dict):
        raise EhrDiscoveryFailed(f"{what} is not a JSON object")
    return body


def _url(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise EhrDiscoveryFailed(f"smart-configuration has no usable {name}")
    return value


async def discover(http: httpx.AsyncClient, iss: str, *, timeout_s: float) -> SmartConfiguration:
    """`{iss}/.well-known/smart-configuration`. PKCE S256 is required: an EHR that does not list
    it is refused rather than launched without it."""
    url = f"{iss.rstrip('/')}/.well-known/smart-configuration"
    try:
        response = await http.get(url, headers={"Accept": "application/json"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EhrDiscoveryFailed(f"the EHR could not be reached ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise EhrDiscoveryFailed(f"smart-configuration answered HTTP {response.status_code}")
    body = _json(response, "smart-configuration")
    methods = body.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise EhrDiscoveryFailed("the EHR does not offer PKCE with S256, which this app requires")
    jwks_uri = body.get("jwks_uri")
    return SmartConfiguration(
        issuer=iss.rstrip("/"),
        authorization_endpoint=_url(body.get("authorization_endpoint"), "authorization_endpoint"),
        token_endpoint=_url(body.get("token_endpoint"), "token_endpoint"),
        jwks_uri=jwks_uri
        if isinstance(jwks_uri, str) and jwks_uri.startswith(("https://", "http://"))
        else None,
        capabilities=frozenset(c for c in body.get("capabilities") or () if isinstance(c, str)),
        scopes_supported=frozenset(s for s in body.get("scopes_supported") or () if isinstance(s, str)),
        fetched=time.time(),
    )


def scopes_for(config: SmartConfiguration, *, ehr_launch: bool, online_access: bool = False) -> str:
    """`launch` (EHR launch) or `launch/patient` (standalone), `openid fhirUser`, and read/search
    on the three resource types, in v2 syntax unless the EHR offers only v1."""
    v1_only = "permission-v1" in config.capabilities and "permission-v2" not in config.capabilities
    if not config.capabilities & {"permission-v1", "permission-v2"}:
        listed = " ".join(config.scopes_supported)
        v1_only = ".read" in listed and ".rs" not in listed and ".cruds" not in listed
    suffix = "read" if v1_only else "rs"
    scopes = [
        "launch" if ehr_launch else "launch/patient",
        "openid",
        "fhirUser",
        *(f"patient/{r}.{suffix}" for r in _RESOURCES),
    ]
    return " ".join([*scopes, "online_access"] if online_access else scopes)


def new_pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge): 64 random characters, RFC 7636's upper range is 128."""
    verifier = generate_token(64)
    return verifier, create_s256_code_challenge(verifier)


def authorization_url(
    config: SmartConfiguration,
    ehr: SmartEhr,
    *,
    redirect_uri: str,
    scope: str,
    state: str,
    challenge: str,
    nonce: str,
    launch: str | None,
) -> str:
    extra: dict[str, str] = {
        "aud": ehr.iss,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "nonce": nonce,
    }
    if launch is not None:
        extra["launch"] = launch
    return str(
        prepare_grant_uri(
            config.authorization_endpoint,
            ehr.client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            **extra,
        )
    )


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_at: float | None
    scope: str
    refresh_token: str | None
    id_token: str | None
    context: dict[str, Any]  # patient, encounter, fhirContext, appContext, ... (everything else)


def _client_auth(ehr: SmartEhr, config: SmartConfiguration, body: str) -> tuple[str, dict[str, str]]:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if ehr.client_auth == "client_secret_basic":
        assert ehr.client_secret is not None
        pair = f"{ehr.client_id}:{ehr.client_secret.get_secret_value()}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    elif ehr.client_auth == "private_key_jwt":
        assert ehr.private_key_file is not None
        kind = ECKey if ehr.signing_alg.startswith("ES") else RSAKey
        assertion = private_key_jwt_sign(
            kind.import_key(ehr.private_key_file.read_bytes()),
            ehr.client_id,
            config.token_endpoint,
            alg=ehr.signing_alg,
            header={"alg": ehr.signing_alg, "kid": ehr.key_id, "typ": "JWT"},
            expires_in=300,
        )
        assertion = assertion.decode() if isinstance(assertion, bytes) else assertion
        body = add_params_to_qs(
            body,
            [
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", assertion),
            ],
        )
    return body, headers


async def _token_request(
    http: httpx.AsyncClient, ehr: SmartEhr, config: SmartConfiguration, body: str, *, timeout_s: float
) -> TokenResponse:
    body, headers = _client_auth(ehr, config, body)
    try:
        response = await http.post(
            config.token_endpoint, content=body.encode(), headers=headers, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise TokenRefused(f"the EHR's token endpoint could not be reached ({type(exc).__name__})") from exc
    if response.status_code != 200:
        error = ""
        try:
            answer = response.json()
            error = answer.get("error", "") if isinstance(answer, dict) else ""
        except ValueError:
            pass
        code = (
            error
            if isinstance(error, str) and error.replace("_", "").isalnum() and len(error) < 64
            else "unknown"
        )
        raise TokenRefused(f"the EHR answered HTTP {response.status_code} with error {code}", ehr_error=code)
    try:
        answer = response.json()
    except ValueError as exc:
        raise TokenRefused("the EHR's token answer is not JSON") from exc
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token or str(answer.get("token_type", "")).lower() != "bearer":
        raise TokenRefused("the EHR's token answer has no bearer access_token")
    expires = answer.get("expires_in")
    known = {"access_token", "token_type", "expires_in", "scope", "refresh_token", "id_token"}
    return TokenResponse(
        access_token=token,
        expires_at=time.time() + float(expires) if isinstance(expires, int | float) and expires > 0 else None,
        scope=str(answer.get("scope", "")),
        refresh_token=answer.get("refresh_token") if isinstance(answer.get("refresh_token"), str) else None,
        id_token=answer.get("id_token") if isinstance(answer.get("id_token"), str) else None,
        context={k: v for k, v in answer.items() if k not in known},
    )


async def exchange_code(
    http: httpx.AsyncClient,
    ehr: SmartEhr,
    config: SmartConfiguration,
    *,
    code: str,
    verifier: str,
    redirect_uri: str,
    timeout_s: float,
) -> TokenResponse:
    body = prepare_token_request(
        "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier
    )
    if ehr.client_auth == "none":
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
            client_id=ehr.client_id,
        )
    return await _token_request(http, ehr, config, body, timeout_s=timeout_s)


async def refresh(
    http: httpx.AsyncClient,
    ehr: SmartEhr,
    config: SmartConfiguration,
    refresh_token: str,
    *,
    timeout_s: float,
) -> TokenResponse:
    extra = {"client_id": ehr.client_id} if ehr.client_auth == "none" else {}
    body = prepare_token_request("refresh_token", refresh_token=refresh_token, **extra)
    return await _token_request(http, ehr, config, body, timeout_s=timeout_s)


async def verify_id_token(
    http: httpx.AsyncClient,
    ehr: SmartEhr,
    config: SmartConfiguration,
    id_token: str,
    *,
    nonce: str,
    timeout_s: float,
    leeway_s: float = 60.0,
) -> dict[str, Any]:
    """The id_token's claims once its signature (the EHR's JWKS), `iss` (= the EHR's `iss`), `aud`
    (our client id), `exp` and `nonce` hold. Anything else: BadIdToken."""
    jwks_url = ehr.jwks_url or config.jwks_uri
    if jwks_url is None:
        raise BadIdToken("the EHR names no JWKS to check its id_token with")
    try:
        response = await http.get(jwks_url, headers={"Accept": "application/json"}, timeout=timeout_s)
        keys = (
            KeySet.import_key_set(_json(response, "the EHR's JWKS")) if response.status_code == 200 else None
        )
    except (httpx.HTTPError, EhrDiscoveryFailed, JoseError, ValueError, TypeError) as exc:
        raise BadIdToken(f"the EHR's JWKS could not be read ({type(exc).__name__})") from exc
    if keys is None:
        raise BadIdToken(f"the EHR's JWKS answered HTTP {response.status_code}")
    try:
        token = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
    except (JoseError, ValueError, TypeError) as exc:
        raise BadIdToken(f"the id_token's signature does not verify ({type(exc).__name__})") from exc
    claims = token.claims
    registry = jwt.JWTClaimsRegistry(
        leeway=int(leeway_s),
        iss={"essential": True, "value": ehr.iss},
        aud={"essential": True, "value": ehr.client_id},
        exp={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise BadIdToken(f"the id_token's claims do not hold ({exc.error})") from exc
    if claims.get("nonce") != nonce:
        raise BadIdToken("the id_token's nonce is not this launch's")
    return dict(claims)
