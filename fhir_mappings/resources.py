"""Narrow, typed readers for the few FHIR R4 fields the mapping needs.

The hot path reads plain JSON dicts and checks each field it touches, instead of building full
pydantic models of every resource (see `validation.py` for full validation, which runs off the hot path).
Every problem names a dotted FHIR path and never the value itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .errors import InvalidResourceError, NotFHIRError

__all__ = [
    "categories",
    "codings",
    "ensure_resource",
    "parse_date",
    "parse_datetime",
    "reference_id",
]

_DATETIME = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def ensure_resource(value: Any, path: str, expected: str | None = None) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
        raise NotFHIRError("is not a FHIR resource (no resourceType)", path=path)
    if expected and value["resourceType"] != expected:
        raise InvalidResourceError(f"expected {expected}, got {value['resourceType']}", path=path)
    return value  # type: ignore[return-value]


def parse_datetime(text: Any, path: str) -> datetime:
    """A FHIR dateTime/instant as an aware UTC datetime; partial dates start at their first instant.

    A time without a zone is refused (FHIR requires one); a date without a time is taken as UTC.
    """
    if not isinstance(text, str):
        raise InvalidResourceError("is not a dateTime string", path=path)
    m = _DATETIME.match(text)
    if not m:
        raise InvalidResourceError("is not a valid FHIR dateTime", path=path)
    if m["H"] is not None and m["tz"] is None:
        raise InvalidResourceError("has a time but no time zone", path=path)
    try:
        dt = datetime(
            int(m["y"]),
            int(m["m"] or 1),
            int(m["d"] or 1),
            int(m["H"] or 0),
            int(m["M"] or 0),
            int(m["S"] or 0),
            int(round(float(m["f"]) * 1_000_000)) if m["f"] else 0,
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise InvalidResourceError("is not a valid calendar date", path=path) from exc
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return dt


def parse_date(text: Any, path: str) -> date:
    """A FHIR date; a partial date (year or year-month) is taken at its middle."""
    if not isinstance(text, str):
        raise InvalidResourceError("is not a date string", path=path)
    parts = text[:10].split("-")
    try:
        if len(parts) == 1:
            return date(int(parts[0]), 7, 1)
        if len(parts) == 2:
            return date(int(parts[0]), int(parts[1]), 15)
        return date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError as exc:
        raise InvalidResourceError("is not a valid date", path=path) from exc


def reference_id(reference: Any, resource_type: str) -> str | None:
    """`Patient/123`, `https://ehr/fhir/Patient/123` or `Patient/123/_history/2` -> `123`."""
    if not isinstance(reference, Mapping):
        return None
    ref = reference.get("reference")
    if not isinstance(ref, str):
        return None
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def codings(concept: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(concept, Mapping):
        return
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                yield system, code


def categories(resource: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for concept in resource.get("category") or ():
        found.update(code for _, code in codings(concept))
    return frozenset(found)
