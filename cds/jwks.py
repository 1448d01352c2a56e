"""The EHRs' public keys (JWKS), fetched with the app's shared httpx client and cached.

Only allow-listed URLs are ever fetched (https, or http on loopback for tests and demos). A key
is looked up by `kid`; an unknown `kid` triggers one refetch (key rotation), at most once per
`min_refresh_s` per URL, so forged kids cannot make us hammer the EHR. With `CDS_REDIS_URL` the
downloaded JWKS and the refresh rate limit are shared by every worker (`RedisJwksBackend`, behind
`FallbackJwksBackend`: while Redis is unavailable each worker keeps its own copy, see
cds/degraded.py); otherwise each process keeps its own (`MemoryJwksBackend`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from .degraded import Breaker, redis_client
from .transport import secure_or_loopback

__all__ = [
    "FallbackJwksBackend",
    "JwksBackend",
    "JwksCache",
    "JwksUnavailable",
    "MemoryJwksBackend",
    "RedisJwksBackend",
]

log = logging.getLogger("cds.auth")

MAX_JWKS_BYTES = 64 * 1024

PublicKey = ECKey | RSAKey


class JwksUnavailable(Exception):
    """The JWKS could not be had (not allow-listed, unreachable, invalid). Never shown to callers."""


class JwksBackend(Protocol):
    async def get(self, url: str) -> str | None: ...
    async def put(self, url: str, text: str, ttl_s: float) -> None: ...
    async def claim_refresh(self, url: str, interval_s: float) -> bool:
        """True if this caller may refetch `url` now (nobody did within `interval_s`)."""
        ...

    async def close(self) -> None: ...


class MemoryJwksBackend:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._texts: dict[str, tuple[float, str]] = {}
        self._refreshed: dict[str, float] = {}

    async def get(self, url: str) -> str | None:
        entry = self._texts.get(url)
        return entry[1] if entry and entry[0] > self._clock() else None

    async def put(self, url: str, text: str, ttl_s: float) -> None:
        self._texts[url] = (self._clock() + ttl_s, text)

    async def claim_refresh(self, url: str, interval_s: float) -> bool:
        now = self._clock()
        if now - self._refreshed.get(url, -float("inf")) < interval_s:
            return False
        self._refreshed[url] = now
        return True

    async def close(self) -> None:
        return None


class RedisJwksBackend:
    def __init__(self, url: str, *, prefix: str = "cds:", timeout_s: float = 0.25) -> None:
        self.prefix = prefix + "jwks:"
        self._redis = redis_client(url, timeout_s=timeout_s, decode_responses=True)

    def _key(self, kind: str, url: str) -> str:
        return f"{self.prefix}{kind}:{url}"

    async def _call(self, coro: Any) -> Any:
        import redis.exceptions

        try:
            return await coro
        except (redis.exceptions.RedisError, OSError) as exc:
            raise JwksUnavailable(f"shared JWKS cache failed ({type(exc).__name__})") from exc

    async def get(self, url: str) -> str | None:
        value = await self._call(self._redis.get(self._key("set", url)))
        return value if isinstance(value, str) else None

    async def put(self, url: str, text: str, ttl_s: float) -> None:
        await self._call(self._redis.set(self._key("set", url), text, px=max(1, int(1000 * ttl_s))))

    async def claim_refresh(self, url: str, interval_s: float) -> bool:
        claimed = await self._call(
            self._redis.set(self._key("refresh", url), "1", nx=True, px=max(1, int(1000 * interval_s)))
        )
        return bool(claimed)

    async def close(self) -> None:
        await self._redis.aclose()


class FallbackJwksBackend:
    """The shared Redis copy while Redis answers, this worker's own while it does not."""

    def __init__(self, primary: JwksBackend, breaker: Breaker) -> None:
        self.primary = primary
        self.breaker = breaker
        self.local = MemoryJwksBackend()

    async def _try(self, call: Callable[[JwksBackend], Any]) -> tuple[bool, Any]:
        if not self.breaker.available():
            return False, None
        try:
            result = await call(self.primary)
        except JwksUnavailable as exc:
            self.breaker.failed(str(exc))
            return False, None
        self.breaker.succeeded()
        return True, result

    async def get(self, url: str) -> str | None:
        ok, text = await self._try(lambda b: b.get(url))
        return text if ok else await self.local.get(url)

    async def put(self, url: str, text: str, ttl_s: float) -> None:
        await self.local.put(url, text, ttl_s)
        await self._try(lambda b: b.put(url, text, ttl_s))

    async def claim_refresh(self, url: str, interval_s: float) -> bool:
        ok, claimed = await self._try(lambda b: b.claim_refresh(url, interval_s))
        return bool(claimed) if ok else await self.local.claim_refresh(url, interval_s)

    async def close(self) -> None:
        await self.primary.close()


@dataclass
class _Parsed:
    text: str
    keys: dict[str, PublicKey]
    until: float


def _parse(text: str) -> dict[str, PublicKey]:
    """kid -> public signing key. Keys without kid, for encryption, or of other types are skipped."""
    try:
        data = json.loads(text)
        raw = [k for k in data["keys"] if isinstance(k, dict)]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise JwksUnavailable("JWKS is not a JSON key set") from exc
    usable = [
        {
            k: v for k, v in key.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")
        }  # public parts only
        for key in raw
        if isinstance(key.get("kid"), str)
        and key.get("kty") in ("EC", "RSA")
        and key.get("use", "sig") == "sig"
    ]
    try:
        key_set = KeySet.import_key_set({"keys": usable})
    except (JoseError, ValueError, TypeError) as exc:
        raise JwksUnavailable("JWKS holds an invalid key") from exc
    return {str(key.kid): key for key in key_set.keys if isinstance(key, (ECKey, RSAKey))}


class JwksCache:
    def __init__(
        self,
        http: httpx.AsyncClient,
        allowlist: Collection[str],
        *,
        backend: JwksBackend | None = None,
        ttl_s: float = 300.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.allowlist = frozenset(allowlist)
        self.backend = backend or MemoryJwksBackend(clock)
        self.ttl_s = ttl_s
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._local: dict[str, _Parsed] = {}
        self.downloads = 0  # for tests and the benchmark

    def _check_url(self, url: str) -> None:
        if url not in self.allowlist:
            raise JwksUnavailable("JWKS URL is not on the allow-list")
        if not secure_or_loopback(url):
            raise JwksUnavailable("JWKS URL must be https")

    async def _download(self, url: str) -> str:
        try:
            response = await self.http.get(
                url, headers={"Accept": "application/json"}, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"JWKS fetch failed ({type(exc).__name__})") from exc
        if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"JWKS fetch answered {response.status_code}")
        self.downloads += 1
        text = response.text
        _parse(text)  # refuse to cache something unusable
        await self.backend.put(url, text, self.ttl_s)
        return text

    def _remember(self, url: str, text: str) -> dict[str, PublicKey]:
        known = self._local.get(url)
        keys = known.keys if known is not None and known.text == text else _parse(text)
        self._local[url] = _Parsed(text, keys, self._clock() + self.ttl_s)
        return keys

    async def _keys(self, url: str) -> dict[str, PublicKey]:
        known = self._local.get(url)
        if known is not None and known.until > self._clock():
            return known.keys
        text = await self.backend.get(url)
        if text is None:
            text = await self._download(url)
        return self._remember(url, text)

    async def key(self, url: str, kid: str) -> PublicKey | None:
        """The key `kid` from the JWKS at `url`, refetching once (rate-limited) when it is unknown."""
        self._check_url(url)
        keys = await self._keys(url)
        if kid in keys:
            return keys[kid]
        if await self.backend.claim_refresh(url, self.min_refresh_s):
            log.info("unknown kid: refetching JWKS", extra={"event": {"jwks_url": url}})
            keys = self._remember(url, await self._download(url))
        else:
            text = await self.backend.get(url)  # another worker may have refreshed it
            if text is not None:
                keys = self._remember(url, text)
        return keys.get(kid)

    def is_warm(self, url: str) -> bool:
        known = self._local.get(url)
        return known is not None and known.until > self._clock()

    async def warm(self, urls: Collection[str]) -> dict[str, bool]:
        """Load each URL's keys unless this worker holds them (readiness: the first EHR call then
        needs no download). URL -> loaded; a failure is reported, not raised."""
        loaded = {}
        for url in urls:
            if not self.is_warm(url):
                try:
                    self._check_url(url)
                    await self._keys(url)
                except Exception:  # noqa: BLE001 - reported as not ready, tried again on the next probe
                    pass
            loaded[url] = self.is_warm(url)
        return loaded

    async def close(self) -> None:
        await self.backend.close()
