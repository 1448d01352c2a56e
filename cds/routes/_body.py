from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest

M = TypeVar("M", bound=BaseModel)


def describe_validation(error: ValidationError) -> str:
    """Where and what, never the offending value (it may be PHI)."""
    parts = []
    for err in error.errors()[:5]:
        location = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{location or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def parse_body(request: Request, model: type[M]) -> M:
    """Any JSON media type is accepted (EHRs differ); the body must be a JSON object."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc)) from exc
