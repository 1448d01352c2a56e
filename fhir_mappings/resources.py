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
    "element",
    "ensure_resource",
    "objects",
    "parse_date",
    "parse_datetime",
    "parse_reference",
    "reference_id",
    "resolve_reference",
    "string",
    "subject_mismatch",
]

_DATETIME = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,
)
# A date, or the date part of a dateTime (some EHRs send one in birthDate).
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T.*)?", re.ASCII | re.DOTALL)


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
    m = _DATETIME.fullmatch(text)
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
            int(m["f"][1:7].ljust(6, "0")) if m["f"] else 0,  # FHIR allows more digits than microseconds
            tzinfo=UTC,
        )
        tz = m["tz"]
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    except (ValueError, OverflowError) as exc:  # OverflowError: a zone offset past year 1 or 9999
        raise InvalidResourceError("is not a valid calendar date", path=path) from exc
    return dt


def parse_date(text: Any, path: str) -> date:
    """A FHIR date; a partial date (year or year-month) is taken at its middle."""
    if not isinstance(text, str):
        raise InvalidResourceError("is not a date string", path=path)
    m = _DATE.fullmatch(text)
    if not m:
        raise InvalidResourceError("is not a valid date", path=path)
    year, month, day = m.groups()
    try:
        if month is None:
            return date(int(year), 7, 1)
        if day is None:
            return date(int(year), int(month), 15)
        return date(int(year), int(month), int(day))
    except ValueError as exc:
        raise InvalidResourceError("is not a valid date", path=path) from exc


def parse_reference(reference: Any) -> tuple[str, str] | None:
    """(type, id) of a Reference: `Patient/123`, `https://ehr/fhir/Patient/123` and
    `Patient/123/_history/2` -> ("Patient", "123"); `#loc` (a contained resource) -> ("#", "loc").

    None for what names no resource we could look up: no reference, a non-string, `urn:uuid:...`,
    a conditional reference (`Patient?identifier=...`).
    """
    if not isinstance(reference, Mapping):
        return None
    ref = reference.get("reference")
    if not isinstance(ref, str) or not ref or "?" in ref:
        return None
    if ref[0] == "#":
        return ("#", ref[1:]) if len(ref) > 1 else None
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return None


def reference_id(reference: Any, resource_type: str) -> str | None:
    """`Patient/123`, `https://ehr/fhir/Patient/123` or `Patient/123/_history/2` -> `123`."""
    parsed = parse_reference(reference)
    return parsed[1] if parsed is not None and parsed[0] == resource_type else None


def objects(resource: Any, key: str) -> list[Mapping[str, Any]]:
    """The objects of a JSON array field; a field of any other JSON type gives none."""
    value = resource.get(key) if isinstance(resource, Mapping) else None
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def element(resource: Any, key: str) -> Mapping[str, Any]:
    """An object field (a period, a reference), or an empty one when it is absent or not an object."""
    value = resource.get(key) if isinstance(resource, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def string(resource: Any, key: str) -> str | None:
    """A string field, or None when it is absent or of another JSON type."""
    value = resource.get(key) if isinstance(resource, Mapping) else None
    return value if isinstance(value, str) else None


def resolve_reference(
    reference: Any,
    resource_type: str,
    container: Mapping[str, Any] | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> Mapping[str, Any] | None:
    """The resource a Reference points to: one `contained` in `container` (`#id`), else one of
    `known` (by id, whatever the server base or version in the reference); None if neither."""
    parsed = parse_reference(reference)
    if parsed is None:
        return None
    kind, rid = parsed
    if kind == "#":
        for found in objects(container, "contained"):
            if found.get("resourceType") == resource_type and found.get("id") == rid:
                return found
        return None
    if kind != resource_type or known is None:
        return None
    return known.get(rid)


def subject_mismatch(resource: Mapping[str, Any], patient_id: str, key: str = "subject") -> str | None:
    """Why a resource is not this patient's (a skip reason), or None when it may be.

    An absent subject, one given only by identifier or display, or one we cannot resolve
    (`urn:uuid:`, contained) does not count against it: it came from a search by patient. One that
    names another Patient, or another kind of subject (a Group, a Device), does; a subject that is
    not a Reference object at all is malformed.
    """
    subject = resource.get(key)
    if subject is None:
        return None
    if not isinstance(subject, Mapping):
        return "malformed-subject"
    ref = subject.get("reference")
    if ref is None:
        return None
    if not isinstance(ref, str):
        return "malformed-subject"
    parsed = parse_reference(subject)
    if parsed is None or parsed[0] == "#":
        return None
    return None if parsed == ("Patient", patient_id) else "other-patient"


def codings(concept: Any) -> Iterator[tuple[str, str]]:
    for coding in objects(concept, "coding"):
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            yield system, code


def categories(resource: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for concept in objects(resource, "category"):
        found.update(code for _, code in codings(concept))
    return frozenset(found)
