"""Prefetch templates: render CDS Hooks 2.0 tokens from the hook context.

Only the tokens 2.0 defines: `{{context.<field>}}` for primitive context fields, and the user
tokens `{{userPractitionerId}}`, `{{userPractitionerRoleId}}`, `{{userPatientId}}`,
`{{userRelatedPersonId}}` derived from `context.userId`. A template with a token that cannot be
resolved renders to None (the EHR would skip it; we skip it too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["render_template", "template_tokens"]

_TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def template_tokens(template: str) -> list[str]:
    return _TOKEN.findall(template)


def _resolve(token: str, context: Mapping[str, Any]) -> str | None:
    if token.startswith("context."):
        value = context.get(token.removeprefix("context."))
        return value if isinstance(value, str) and value else None
    if token in _USER_TOKENS:
        user = context.get("userId")
        if isinstance(user, str) and user.startswith(_USER_TOKENS[token] + "/"):
            return user.split("/", 1)[1]
    return None


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    missing = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal missing
        value = _resolve(match.group(1), context)
        if value is None:
            missing = True
            return ""
        return quote(value, safe="-._~")

    rendered = _TOKEN.sub(substitute, template)
    return None if missing else rendered
