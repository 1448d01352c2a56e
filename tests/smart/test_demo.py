"""The click-through demo (scripts/demo): started as a newcomer starts it, it reaches a card in
the demo EHR's page and the explanation app behind the card's SMART link, with authentication on."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo_ehr import free_port
from tests.conftest import unavailable
from tests.smart.launcher import follow, missing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, float]]:
    """(EHR page URL, CDS URL, seconds from start to ready)."""
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
        yield f"http://127.0.0.1:{ehr_port}", f"http://127.0.0.1:{cds_port}", time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_demo_reaches_a_card_and_the_app_with_authentication_on(demo: tuple[str, str, float]) -> None:
    ehr, cds, ready_s = demo
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
