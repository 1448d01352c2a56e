"""The answers we send that are not cards: JSON bodies (orjson), OperationOutcomes, the bare 401."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["UNAUTHORIZED_BODY", "json_response", "operation_outcome", "unauthorized"]

FHIR_JSON = "application/fhir+json"

# The one answer to every authentication failure: no detail (CDS Hooks best practices).
UNAUTHORIZED_BODY = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}

_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    404: "not-found",
    405: "not-supported",
    408: "timeout",
    412: "incomplete",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    503: "transient",
}


def json_response(
    body: Any,
    status: int = 200,
    *,
    media_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type=media_type, headers=dict(headers or {})
    )


def operation_outcome(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> Response:
    """`code`: our stable reason code; `message`: words for the EHR's logs (never PHI)."""
    issue = {
        "severity": "error",
        "code": _ISSUE_CODE.get(status, "exception"),
        "details": {"text": code},
        "diagnostics": message,
    }
    return json_response(
        {"resourceType": "OperationOutcome", "issue": [issue]}, status, media_type=FHIR_JSON, headers=headers
    )


def unauthorized() -> Response:
    return json_response(UNAUTHORIZED_BODY, 401, media_type=FHIR_JSON, headers={"WWW-Authenticate": "Bearer"})
