"""SMART's reference launcher (prebuilt at ../shared/tools/smart-launcher), run as a real
authorization server proxying our demo EHR's FHIR server, and a client that walks its flows
over HTTP the way a browser would (every redirect followed by hand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from demo_ehr import DEFAULT_LAUNCHER_DIR, SmartLauncher, launch_code, launcher_missing, start_launcher

__all__ = ["LAUNCHER_DIR", "Launcher", "Walk", "follow", "launch_code", "missing", "query", "start_launcher"]

Launcher = SmartLauncher
LAUNCHER_DIR = DEFAULT_LAUNCHER_DIR


def missing() -> str | None:
    return launcher_missing(LAUNCHER_DIR)


@dataclass
class Walk:
    """One browser's walk through a launch: every hop, and where it ended."""

    hops: list[httpx.Response] = field(default_factory=list)

    @property
    def last(self) -> httpx.Response:
        return self.hops[-1]

    def hop_to(self, prefix: str) -> httpx.Response:
        return next(r for r in self.hops if str(r.request.url).startswith(prefix))


def follow(client: httpx.Client, url: str, *, stop_at: str | None = None, max_hops: int = 10) -> Walk:
    """GET `url` and each `Location` after it, by hand; stops before a URL starting with `stop_at`."""
    walk = Walk()
    for _ in range(max_hops):
        if stop_at is not None and url.startswith(stop_at):
            walk.stopped_at = url  # type: ignore[attr-defined]
            return walk
        response = client.get(url)
        walk.hops.append(response)
        if response.status_code not in (301, 302, 303, 307, 308):
            return walk
        url = str(response.url.join(response.headers["location"]))
    raise AssertionError("too many redirects")


def query(url: str) -> dict[str, Any]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
