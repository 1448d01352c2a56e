"""FHIR resources written by hand, as an EHR would send them: independent of our own converters
(demo_ehr), so that tests reading them check the mapping against an outside encoding."""

from __future__ import annotations

from datetime import datetime
from typing import Any

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def vital_sign(
    oid: str,
    loinc: str,
    value: object,
    unit: str,
    at: datetime | str,
    *,
    subject: str | None = None,
    **quantity: object,
) -> dict[str, Any]:
    """A vital-sign Observation with a UCUM valueQuantity (`quantity`: more fields, e.g. a comparator)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": at if isinstance(at, str) else at.isoformat(),
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
            **quantity,
        },
    }
    if subject is not None:
        obs["subject"] = {"reference": subject}
    return obs
