"""A real browser (Debian's chromium, headless, driven by Selenium) launches the app from a card
the way an EHR shows it, walks the OAuth flow through SMART's reference launcher, reads the
page, sends feedback, and does it again inside an iframe of a page from another loopback origin.
Screenshots are saved under a temporary directory (or $CDS_SCREENSHOT_DIR)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from html import escape
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from demo_ehr import LoopbackServer, StayResources, free_port, serve_in_thread
from testkit.helpers import serve_cds
from tests.conftest import unavailable
from tests.smart.conftest import ClientKey, Running, issue_card, smart_settings
from tests.smart.launcher import Launcher, launch_code
from tests.smart.test_launch import provenances

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CDS_SCREENSHOT_DIR")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e .[test])")
    if not (CHROMIUM.exists() and DRIVER.exists()):
        unavailable("chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def ehr_page(request: Request) -> HTMLResponse:
    """The test EHR's patient page: the card as an EHR renders it, and its SMART link."""
    card = request.app.state.card
    url = escape(request.app.state.launch_url)
    body = (
        "<h1>Demo EHR</h1><article "
        f'id="card"><h2>{escape(card["summary"])}</h2><p>{escape(card["indicator"])}</p>'
        f'<a id="smart-link" href="{url}">{escape(card["links"][0]["label"])}</a></article>'
    )
    if request.query_params.get("frame"):
        body = (
            f'<h1>Demo EHR</h1><iframe id="app" src="{url}" width="800" height="760" '
            'title="explanation app"></iframe>'
        )
    return HTMLResponse(f"<!doctype html><html><body>{body}</body></html>")


@pytest.fixture(scope="module")
def ehr_host() -> Iterator[tuple[LoopbackServer, int]]:
    """The EHR's web page, on its own port, reached as http://localhost:<port>: another origin
    than our server's http://127.0.0.1:<port>."""
    app = Starlette(routes=[Route("/", ehr_page)])
    port = free_port()
    with serve_in_thread(app, port=port) as server:
        yield server, port


@pytest.fixture(scope="module")
def running_framed(
    tmp_path_factory: pytest.TempPathFactory,
    launcher: Launcher,
    stay: StayResources,
    client_key: ClientKey,
    stranger_jwks: str,
    ehr_host: tuple[LoopbackServer, int],
) -> Iterator[Running]:
    origin = f"http://localhost:{ehr_host[1]}"
    settings = smart_settings(
        tmp_path_factory.mktemp("smart"), launcher, stay, client_key, stranger_jwks, frame_origins=(origin,)
    )
    with serve_cds(settings) as server:
        card = issue_card(server, stay, launcher.iss)
        link = next(link for link in card["links"] if link["type"] == "smart")
        code = launch_code(patient=stay.patient_id, provider="dr-1", encounter=str(stay.encounter["id"]))
        ehr_host[0].server.config.app.state.card = card
        ehr_host[0].server.config.app.state.launch_url = f"{link['url']}&launch={code}&iss={launcher.iss}"
        yield Running(server, settings, card)


def wait_for(driver: object, css: str, timeout_s: float = 30.0) -> object:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def images_loaded(driver: object) -> list[tuple[str, int]]:
    return driver.execute_script(  # type: ignore[attr-defined,no-any-return]
        "return Array.from(document.images).map(i => [i.getAttribute('src').split('/').pop(), "
        "i.naturalWidth])"
    )


def check_page_and_send_feedback(driver: object, running: Running, screenshot: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait_for(driver, "#feedback")
    risk = running.card["extension"]["org.cds-ml.risk"]
    text = driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    assert f"{100 * risk['probability']:.1f} %" in text and f"{risk['band']} risk" in text
    assert "What drives this score" in text and "Risk over the stay" in text and "About the model" in text
    deadline = time.monotonic() + 20
    while (
        (loaded := dict(images_loaded(driver))) and not all(loaded.values()) and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert loaded.get("waterfall.svg", 0) > 0 and loaded.get("trend.svg", 0) > 0, loaded
    # The page's weight and render time as the browser measured them (an artifact beside the
    # screenshots for docs/smart.md; never asserted on).
    timing = driver.execute_script(  # type: ignore[attr-defined]
        "const n = performance.getEntriesByType('navigation')[0];"
        "const r = performance.getEntriesByType('resource');"
        "return {html_bytes: n.encodedBodySize, responseEnd_ms: n.responseEnd - n.requestStart,"
        " dom_content_loaded_ms: n.domContentLoadedEventEnd - n.requestStart,"
        " load_ms: n.loadEventEnd - n.requestStart,"
        " resources: r.map(e => [e.name.split('/').pop(), e.encodedBodySize, e.duration])};"
    )
    screenshot.with_name(screenshot.stem + "-timing.json").write_text(json.dumps(timing, indent=1))
    driver.save_screenshot(str(screenshot))  # type: ignore[attr-defined]
    if driver.execute_script("return window.top === window.self"):  # type: ignore[attr-defined]
        height = driver.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
        driver.set_window_size(1280, height + 120)  # type: ignore[attr-defined]
        driver.save_screenshot(str(screenshot.with_name(screenshot.stem + "-full.png")))  # type: ignore[attr-defined]
        driver.set_window_size(1280, 800)  # type: ignore[attr-defined]
    # keyboard only: focus the second override reason, select it, type a comment, submit with Enter
    choice = driver.find_element(By.CSS_SELECTOR, 'input[value="override:1"]')  # type: ignore[attr-defined]
    choice.send_keys(Keys.SPACE)
    assert choice.is_selected()
    comment = driver.find_element(By.ID, "comment")  # type: ignore[attr-defined]
    comment.send_keys("fits pneumonia better")
    comment.send_keys(Keys.TAB, Keys.ENTER)  # tab to the submit button, press it
    status = wait_for(driver, ".recorded")
    assert "Recorded: overridden" in status.text  # type: ignore[attr-defined]
    driver.save_screenshot(str(screenshot.with_name(screenshot.stem + "-recorded.png")))  # type: ignore[attr-defined]
    found = [
        p
        for p in provenances(running)
        if p["target"][0]["reference"] == f"RiskAssessment/{running.card['uuid']}"
    ]
    assert found and found[0]["reason"][0]["coding"][0]["code"] == "recipient-disagrees-evidence"


def test_a_clinician_launches_the_app_from_a_card(
    driver: object, running_framed: Running, ehr_host: tuple[LoopbackServer, int], screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"http://localhost:{ehr_host[1]}/")  # type: ignore[attr-defined]
    driver.save_screenshot(str(screenshots / "ehr-card.png"))  # type: ignore[attr-defined]
    driver.find_element(By.ID, "smart-link").click()  # type: ignore[attr-defined]
    check_page_and_send_feedback(driver, running_framed, screenshots / "app-1280.png")
    assert driver.current_url.startswith(f"{running_framed.server.url}/smart/app/")  # type: ignore[attr-defined]
    # readable at 800 px: nothing wider than the window
    driver.set_window_size(800, 800)  # type: ignore[attr-defined]
    width = driver.execute_script("return document.documentElement.scrollWidth")  # type: ignore[attr-defined]
    assert width <= 800
    driver.save_screenshot(str(screenshots / "app-800.png"))  # type: ignore[attr-defined]
    driver.set_window_size(1280, 800)  # type: ignore[attr-defined]


def test_the_app_works_inside_an_ehr_iframe_from_another_origin(
    driver: object,
    running_framed: Running,
    ehr_host: tuple[LoopbackServer, int],
    screenshots: Path,
    stay: StayResources,
    launcher: Launcher,
) -> None:
    card = issue_card(
        running_framed.server, stay, launcher.iss
    )  # a card of its own: its Provenance is this test's
    state = ehr_host[0].server.config.app.state
    state.launch_url = state.launch_url.replace(running_framed.card["uuid"], card["uuid"])
    running_framed = Running(running_framed.server, running_framed.settings, card)
    driver.get(f"http://localhost:{ehr_host[1]}/?frame=1")  # type: ignore[attr-defined]
    frame = wait_for(driver, "iframe#app")
    driver.switch_to.frame(frame)  # type: ignore[attr-defined]
    try:
        check_page_and_send_feedback(driver, running_framed, screenshots / "app-in-iframe-content.png")
    finally:
        driver.switch_to.default_content()  # type: ignore[attr-defined]
    driver.save_screenshot(str(screenshots / "app-in-iframe.png"))  # type: ignore[attr-defined]
