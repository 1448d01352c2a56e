"""SMART Backend Services (the census sweep's access to the EHR): `client_credentials` with a
`private_key_jwt` client assertion (RFC 7523), signed by our key; the EHR holds its public half
as a JWKS. The assertion and the token request body come from authlib, as for the SMART app
(cds/smart/oauth.py); our own httpx client sends them (no redirects, no proxy from the
environment). The token is kept in memory until shortly before it expires, never logged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.common.urls import add_params_to_qs
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc.jwk import ECKey, KeySet, RSAKey

from .errors import FHIRServerError
from .settings import SweepEhr
from .transport import secure_or_loopback

__all__ = ["BackendToken", "BackendTokenSource", "load_signing_key", "public_jwks"]

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_REFRESH_BEFORE_S = 60.0
_MAX_BODY = 256 * 1024


def load_signing_key(path: Path, key_id: str, alg: str) -> RSAKey | ECKey:
    """Our private key from a PEM file, or from a JWK / JWKS (JSON) by its `kid`."""
    raw = path.read_bytes()
    kind: type[RSAKey] | type[ECKey] = ECKey if alg.startswith("ES") else RSAKey
    if raw.lstrip().startswith(b"{"):
        value = json.loads(raw)
        keys = KeySet.import_key_set(value if "keys" in value else {"keys": [value]})
        found = next((k for k in keys.keys if k.kid == key_id), None)
        if found is None or not isinstance(found, kind) or not found.is_private:
            raise FHIRServerError("the sweep's JWKS holds no private key with the configured key_id")
        return found
    return kind.import_key(raw)


def public_jwks(key: RSAKey | ECKey, key_id: str, alg: str) -> dict[str, Any]:
    """The JWKS to register with the EHR: the public half only."""
    return {"keys": [{**key.as_dict(private=False), "kid": key_id, "alg": alg, "key_ops": ["verify"]}]}


@dataclass(frozen=True)
class BackendToken:
    access_token: str
    expires_at: float
    scope: str


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    if len(response.content) > _MAX_BODY:
        raise FHIRServerError(f"{what} is larger than {_MAX_BODY} bytes")
    try:
        body = response.json()
    except ValueError:
        raise FHIRServerError(f"{what} is not JSON") from None
    if not isinstance(body, dict):
        raise FHIRServerError(f"{what} is not a JSON object")
    return body


class BackendTokenSource:
    """Access tokens for one EHR: discovered token endpoint, a fresh assertion per request."""

    def __init__(self, http: httpx.AsyncClient, ehr: SweepEhr) -> None:
        self.http = http
        self.ehr = ehr
        self.key = load_signing_key(ehr.private_key_file, ehr.key_id, ehr.signing_alg)
        self._endpoint = ehr.token_endpoint
        self._token: BackendToken | None = None

    async def token_endpoint(self) -> str:
        if self._endpoint is None:
            url = f"{self.ehr.fhir_base}/.well-known/smart-configuration"
            try:
                response = await self.http.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError as exc:
                raise FHIRServerError(f"smart-configuration unreachable ({type(exc).__name__})") from exc
            if response.status_code != 200:
                raise FHIRServerError(f"smart-configuration answered HTTP {response.status_code}")
            body = _json(response, "smart-configuration")
            grants = body.get("grant_types_supported")
            if isinstance(grants, list) and "client_credentials" not in grants:
                raise FHIRServerError("the EHR does not offer client_credentials (SMART Backend Services)")
            endpoint = body.get("token_endpoint")
            if not isinstance(endpoint, str) or not secure_or_loopback(endpoint):
                raise FHIRServerError("smart-configuration has no usable token_endpoint")
            self._endpoint = endpoint
        return self._endpoint

    def assertion(self, endpoint: str) -> str:
        signed = private_key_jwt_sign(
            self.key,
            self.ehr.client_id,
            endpoint,
            alg=self.ehr.signing_alg,
            header={"alg": self.ehr.signing_alg, "kid": self.ehr.key_id, "typ": "JWT"},
            expires_in=300,
        )
        return signed.decode() if isinstance(signed, bytes) else str(signed)

    def invalidate(self) -> None:
        """Forget the token (the EHR answered 401: it expired or was revoked early)."""
        self._token = None

    async def token(self, *, now: float | None = None) -> BackendToken:
        """The current token, or a new one when it expires within a minute."""
        at = time.time() if now is None else now
        if self._token is not None and self._token.expires_at - _REFRESH_BEFORE_S > at:
            return self._token
        endpoint = await self.token_endpoint()
        body = add_params_to_qs(
            "",
            [
                ("grant_type", "client_credentials"),
                ("scope", self.ehr.scope),
                ("client_assertion_type", _ASSERTION_TYPE),
                ("client_assertion", self.assertion(endpoint)),
            ],
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        try:
            response = await self.http.post(endpoint, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise FHIRServerError(f"the token endpoint could not be reached ({type(exc).__name__})") from exc
        if response.status_code != 200:
            # The EHR's error code only (invalid_client, invalid_scope): its description may echo input.
            code = ""
            try:
                code = str(_json(response, "token error").get("error", ""))[:40]
            except FHIRServerError:
                pass
            raise FHIRServerError(
                f"the EHR refused the backend token request ({response.status_code} {code})"
            )
        answer = _json(response, "token response")
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise FHIRServerError("the token response has no access_token")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        scope = answer.get("scope")
        self._token = BackendToken(access, at + lifetime, scope if isinstance(scope, str) else self.ehr.scope)
        return self._token
