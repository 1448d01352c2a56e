"""CDS Hooks requests as an EHR would send them for a demo stay."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from .physionet_fhir import StayResources

__all__ = ["patient_view_request", "searchset"]


def searchset(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def patient_view_request(
    stay: StayResources,
    *,
    prefetch: bool | Iterable[str] = True,
    fhir_server: str | None = None,
    access_token: str | None = None,
    user: str = "Practitioner/demo-clinician",
    with_encounter_id: bool = True,
) -> dict[str, Any]:
    """`prefetch`: True for every key, False for none, or the keys to include."""
    context = {"userId": user, "patientId": stay.patient_id}
    if with_encounter_id:
        context["encounterId"] = str(stay.encounter["id"])
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context}
    values = {
        "patient": stay.patient,
        "encounters": searchset([stay.encounter]),
        "vitals": searchset(stay.vitals()),
        "labs": searchset(stay.labs()),
    }
    keys = set(values) if prefetch is True else set() if prefetch is False else set(prefetch)
    if keys:
        body["prefetch"] = {k: v for k, v in values.items() if k in keys}
    if fhir_server:
        body["fhirServer"] = fhir_server
        if access_token:
            body["fhirAuthorization"] = {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/Patient.rs patient/Encounter.rs patient/Observation.rs",
                "subject": "cds-ml-service",
                "patient": stay.patient_id,
            }
    return body
