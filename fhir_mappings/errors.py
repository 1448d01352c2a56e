"""The root of the project's one error tree, and the mapping layer's branch of it.

    CDSError                      every error we raise on purpose (code: a stable string)
    ├── InvalidIdError            an id that is not a FHIR id (a hostile context token or reference)
    ├── MappingError              FHIR or tabular input we cannot turn into a canonical table
    │   ├── NotFHIRError          a value that is not a FHIR resource at all
    │   ├── InvalidResourceError  a FHIR resource missing or misusing a field we need
    │   │   └── StayError         an Encounter that gives no usable ICU clock (none, implausible)
    │   └── UnitError             a quantity whose unit we cannot convert to the canonical one
    ├── models.ModelError         (models/errors.py) artifacts, registry, schema mismatch
    └── cds.* errors              (cds/errors.py) HTTP-facing: auth, unknown service, EHR failures

Lower layers know nothing of HTTP; `cds/errors.py` maps each class to a status code in one place.
Messages never contain PHI: they name resource types, field paths and codes, never values of
identifiers, names or free text.
"""

from __future__ import annotations

__all__ = [
    "CDSError",
    "InvalidIdError",
    "InvalidResourceError",
    "MappingError",
    "NotFHIRError",
    "StayError",
    "UnitError",
]


class CDSError(Exception):
    """Base of every error the project raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class InvalidIdError(CDSError):
    """A resource id or reference that is not a FHIR id: never put into a URL, never echoed."""

    code = "invalid-id"


class MappingError(CDSError):
    """Input that cannot be mapped to the canonical table."""

    code = "mapping-error"


class NotFHIRError(MappingError):
    """A value that is not a FHIR resource (no object, no resourceType)."""

    code = "not-fhir"


class InvalidResourceError(MappingError):
    """A FHIR resource that lacks, or misuses, a field we need."""

    code = "invalid-resource"


class StayError(InvalidResourceError):
    """The stay in context gives no ICU clock we can score on: no ICU location and no start
    (an ongoing outpatient visit), or a clock longer than any stay the model was trained on.
    `reason` is a stable code for logs and the hook outcome; a service answers no card."""

    code = "no-usable-stay"

    def __init__(self, message: str, *, reason: str, path: str | None = "Encounter") -> None:
        self.reason = reason
        super().__init__(message, path=path)


class UnitError(MappingError):
    """A quantity whose unit cannot be converted to its variable's canonical unit."""

    code = "unit-not-convertible"
