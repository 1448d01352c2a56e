"""JSON log lines without PHI: hook logs carry ids we mint, reason codes and counts only.

Other libraries log what they see, and what they see is PHI: httpx writes every request URL
(`GET .../Observation?patient=<EHR id>...`) at INFO, uvicorn's access log writes query strings,
and an exception's message or a warning's text may quote a value. So, for every record that
goes through `JsonFormatter`, whoever logged it:

- `httpx`, `httpcore` and `uvicorn.access` are held at WARNING (`QUIET_LOGGERS`), and Python
  warnings go through logging (`logging.captureWarnings`);
- the message is scrubbed (`scrub_message`): a URL keeps only its scheme, host and port; a FHIR
  `Type/id` keeps its type; bearer tokens and JWTs go; a warning keeps its category and location;
- a traceback is reduced to the exception's type (`error`): never its message or frames' values.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

__all__ = [
    "QUIET_LOGGERS",
    "JsonFormatter",
    "configure_logging",
    "log_event",
    "logging_config",
    "scrub_message",
]

# Libraries whose INFO lines quote request URLs or paths with query strings.
QUIET_LOGGERS = ("httpx", "httpcore", "uvicorn.access", "hpack")

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#'\"<>]+)[^\s'\"<>]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_SECRET = re.compile(
    r"(?i)\b(access_token|id_token|refresh_token|token|authorization|password|secret)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_QUERY = re.compile(r"\?[^\s'\"<>]+")
_FHIR_REF = re.compile(
    r"\b(Patient|Encounter|Observation|Practitioner|PractitionerRole|RelatedPerson|Location|Condition|"
    r"MedicationRequest|Procedure|Consent|Person|Organization)/[A-Za-z0-9\-.]{1,64}"
)
_WARNING = re.compile(r"^(?P<where>\S+?:\d+): (?P<category>\w+)")


def scrub_message(message: str, logger: str = "") -> str:
    """`message` without URLs' paths and queries, FHIR ids, tokens; a warning: where and what kind."""
    if logger == "py.warnings":
        found = _WARNING.match(message)
        return f"{found['where']}: {found['category']}" if found else "warning"
    text = _JWT.sub("<jwt>", message)
    text = _BEARER.sub(lambda m: f"{m[1]} <redacted>", text)
    text = _SECRET.sub(lambda m: f"{m[1]}{m[2]}<redacted>", text)
    text = _URL.sub(lambda m: f"{m[1]}/<path>", text)
    text = _QUERY.sub("?<query>", text)
    return _FHIR_REF.sub(lambda m: f"{m[1]}/<id>", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: its arguments are not written
            message = str(record.msg)
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub_message(message, record.name),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            payload.update(event)
        if record.exc_info and record.exc_info[0] is not None:
            payload["error"] = record.exc_info[0].__name__
        return json.dumps(payload, default=str)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """The same setup as a `logging.config.dictConfig` value: uvicorn applies it in each worker
    process of `cds serve --workers N`, which start with no handlers of their own."""
    logging.captureWarnings(True)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"level": "WARNING"} for name in QUIET_LOGGERS},
    }


def quiet_libraries() -> None:
    """Hold the URL-quoting libraries at WARNING, whatever handler a process installed."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_libraries()
    logging.captureWarnings(True)


def log_event(logger: logging.Logger, message: str, **event: Any) -> None:
    logger.info(message, extra={"event": {"t": time.time(), **event}})
