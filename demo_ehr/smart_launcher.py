"""SMART's reference launcher (prebuilt at ../shared/tools/smart-launcher, see its README): a real
SMART App Launch 2.x authorization server and FHIR proxy, run on loopback in front of the demo
EHR's FHIR server, for the demo and the tests."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_LAUNCHER_DIR", "SmartLauncher", "launch_code", "launcher_missing", "start_launcher"]

DEFAULT_LAUNCHER_DIR = Path(
    os.environ.get(
        "CDS_SMART_LAUNCHER_DIR",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "tools" / "smart-launcher",
    )
).resolve()
_LAUNCH_TYPES = [
    "provider-ehr",
    "patient-portal",
    "provider-standalone",
    "patient-standalone",
    "backend-service",
]
_CLIENT_TYPES = ["public", "confidential-symmetric", "confidential-asymmetric", "backend-service"]


def launcher_missing(directory: Path = DEFAULT_LAUNCHER_DIR) -> str | None:
    """Why the launcher cannot run here, or None."""
    if not (directory / "dist" / "server.js").is_file():
        return (
            f"SMART reference launcher not found at {directory} "
            "(put ../shared/tools/smart-launcher beside the repository)"
        )
    if shutil.which("node") is None:
        return "node (Node.js 18+) is not on PATH: the SMART reference launcher needs it"
    return None


def launch_code(
    *,
    launch_type: str = "provider-ehr",
    patient: str = "",
    provider: str = "",
    encounter: str = "",
    client_type: str = "public",
    client_id: str = "",
    client_secret: str = "",
    jwks: str = "",
    auth_error: str = "",
    pkce: str = "always",
) -> str:
    """The launcher's launch options (its src/isomorphic/codec.ts): a base64url JSON array. Login
    and approval screens are skipped (one patient, one provider given), PKCE is `always`. For SMART
    Backend Services: `launch_type` and `client_type` "backend-service", with `client_id` (the
    assertion's `sub`) and `jwks` (the client's public keys); its token endpoint is then
    `/v/r4/sim/<code>/auth/token`."""
    options = [
        _LAUNCH_TYPES.index(launch_type),
        patient,
        provider,
        encounter or "NONE",
        1,
        1,
        0,
        "",
        "",
        client_id,
        client_secret,
        auth_error,
        "",
        jwks,
        _CLIENT_TYPES.index(client_type),
        ["none", "auto", "always"].index(pkce),
        "",
    ]
    return base64.urlsafe_b64encode(json.dumps(options).encode()).rstrip(b"=").decode()


@dataclass
class SmartLauncher:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def iss(self) -> str:
        """The FHIR base apps talk to (EHR launch); it proxies the demo EHR's FHIR server."""
        return f"{self.url}/v/r4/fhir"

    def standalone_iss(self, code: str) -> str:
        return f"{self.url}/v/r4/sim/{code}/fhir"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_launcher(
    fhir_base: str,
    log: Path,
    *,
    port: int = 0,
    directory: Path = DEFAULT_LAUNCHER_DIR,
    timeout_s: float = 30.0,
) -> SmartLauncher:
    """`log`: where its output goes (a file, so that a full pipe never blocks it)."""
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FHIR_SERVER_R4": fhir_base,
        "NODE_ENV": "production",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["node", "dist/server.js"], cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(rb"available at (http://127\.0\.0\.1:\d+)", log.read_bytes())
        if found:
            return SmartLauncher(found.group(1).decode(), process)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"the SMART launcher did not start: {log.read_bytes()[-2000:]!r}")
