"""Third-party log lines through our formatter: real httpx requests to a loopback FHIR server,
uvicorn's access-log format, warnings and exceptions carry no EHR id, token or query string."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import httpx
import pytest

from cds.logs import QUIET_LOGGERS, JsonFormatter, configure_logging, scrub_message
from demo_ehr import DemoFhirServer, serve_in_thread

PID = "CANARY-LOG-PID-5521"
TOKEN = "CANARYTOKEN-ab12cd34ef56"
JWT = "eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJDQU5BUlkifQ.c2lnbmF0dXJl"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG, formatted as `cds serve` formats it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old = root.level, list(root.handlers)
    configure_logging("DEBUG")
    root.handlers[:] = [handler]
    try:
        yield out
    finally:
        root.setLevel(old[0])
        root.handlers[:] = old[1]
        logging.captureWarnings(False)


def test_httpx_request_lines_never_reach_the_log(captured: io.StringIO) -> None:
    ehr = DemoFhirServer(token=TOKEN)
    with serve_in_thread(ehr.app()) as server:
        httpx.get(
            f"{server.url}/Observation?patient={PID}&category=vital-signs",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        logging.getLogger("httpx").setLevel(logging.INFO)  # a site that turns it back on
        try:
            httpx.get(f"{server.url}/Patient/{PID}", headers={"Authorization": f"Bearer {TOKEN}"})
        finally:
            logging.getLogger("httpx").setLevel(logging.WARNING)
    text = captured.getvalue()
    assert "HTTP Request" in text  # the re-enabled line was written, scrubbed
    assert PID not in text and TOKEN not in text and "vital-signs" not in text
    assert all(logging.getLogger(name).level == logging.WARNING for name in QUIET_LOGGERS)


def test_access_log_warnings_and_exceptions_are_scrubbed(captured: io.StringIO) -> None:
    access = logging.getLogger("uvicorn.access")
    access.setLevel(
        logging.INFO
    )  # a site that turns uvicorn's access log on (uvicorn stops its propagation when off)
    access.propagate = True
    try:
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5",
            "GET",
            f"/cds-services?patient={PID}&access_token={TOKEN}",
            "1.1",
            200,
        )
    finally:
        access.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"could not parse value for Patient/{PID}", UserWarning, stacklevel=1)
    try:
        raise ValueError(f"bad token {JWT} for {PID}")
    except ValueError:
        logging.getLogger("some.library").exception(
            "failed for Patient/%s with Authorization: Bearer %s", PID, TOKEN
        )
    text = captured.getvalue()
    assert "UserWarning" in text and "ValueError" in text and "/cds-services?<query>" in text
    for canary in (PID, TOKEN, JWT):
        assert canary not in text


@pytest.mark.parametrize(
    ("message", "kept", "gone"),
    [
        (
            "GET https://ehr.example.org/fhir/Observation?patient=p1&x=2 200",
            "https://ehr.example.org/<path>",
            "patient=p1",
        ),
        ("read Encounter/enc-77.a done", "Encounter/<id>", "enc-77.a"),
        ("header authorization=Bearer abcdefgh12345678", "authorization=<redacted>", "abcdefgh12345678"),
        ("the access token was refused", "the access token was refused", "<redacted>"),
    ],
)
def test_scrub_message(message: str, kept: str, gone: str) -> None:
    scrubbed = scrub_message(message)
    assert kept in scrubbed and gone not in scrubbed
