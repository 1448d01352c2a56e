"""JSON in: request bodies and EHR responses, read under limits and parsed without surprises.

- media type: only `application/json` and `application/*+json` (415 otherwise; a body must say
  what it is), and no `Content-Encoding` (we never inflate what a caller sends us);
- size: a `Content-Length` over the limit is refused before a byte is read, a chunked body as
  soon as it passes the limit (413);
- depth: nesting is measured on the raw bytes before parsing,
  so 100,000 nested arrays are a 413, not a RecursionError (a C-speed byte filter and a numpy
  scan: ~0.3 ms for a 300 kB prefetch);
- parsing: orjson, which refuses NaN/Infinity, numbers that overflow a double and invalid UTF-8.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "check_json_request",
    "describe_validation",
    "is_json_media_type",
    "json_depth",
    "parse_json",
    "parse_model",
    "read_body",
]

M = TypeVar("M", bound=BaseModel)

_QUOTE = ord('"')
_OPEN = ord("{")
_CLOSE = ord("}")


def is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def check_json_request(request: Request) -> None:
    if not is_json_media_type(request.headers.get("content-type")):
        raise UnsupportedMediaType(
            "the body must be JSON (Content-Type application/json or application/fhir+json)"
        )
    encoding = request.headers.get("content-encoding")
    if encoding and encoding.strip().lower() != "identity":
        raise UnsupportedMediaType("compressed request bodies are not accepted")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_STRUCTURE = b'{}[]"'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of objects and arrays in a JSON text (brackets inside strings excluded).

    Only the structural bytes are kept (`{}[]"`, a C-speed filter), then numpy: a bracket counts
    where the quotes before it are even in number. Element-wise arithmetic throughout (no table
    look-up or masked assignment, which cost as much as the filter on a 450 kB prefetch)."""
    if b"\\" in raw:
        # An escaped backslash, then an escaped quote, can neither open nor close a string.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = np.frombuffer(raw.translate(None, _NOT_STRUCTURE), dtype=np.uint8)
    if not len(marks):
        return 0
    folded = marks | 0x20  # "[" -> "{", "]" -> "}"; a quote stays a quote
    step = (folded == _OPEN).view(np.int8) - (folded == _CLOSE).view(np.int8)
    outside = (np.cumsum(marks == _QUOTE, dtype=np.int32) & 1) == 0  # not inside a string
    step *= outside.view(np.int8)
    return max(0, int(np.cumsum(step, dtype=np.int32).max()))


def parse_json(raw: bytes, *, max_depth: int, what: str = "request body") -> Any:
    """The parsed value; BadRequest for invalid JSON, PayloadTooLarge for nesting over `max_depth`."""
    if json_depth(raw) > max_depth:
        raise PayloadTooLarge(f"the {what} is nested deeper than {max_depth} levels")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the {what} is not valid JSON") from exc


def describe_validation(error: ValidationError) -> str:
    """Where and what, never the offending value (it may be PHI)."""
    parts = []
    for err in error.errors()[:5]:
        location = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{location or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def parse_model(raw: bytes, model: type[M], *, max_depth: int) -> M:
    """A JSON object body as `model`; BadRequest (with where, never what) when it does not fit."""
    data = parse_json(raw, max_depth=max_depth)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc)) from exc
