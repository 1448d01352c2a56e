"""Who is calling: verify the EHR's bearer JWT on every CDS Hooks call (2.0 "Trusting CDS Clients"
and the CDS Hooks security best practices).

Order of checks: header (`alg` configured and asymmetric, `typ` JWT, `kid`), `iss` on the
allow-list, `jku` allow-listed for that issuer, the key by `kid` from that JWKS, the signature
(joserfc), then the verified claims: `aud` is the exact endpoint URL, `exp`/`iat`/`nbf` within the
leeway, lifetime bounded, `jti` present, `tenant` allowed; last, the `jti` is recorded and a
repeat refused. Any failure is one `AuthFailure` carrying a reason code for logs and metrics;
callers only ever see a bare 401. The token itself is never logged or stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from .errors import StoreError, Unauthorized
from .jwks import JwksCache, JwksUnavailable
from .replay import ReplayStore, replay_key
from .settings import TrustedIssuer

__all__ = ["AuthFailure", "Caller", "CallerVerifier", "bearer_token"]

log = logging.getLogger("cds.auth")

MAX_TOKEN_BYTES = 8 * 1024


class AuthFailure(Unauthorized):
    """Why a caller was refused (`reason`: a stable code; `detail`: plain words for the log);
    the HTTP answer never says."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__("unauthorized")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Caller:
    iss: str
    jti: str
    tenant: str | None = None
    sub: str | None = None  # Epic sends its CDS client id here


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthFailure("missing-token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthFailure("not-bearer")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthFailure("token-too-large")
    return token


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthFailure(f"missing-{name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthFailure(f"invalid-{name}")
    return float(value)


class CallerVerifier:
    def __init__(
        self,
        issuers: Collection[TrustedIssuer],
        jwks: JwksCache,
        replay: ReplayStore,
        *,
        algorithms: Collection[str] = ("ES384", "RS384"),
        leeway_s: float = 30.0,
        max_lifetime_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuers = {i.iss: i for i in issuers}
        self.jwks = jwks
        self.replay = replay
        self.algorithms = tuple(algorithms)
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self._clock = clock

    def _header(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and (still unverified) claims: only used to pick the issuer and the key."""
        try:
            compact = jws.extract_compact(token.encode("ascii"))
            header = dict(compact.headers())
            claims = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError) as exc:
            raise AuthFailure("malformed-token") from exc
        if not isinstance(claims, dict):
            raise AuthFailure("malformed-token")
        if header.get("alg") not in self.algorithms:
            raise AuthFailure("alg-not-allowed")
        if not isinstance(header.get("typ"), str) or header["typ"].upper() != "JWT":
            raise AuthFailure("typ-not-jwt")
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise AuthFailure("missing-kid")
        if "crit" in header:
            raise AuthFailure("crit-not-supported")
        return header, claims

    def _key_url(self, header: Mapping[str, Any], issuer: TrustedIssuer) -> tuple[str, bool]:
        """(JWKS URL to use, whether the token's `jku` was set aside for the pinned `jwks_url`).

        A `jku` off the allow-list is never fetched. When the issuer's keys are pinned
        (`jwks_url`) the token is verified with those instead: the reference CDS Hooks sandbox
        names a public `jku` on every call, and the signature still has to match our keys."""
        jku = header.get("jku")
        if jku is None:
            if issuer.jwks_url is None:
                raise AuthFailure(
                    "jku-required", "the token names no jku and this issuer has no pinned jwks_url"
                )
            return issuer.jwks_url, False
        if isinstance(jku, str) and jku in issuer.key_urls():
            return jku, False
        if issuer.jwks_url is None:
            raise AuthFailure(
                "jku-not-allowed",
                "the token's jku is not allow-listed and this issuer has no pinned jwks_url",
            )
        return issuer.jwks_url, True

    def _check_claims(
        self, claims: Mapping[str, Any], audience: str, issuer: TrustedIssuer
    ) -> tuple[float, str]:
        now = self._clock()
        exp = _number(claims, "exp", required=True)
        iat = _number(claims, "iat", required=True)
        nbf = _number(claims, "nbf", required=False)
        if exp is None or iat is None:  # required=True already refused these
            raise AuthFailure("missing-exp")
        if exp <= now - self.leeway_s:
            raise AuthFailure("expired")
        if iat > now + self.leeway_s:
            raise AuthFailure("iat-in-future")
        if nbf is not None and nbf > now + self.leeway_s:
            raise AuthFailure("not-yet-valid")
        if exp - iat > self.max_lifetime_s or exp < iat:
            raise AuthFailure("lifetime-too-long")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in audiences:
            raise AuthFailure("wrong-aud")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AuthFailure("missing-jti")
        tenant = claims.get("tenant")
        if issuer.tenants and tenant not in issuer.tenants:
            raise AuthFailure("wrong-tenant")
        return exp, jti

    async def verify(self, token: str, audience: str) -> Caller:
        """The caller, or AuthFailure. `audience` is the exact URL of the endpoint called."""
        header, unverified = self._header(token)
        issuer = self.issuers.get(unverified.get("iss"))  # type: ignore[arg-type]
        if issuer is None:
            raise AuthFailure("unknown-iss")
        url, jku_set_aside = self._key_url(header, issuer)
        try:
            key = await self.jwks.key(url, header["kid"])
        except JwksUnavailable as exc:
            log.warning("JWKS unavailable", extra={"event": {"iss": issuer.iss, "why": str(exc)}})
            raise AuthFailure("jwks-unavailable", str(exc)) from exc
        if key is None:
            if jku_set_aside:
                raise AuthFailure(
                    "jku-not-allowed",
                    "the token's jku is not allow-listed, and its kid is not among the keys of the pinned "
                    "jwks_url; "
                    "add the jku to this issuer's allow-list if the EHR really signs with those keys",
                )
            raise AuthFailure("unknown-kid", "no key with this kid at the issuer's JWKS")
        try:
            verified = jwt.decode(token, key, algorithms=[header["alg"]])
        except JoseError as exc:
            detail = "signature does not verify" + (
                " with the pinned keys (the token's jku was not allow-listed)" if jku_set_aside else ""
            )
            raise AuthFailure("bad-signature", detail) from exc
        claims = verified.claims
        if claims.get("iss") != issuer.iss:
            raise AuthFailure("unknown-iss")
        exp, jti = self._check_claims(claims, audience, issuer)
        try:
            first = await self.replay.first_use(replay_key(issuer.iss, jti), exp + self.leeway_s)
        except StoreError as exc:
            raise AuthFailure("replay-store-unavailable") from exc  # fail closed
        if not first:
            raise AuthFailure("replayed-jti")
        tenant = claims.get("tenant")
        sub = claims.get("sub")
        return Caller(
            issuer.iss,
            jti,
            tenant if isinstance(tenant, str) else None,
            sub if isinstance(sub, str) else None,
        )

    async def close(self) -> None:
        await self.jwks.close()
        await self.replay.close()
