"""Degraded mode for what is shared through Redis (the replay window, the JWKS cache).

Redis holds only what may be lost. When it is down or frozen, a call must neither wait for it
nor be refused because of it: each worker falls back to a local copy, says so once in the log
(a warning), shows it in `/metrics` (`cds_degraded{component=...} 1`), tries Redis again every
`CDS_DEGRADED_RETRY_S`, and returns to it by itself. What is weaker meanwhile is stated in
docs/hardening.md (a jti is then refused within one worker only, until Redis is back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Breaker", "redis_client"]

log = logging.getLogger("cds.degraded")


class Breaker:
    """Whether to call a shared dependency now, and the log and metric of its outages."""

    def __init__(
        self, component: str, *, retry_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.component = component
        self.retry_s = retry_s
        self._clock = clock
        self.degraded = False
        self.outages = 0
        self._next_try = 0.0

    def available(self) -> bool:
        """True when the dependency should be tried (healthy, or due for a retry)."""
        return not self.degraded or self._clock() >= self._next_try

    def failed(self, why: str) -> None:
        self._next_try = self._clock() + self.retry_s
        if not self.degraded:
            self.degraded = True
            self.outages += 1
            log.warning(
                "DEGRADED: %s unavailable (%s); using this worker's local copy until it is back",
                self.component,
                why,
                extra={"event": {"component": self.component, "degraded": True}},
            )

    def succeeded(self) -> bool:
        """Record a success; True when this ends an outage (the caller may resynchronise)."""
        if not self.degraded:
            return False
        self.degraded = False
        log.warning(
            "recovered: %s is available again",
            self.component,
            extra={"event": {"component": self.component, "degraded": False}},
        )
        return True


def redis_client(url: str, *, timeout_s: float, decode_responses: bool = False) -> Any:
    """An asyncio Redis client that fails fast: short timeouts and no retries (redis-py retries
    a failed command 10 times with backoff by default, which held every call of a hook)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode_responses,
    )
