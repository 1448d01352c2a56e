"""HTTP-facing errors, and the one table that turns any CDSError into a status code.

    CDSError (fhir_mappings.errors)
    ├── MappingError ...................... 422  (NotFHIRError, InvalidResourceError, UnitError)
    ├── ModelError (models.errors) ........ 503  model missing or unusable
    ├── BadRequest ........................ 400  malformed JSON or a body that breaks the spec
    ├── Unauthorized ...................... 401  (never with detail)
    ├── ServiceNotFound ................... 404
    ├── UnknownCard ....................... 404  feedback for a card we never issued
    ├── PreconditionFailed ................ 412  required data could not be obtained
    ├── FHIRServerError ................... 412  the EHR's FHIR server failed (status, transport, paging)
    │   └── FHIRTimeout ................... the EHR was too slow for the hook's budget
    └── StoreError ........................ 503  the record store failed
        └── StoreUnavailable .............. 503  PostgreSQL down or too slow; retry_after_s says when to retry
"""

from __future__ import annotations

from fhir_mappings.errors import CDSError, InvalidResourceError, MappingError, NotFHIRError, UnitError
from models.errors import FeatureSchemaMismatch, ModelError, ModelNotFound

__all__ = [
    "BadRequest",
    "CDSError",
    "FHIRServerError",
    "FHIRTimeout",
    "FeatureSchemaMismatch",
    "InvalidResourceError",
    "MappingError",
    "ModelError",
    "ModelNotFound",
    "NotFHIRError",
    "PreconditionFailed",
    "ServiceNotFound",
    "StoreError",
    "StoreUnavailable",
    "Unauthorized",
    "UnitError",
    "UnknownCard",
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


class FHIRTimeout(FHIRServerError):
    code = "fhir-timeout"


class StoreError(CDSError):
    code = "store-error"
    retry_after_s: float | None = None  # a hint for Retry-After when the failure is expected to pass


class StoreUnavailable(StoreError):
    """The database is down, frozen or too slow for the call's budget: the same call may succeed later."""

    code = "store-unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


_STATUS: dict[type[CDSError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    ServiceNotFound: 404,
    UnknownCard: 404,
    PreconditionFailed: 412,
    FHIRServerError: 412,
    MappingError: 422,
    ModelError: 503,
    StoreError: 503,
    CDSError: 500,
}


def status_for(error: CDSError) -> int:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]  # type: ignore[index]
    return 500
