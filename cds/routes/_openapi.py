"""Request bodies in the OpenAPI document: our handlers read their bodies themselves (under size,
time and depth limits), so FastAPI cannot see their models; these helpers put them back, so that
schemathesis and integrators see what each endpoint takes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["body_schemas", "json_body"]

_MODELS: dict[str, type[BaseModel]] = {}
_REF = "#/components/schemas/{model}"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    _MODELS[model.__name__] = model
    schema = {"$ref": _REF.format(model=model.__name__)}
    content = {media: {"schema": schema} for media in ("application/json", "application/fhir+json")}
    return {"requestBody": {"required": True, "content": content}}


def body_schemas() -> dict[str, Any]:
    """Component schemas of every model named by `json_body`, with their nested models."""
    out: dict[str, Any] = {}
    for name, model in _MODELS.items():
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out
