"""The demo EHR's identity as a CDS Client: its signing keys, its JWKS served over HTTP, and the
bearer JWTs it sends on each CDS Hooks call (CDS Hooks 2.0 "Trusting CDS Clients").

It signs with ES384 and RS384 (the algorithms the spec recommends) and can add Epic's extra
claims (`sub`, `nbf`). Tests use it to make valid tokens and, by overriding any header or claim,
every kind of bad one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["EhrIdentity", "EhrJwtAuth", "endpoint_audience"]

JWKS_PATH = "/.well-known/jwks.json"


def _new_keys() -> dict[str, ECKey | RSAKey]:
    return {
        "ES384": ECKey.generate_key(
            "P-384", parameters={"kid": f"es384-{uuid.uuid4().hex[:8]}", "use": "sig", "alg": "ES384"}
        ),
        "RS384": RSAKey.generate_key(
            2048, parameters={"kid": f"rs384-{uuid.uuid4().hex[:8]}", "use": "sig", "alg": "RS384"}
        ),
    }


@dataclass
class EhrIdentity:
    issuer: str = "https://ehr.example.org/fhir"
    tenant: str | None = None
    keys: dict[str, ECKey | RSAKey] = field(default_factory=_new_keys)
    jwks_url: str | None = None  # set once the JWKS app is served (see `serve`)
    jwks_requests: int = 0

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys.values()]}

    def rotate(self) -> None:
        """New key pairs (new kids), as an EHR does on key rotation."""
        self.keys = _new_keys()

    def app(self) -> Starlette:
        async def jwks(request: Request) -> JSONResponse:
            self.jwks_requests += 1
            return JSONResponse(self.jwks())

        return Starlette(routes=[Route(JWKS_PATH, jwks)])

    def claims(self, aud: str | list[str], *, lifetime_s: int = 300, epic: bool = False) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": aud,
            "exp": now + lifetime_s,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        if self.tenant:
            claims["tenant"] = self.tenant
        if epic:
            claims |= {"sub": "cds-ml-client-id", "nbf": now - 300}
        return claims

    def token(
        self,
        aud: str | list[str],
        *,
        alg: str = "ES384",
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        epic: bool = False,
        jku: bool = False,
    ) -> str:
        """A signed JWT for endpoint `aud`; `header`/`claims` override or (value None) remove fields."""
        key = self.keys[alg]
        head: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": key.kid}
        if jku and self.jwks_url:
            head["jku"] = self.jwks_url
        body = self.claims(aud, epic=epic)
        for target, changes in ((head, header), (body, claims)):
            for name, value in (changes or {}).items():
                if value is None:
                    target.pop(name, None)
                else:
                    target[name] = value
        return jwt.encode(head, body, key, algorithms=[alg])


def endpoint_audience(url: httpx.URL) -> str:
    """The `aud` an EHR puts in the token: the endpoint's URL without query or fragment."""
    return str(url.copy_with(query=None, fragment=None))


class EhrJwtAuth(httpx.Auth):
    """httpx auth: a fresh token (new jti, aud = the URL called) on every request."""

    def __init__(self, identity: EhrIdentity, *, alg: str = "ES384", epic: bool = False) -> None:
        self.identity = identity
        self.alg = alg
        self.epic = epic

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.identity.token(endpoint_audience(request.url), alg=self.alg, epic=self.epic)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
