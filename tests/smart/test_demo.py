"""The click-through demo (scripts/demo): started as a newcomer starts it, it reaches a card in
the demo EHR's page and the explanation app behind the card's SMART link, with authentication on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo_ehr import free_port
from tests.conftest import unavailable
from tests.smart.launcher import follow, missing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, float, Path]]:
    """(EHR page URL, CDS URL, seconds from start to ready, the demo's var directory)."""
    if problem := missing():
        unavailable(problem)
    tmp = tmp_path_factory.mktemp("demo")
    cds_port, ehr_port = free_port(), free_port()
    log = tmp / "demo.log"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "scripts/demo.py",
                "--port",
                str(cds_port),
                "--ehr-port",
                str(ehr_port),
                "--var-dir",
                str(tmp / "var"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while b"Demo EHR:" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        ready = time.monotonic() - started
        yield f"http://127.0.0.1:{ehr_port}", f"http://127.0.0.1:{cds_port}", ready, tmp / "var"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_demo_reaches_a_card_and_the_app_with_authentication_on(
    demo: tuple[str, str, float, Path],
) -> None:
    ehr, cds, ready_s, _ = demo
    with httpx.Client(timeout=60) as browser:
        assert httpx.get(f"{cds}/cds-services").status_code == 401  # no JWT, no answer: secure as ever
        index = browser.get(f"{ehr}/")
        assert index.status_code == 200
        worsening = re.search(r'href="(/patient/\d+)">Synthetic patient: worsening', index.text)
        assert worsening, index.text
        chart = browser.get(f"{ehr}{worsening.group(1)}")
        assert chart.status_code == 200 and 'class="card' in chart.text, chart.text
        link = re.search(r'id="smart-link" href="([^"]+)"', chart.text)
        assert link, chart.text
        app = follow(browser, link.group(1).replace("&amp;", "&")).last
        assert app.status_code == 200, app.text
        assert "What drives this score" in app.text and "Risk over the stay" in app.text
    print(f"demo ready in {ready_s:.1f} s")


def _provenances(var_dir: Path, out: Path) -> list[dict[str, Any]]:
    """The feedback Provenances as `cds feedback export` writes them from the demo's store."""
    env = {**os.environ, "CDS_VAR_DIR": str(var_dir)}
    subprocess.run(
        [sys.executable, "-m", "cds.cli", "feedback", "export", "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    path = out / "Provenance.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_newcomer_sees_a_readmission_card_and_the_ehr_page_sends_feedback(
    demo: tuple[str, str, float, Path], tmp_path: Path
) -> None:
    ehr, _, _, var_dir = demo
    with httpx.Client(timeout=60) as browser:
        index = browser.get(f"{ehr}/")
        assert "<h1>Discharges</h1>" in index.text, index.text
        discharge = re.search(
            r'href="(/patient/\d+)">(Diabetes 130-US discharge|Hand-made discharge)', index.text
        )
        assert discharge, index.text
        chart = browser.get(f"{ehr}{discharge.group(1)}")
        assert "30-day readmission risk" in chart.text and "What drives this score" in chart.text, chart.text
        link = re.search(r'id="smart-link" href="([^"]+)"', chart.text)
        assert link, chart.text  # the app opens from this card too
        app = follow(browser, link.group(1).replace("&amp;", "&")).last
        assert app.status_code == 200 and "What drives this score" in app.text, app.text
        assert "scores once, at discharge" in app.text and "PPV" in app.text
        card = re.search(r'name="card" value="([0-9a-f-]{36})"', chart.text)
        assert card, chart.text
        # The clinician overrides with the card's second reason; the EHR sends CDS Hooks feedback.
        sent = browser.post(
            f"{ehr}{discharge.group(1)}/feedback",
            data={"card": card.group(1), "decision": "override:1", "comment": "follow-up booked by the GP"},
        )
        assert "Feedback recorded by the CDS service (overridden)." in sent.text, sent.text
        wrong = browser.post(
            f"{ehr}{discharge.group(1)}/feedback", data={"card": card.group(1), "decision": "x"}
        )
        assert "Choose one of the card" in wrong.text
    found = [
        p
        for p in _provenances(var_dir, tmp_path)
        if p["target"][0]["reference"] == f"RiskAssessment/{card.group(1)}"
    ]
    assert len(found) == 1 and found[0]["reason"][0]["coding"][0]["code"] == "action-completed"
