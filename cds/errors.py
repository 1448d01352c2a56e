"""HTTP-facing errors, and the one table that turns any CDSError into a status code.

CDSError (fhir_mappings.errors)
├── MappingError ...................... 422  (NotFHIRError, InvalidResourceError, UnitError)
├── ModelError (models.errors) ........ 503  model missing or unusable
├── InvalidIdError (fhir_mappings) .... 400  a context id that is not a FHIR id
├── BadRequest ........................ 400  malformed JSON or a body that breaks the spec
├── Unauthorized ...................... 401  (never with detail)
├── RequestTimeout .................... 408  the body did not arrive in time
├── PayloadTooLarge ................... 413  body, JSON depth or resource count over a limit
├── UnsupportedMediaType .............. 415  not a JSON media type, or a content encoding
├── ServiceNotFound ................... 404
├── UnknownCard ....................... 404  feedback for a card we never issued
├── PreconditionFailed ................ 412  required data could not be obtained
├── FHIRServerError ................... 412  the EHR's FHIR server failed (status, transport, paging)
│   └── FHIRUnavailable ............... refused, reset or too slow: a hook answers `{"cards": []}`
├── StoreError ........................ 503  the record store failed (with Retry-After)
│   └── StoreUnavailable .............. 503  PostgreSQL down or too slow; retry_after_s says when to retry
├── Overloaded ........................ 503  at capacity (with Retry-After; hooks answer `{"cards": []}`)
└── BudgetSpent ....................... the hook's time budget ran out (hooks answer `{"cards": []}`)
"""

from __future__ import annotations

from fhir_mappings.errors import (
    CDSError,
    InvalidIdError,
    InvalidResourceError,
    MappingError,
    NotFHIRError,
    UnitError,
)
from models.errors import FeatureSchemaMismatch, ModelError, ModelNotFound

__all__ = [
    "BadRequest",
    "BudgetSpent",
    "CDSError",
    "FHIRServerError",
    "FHIRUnavailable",
    "FeatureSchemaMismatch",
    "InvalidIdError",
    "InvalidResourceError",
    "MappingError",
    "ModelError",
    "ModelNotFound",
    "NotFHIRError",
    "Overloaded",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RequestTimeout",
    "ServiceNotFound",
    "StoreError",
    "StoreUnavailable",
    "Unauthorized",
    "UnitError",
    "UnknownCard",
    "UnsupportedMediaType",
    "status_for",
]


class BadRequest(CDSError):
    code = "bad-request"


class Unauthorized(CDSError):
    code = "unauthorized"


class ServiceNotFound(CDSError):
    code = "service-not-found"


class UnknownCard(CDSError):
    code = "unknown-card"


class PreconditionFailed(CDSError):
    code = "precondition-failed"


class FHIRServerError(CDSError):
    code = "fhir-server-error"


class FHIRUnavailable(FHIRServerError):
    """Any transport failure; one class so that no answer tells a closed port from a slow one
    (`kind`, "timeout" or "unreachable", is for our log only)."""

    code = "fhir-unavailable"

    def __init__(self, message: str, *, kind: str = "unreachable") -> None:
        super().__init__(message)
        self.kind = kind


class StoreError(CDSError):
    code = "store-error"
    retry_after_s: float | None = None  # a hint for Retry-After when the failure is expected to pass


class StoreUnavailable(StoreError):
    """The database is down, frozen or too slow for the call's budget: the same call may succeed later."""

    code = "store-unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(CDSError):
    code = "request-timeout"


class PayloadTooLarge(CDSError):
    code = "payload-too-large"


class UnsupportedMediaType(CDSError):
    code = "unsupported-media-type"


class Overloaded(CDSError):
    code = "overloaded"


class BudgetSpent(CDSError):
    code = "budget-spent"


_STATUS: dict[type[CDSError], int] = {
    InvalidIdError: 400,
    BadRequest: 400,
    Unauthorized: 401,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    ServiceNotFound: 404,
    UnknownCard: 404,
    PreconditionFailed: 412,
    FHIRServerError: 412,
    MappingError: 422,
    ModelError: 503,
    StoreError: 503,
    Overloaded: 503,
    BudgetSpent: 503,
    CDSError: 500,
}


def status_for(error: CDSError) -> int:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]  # type: ignore[index]
    return 500
