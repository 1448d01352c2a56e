"""SMART's reference launcher (prebuilt at ../shared/tools/smart-launcher), run as a real
authorization server proxying our demo EHR's FHIR server, and a client that walks its flows
over HTTP the way a browser would (every redirect followed by hand)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_DIR = Path(os.environ.get("CDS_SMART_LAUNCHER_DIR", ROOT / ".." / "shared" / "tools" / "smart-launcher")).resolve()

LAUNCH_TYPES = ["provider-ehr", "patient-portal", "provider-standalone", "patient-standalone"]
CLIENT_TYPES = ["public", "confidential-symmetric", "confidential-asymmetric"]


def missing() -> str | None:
    """Why the launcher cannot run here, or None."""
    if not (LAUNCHER_DIR / "dist" / "server.js").is_file():
        return f"SMART reference launcher not found at {LAUNCHER_DIR} (put ../shared/tools/smart-launcher beside the repository)"
    if shutil.which("node") is None:
        return "node (Node.js 18+) is not on PATH: the SMART reference launcher needs it"
    return None


def launch_code(
    *, launch_type: str = "provider-ehr", patient: str = "", provider: str = "", encounter: str = "", client_type: str = "public",
    client_id: str = "", client_secret: str = "", jwks: str = "", auth_error: str = "", pkce: str = "always",
) -> str:
    """The launcher's launch options (src/isomorphic/codec.ts): a base64url JSON array."""
    options = [
        LAUNCH_TYPES.index(launch_type), patient, provider, encounter or "NONE", 1, 1, 0, "", "", client_id, client_secret,
        auth_error, "", jwks, CLIENT_TYPES.index(client_type), ["none", "auto", "always"].index(pkce), "",
    ]
    return base64.urlsafe_b64encode(json.dumps(options).encode()).rstrip(b"=").decode()


@dataclass
class Launcher:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def iss(self) -> str:
        return f"{self.url}/v/r4/fhir"

    def standalone_iss(self, code: str) -> str:
        return f"{self.url}/v/r4/sim/{code}/fhir"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_launcher(fhir_base: str, log: Path, *, timeout_s: float = 30.0) -> Launcher:
    """`log`: where its output goes (a file, so that a full pipe never blocks it)."""
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "FHIR_SERVER_R4": fhir_base, "NODE_ENV": "production"}
    with log.open("wb") as out:
        process = subprocess.Popen(["node", "dist/server.js"], cwd=LAUNCHER_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(rb"available at (http://127\.0\.0\.1:\d+)", log.read_bytes())
        if found:
            return Launcher(found.group(1).decode(), process)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"the SMART launcher did not start: {log.read_bytes()[-2000:]!r}")


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
