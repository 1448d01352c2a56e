"""FHIR REST requests as values: a read (`Type/id`) or a search (`Type?name=value&...`), built
only from validated parts, and the one place their relative URL is written.

Ids come from the EHR's hook context (`patientId`, `encounterId`, `userId`) and from references
inside resources; either may be hostile. A FHIR id is `[A-Za-z0-9\\-\\.]{1,64}` (R4 `id`), and we
also refuse the dot segments `.` and `..`, which URL normalisation turns into other paths
(`Patient/.` is the Patient search, `Encounter/../../admin` another endpoint of the EHR). Search
values are percent-encoded, so a value can never add a parameter or a header line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import InvalidIdError

__all__ = ["FhirQuery", "is_fhir_id", "is_resource_type", "reference_parts"]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]{0,63}")
_SAFE = "-._~:|,/"  # unreserved, FHIR search separators (`system|code`, `a,b`), `/` (harmless in a query)


def is_fhir_id(value: Any) -> bool:
    """A FHIR logical id that is safe as one URL path segment."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None and value not in (".", "..")


def is_resource_type(value: Any) -> bool:
    return isinstance(value, str) and _TYPE.fullmatch(value) is not None


def reference_parts(value: Any) -> tuple[str, str] | None:
    """`Practitioner/123` -> ("Practitioner", "123"); None unless both parts are valid."""
    if not isinstance(value, str):
        return None
    kind, sep, rid = value.partition("/")
    if not sep or not is_resource_type(kind) or not is_fhir_id(rid):
        return None
    return kind, rid


@dataclass(frozen=True, slots=True)
class FhirQuery:
    """A read when `id` is set, else a search with `params` (in order, repeats allowed)."""

    resource_type: str
    id: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not is_resource_type(self.resource_type):
            raise InvalidIdError("is not a FHIR resource type", path="query.resourceType")
        if self.id is not None and not is_fhir_id(self.id):
            raise InvalidIdError("is not a valid FHIR id", path=f"{self.resource_type}.id")
        if self.id is not None and self.params:
            raise InvalidIdError("a read takes no search parameters", path=self.resource_type)
        for name, value in self.params:
            if not _PARAM.fullmatch(name) or not isinstance(value, str):
                raise InvalidIdError("is not a valid search parameter", path=f"{self.resource_type}?")

    @classmethod
    def read(cls, resource_type: str, resource_id: Any) -> FhirQuery:
        """Raises InvalidIdError for an id that is not a FHIR id (never echoed)."""
        if not is_fhir_id(resource_id):
            raise InvalidIdError("is not a valid FHIR id", path=f"{resource_type}.id")
        return cls(resource_type, resource_id)

    @classmethod
    def search(cls, resource_type: str, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> FhirQuery:
        items = params.items() if isinstance(params, Mapping) else params
        return cls(resource_type, None, tuple(items))

    @property
    def is_search(self) -> bool:
        return self.id is None

    def relative_url(self) -> str:
        """`Type/id` or `Type?name=value&...`, every value percent-encoded."""
        if self.id is not None:
            return f"{self.resource_type}/{self.id}"
        if not self.params:
            return self.resource_type
        query = "&".join(f"{name}={quote(value, safe=_SAFE)}" for name, value in self.params)
        return f"{self.resource_type}?{query}"

    def __str__(self) -> str:
        return self.relative_url()
