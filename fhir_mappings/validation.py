"""Full structural validation of FHIR R4 resources with `fhir.resources` (R4B models).

Where validation happens, and why: building pydantic models of every resource costs about
0.1 ms per Observation (~90 ms for a 700-Observation prefetch, measured by
benchmarks/bench_mapping.py), twenty times the whole mapping budget of a hook call. So the hook's hot
path uses the narrow readers of `resources.py`/`observations.py`, which check each field they
touch and count (never raise on, never guess) what they cannot use. Full validation runs where
time is not scarce: `cds map` (onboarding a hospital's data), the tests (every resource our
converter emits and every Synthea bundle), and the write-back resources we build ourselves.

Issues name the resource type, index and field path and the pydantic error type, never the
offending value (which may be PHI).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

__all__ = ["ValidationIssue", "validate_resource", "validate_resources"]


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    index: int
    resource_type: str
    path: str
    kind: str  # pydantic error type, e.g. "missing", "value_error"

    def __str__(self) -> str:
        return f"[{self.index}] {self.resource_type}.{self.path}: {self.kind}"


def validate_resource(resource: Mapping[str, Any], index: int = 0) -> list[ValidationIssue]:
    resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
    if not isinstance(resource_type, str):
        return [ValidationIssue(index, "?", "resourceType", "missing")]
    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return [ValidationIssue(index, "?", "resourceType", "unknown-resource-type")]
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        return [
            ValidationIssue(
                index, resource_type, ".".join(str(p) for p in err["loc"]) or "(root)", err["type"]
            )
            for err in exc.errors(include_input=False, include_url=False)
        ]
    except (ValueError, TypeError) as exc:
        return [ValidationIssue(index, resource_type, "(root)", type(exc).__name__)]
    return []


def validate_resources(resources: Iterable[Mapping[str, Any]]) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    for i, resource in enumerate(resources):
        issues += validate_resource(resource, i)
    return issues
