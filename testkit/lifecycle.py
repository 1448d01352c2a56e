"""Test and benchmark support for the model lifecycle: registry versions made from a committed one,
ICU stays built from the golden set's cases (as FHIR, for real hook calls), and reading what a
running server serves from its /metrics."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from demo_ehr import StayResources, icu_start_for_hour, patient_view_request, stay_to_fhir
from models import DEFAULT_REGISTRY, build_golden_set

__all__ = [
    "HookHammer",
    "call_sepsis",
    "card_version",
    "copy_version",
    "golden_stays",
    "serving",
    "tmp_registry",
    "wait_for",
]


def tmp_registry(root: Path) -> Path:
    """A copy of the committed registry at `root`."""
    shutil.copytree(DEFAULT_REGISTRY, root)
    return root


def copy_version(root: Path, name: str, source: str, version: str, **changes: Any) -> Path:
    """Register `version` of `name` as a copy of `source` (same booster), with manifest `changes`
    (e.g. another threshold or calibration): a second version without training one."""
    target = root / name / version
    shutil.copytree(root / name / source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update({"version": version, "parent_version": source, **changes})
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def golden_stays(kind: str, n: int, *, first_patient: int = 900_000) -> list[StayResources]:
    """`n` ICU stays as FHIR from the golden set's `kind` cases (normal, shock, sepsis), each a
    patient of its own (the cases cycle when `n` is larger)."""
    cases = [c for c in build_golden_set("sepsis")["cases"] if c["id"].startswith(kind + "-")]
    stays = []
    now = datetime.now(UTC)
    for i in range(n):
        case = cases[i % len(cases)]
        frame = pd.DataFrame(
            [{"patient": first_patient + i, **case["static"], **row} for row in case["rows"]]
        )
        hours = len(case["rows"])
        stays.append(stay_to_fhir(frame, icu_start=icu_start_for_hour(now, hours), up_to_hour=hours))
    return stays


def call_sepsis(client: httpx.Client, stay: StayResources) -> dict[str, Any]:
    """One sepsis-risk hook call with the whole stay prefetched; the response body."""
    response = client.post("/cds-services/sepsis-risk", json=patient_view_request(stay))
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def card_version(body: dict[str, Any]) -> tuple[str, str | None]:
    """(model version that answered, its role when a canary runs) from a sepsis card."""
    data = body["cards"][0]["extension"]["org.cds-ml.risk"]
    return str(data["modelVersion"]), data.get("modelRole")


def serving(url: str, model: str = "sepsis") -> dict[str, str]:
    """role -> version a running server serves now, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("cds_model_serving{") and f'model="{model}"' in line:
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            found[labels["role"].strip('"')] = labels["version"].strip('"')
    return found


def wait_for(check: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class HookHammer:
    """Calls the sepsis hook of each server in turn, without pause, while a version switch happens
    (a context manager); `answers` holds (status, version that answered or "none"), `failures`
    the exceptions' names: a switch without a failed request leaves only 200s with a card."""

    def __init__(self, urls: list[str], *, first_patient: int = 800_000) -> None:
        self.stays = golden_stays("normal", 4, first_patient=first_patient)
        self.urls = urls
        self.answers: list[tuple[int, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=20) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                try:
                    r = client.post(
                        f"{self.urls[i % len(self.urls)]}/cds-services/sepsis-risk",
                        json=patient_view_request(self.stays[i % len(self.stays)]),
                    )
                    body = r.json()
                    self.answers.append(
                        (r.status_code, card_version(body)[0] if body.get("cards") else "none")
                    )
                except Exception as exc:  # recorded, asserted on by the test
                    self.failures.append(type(exc).__name__)

    def versions(self) -> set[str]:
        return {v for _, v in self.answers}

    def __enter__(self) -> HookHammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
