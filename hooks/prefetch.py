"""Prefetch templates: render CDS Hooks 2.0 tokens from the hook context into FHIR queries.

Only the tokens 2.0 defines: `{{context.<field>}}` for primitive context fields, and the user
tokens `{{userPractitionerId}}`, `{{userPractitionerRoleId}}`, `{{userPatientId}}`,
`{{userRelatedPersonId}}` derived from `context.userId`. A template with a token the context
has no value for renders to None (the EHR would skip it; we skip it too). A value that is not a
FHIR id (`../admin`, `p1?_id=x&`, `.`, CR/LF, a list) raises InvalidIdError: it never reaches a
URL. `context_ids` checks the same rule for every id a hook context carries, up front.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from fhir_mappings import FhirQuery, InvalidIdError, is_fhir_id, reference_parts

__all__ = ["CONTEXT_IDS", "check_context_ids", "render_template", "template_tokens"]

_TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
# Hook context fields that hold a FHIR id (`userId`: a `Type/id` reference), in the hooks we answer.
CONTEXT_IDS = ("patientId", "encounterId")
CONTEXT_REFERENCES = ("userId",)


def template_tokens(template: str) -> list[str]:
    return _TOKEN.findall(template)


def check_context_ids(context: Mapping[str, Any], fields: Iterable[str] = ()) -> None:
    """Every id-valued context field that is present must be a FHIR id (`userId`: `Type/id`);
    `fields` adds the ones a service's templates use. InvalidIdError names the field only."""
    for name in dict.fromkeys((*CONTEXT_IDS, *fields)):
        if name in CONTEXT_REFERENCES:
            continue
        value = context.get(name)
        if value is not None and not is_fhir_id(value):
            raise InvalidIdError("is not a valid FHIR id", path=f"context.{name}")
    for name in CONTEXT_REFERENCES:
        value = context.get(name)
        if value is not None and reference_parts(value) is None:
            raise InvalidIdError("is not a FHIR reference of the form Type/id", path=f"context.{name}")


def _resolve(token: str, context: Mapping[str, Any]) -> str | None:
    if token.startswith("context."):
        name = token.removeprefix("context.")
        value = context.get(name)
        if value is None or value == "":
            return None
        if not is_fhir_id(value):
            raise InvalidIdError("is not a valid FHIR id", path=f"context.{name}")
        return str(value)
    if token in _USER_TOKENS:
        user = context.get("userId")
        if user is None or user == "":
            return None
        parts = reference_parts(user)
        if parts is None:
            raise InvalidIdError("is not a FHIR reference of the form Type/id", path="context.userId")
        return parts[1] if parts[0] == _USER_TOKENS[token] else None
    return None


def _substitute(text: str, context: Mapping[str, Any]) -> str | None:
    missing = False

    def one(match: re.Match[str]) -> str:
        nonlocal missing
        value = _resolve(match.group(1), context)
        if value is None:
            missing = True
            return ""
        return value

    rendered = _TOKEN.sub(one, text)
    return None if missing else rendered


def render_template(template: str, context: Mapping[str, Any]) -> FhirQuery | None:
    """`Type/{{context.x}}` -> a read; `Type?a={{context.x}}&b=c` -> a search (values encoded
    when the URL is written, by FhirQuery)."""
    path, sep, query = template.partition("?")
    if not sep:
        kind, slash, rid = path.partition("/")
        if not slash:
            return FhirQuery(kind)
        value = _substitute(rid, context)
        return None if value is None else FhirQuery.read(kind, value)
    params: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, raw = part.partition("=")
        value = _substitute(raw, context)
        if value is None:
            return None
        params.append((name, value))
    return FhirQuery.search(path, params)
