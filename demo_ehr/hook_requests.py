"""CDS Hooks requests as an EHR would send them for a demo stay: patient-view for an ICU stay,
encounter-discharge (or patient-view) for a discharge."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .diabetes_fhir import DischargeResources
from .physionet_fhir import StayResources

__all__ = ["discharge_hook_request", "patient_view_request", "searchset"]


def searchset(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _hook_request(
    hook: str,
    context: dict[str, Any],
    values: Mapping[str, Any],
    *,
    prefetch: bool | Iterable[str],
    fhir_server: str | None,
    access_token: str | None,
    scope: str,
) -> dict[str, Any]:
    """`prefetch`: True for every key, False for none, or the keys to include."""
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
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
                "scope": scope,
                "subject": "cds-ml-service",
                "patient": context["patientId"],
            }
    return body


def patient_view_request(
    stay: StayResources,
    *,
    prefetch: bool | Iterable[str] = True,
    fhir_server: str | None = None,
    access_token: str | None = None,
    user: str = "Practitioner/demo-clinician",
    with_encounter_id: bool = True,
    consents: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """`prefetch`: True for every key, False for none, or the keys to include. `consents`: the
    patient's active Consents, prefetched under `consent` (none by default)."""
    context = {"userId": user, "patientId": stay.patient_id}
    if with_encounter_id:
        context["encounterId"] = str(stay.encounter["id"])
    values = {
        "patient": stay.patient,
        "encounters": searchset([stay.encounter]),
        "vitals": searchset(stay.vitals()),
        "labs": searchset(stay.labs()),
        "consent": searchset(consents),
    }
    return _hook_request(
        "patient-view",
        context,
        values,
        prefetch=prefetch,
        fhir_server=fhir_server,
        access_token=access_token,
        scope="patient/Patient.rs patient/Encounter.rs patient/Observation.rs",
    )


def discharge_hook_request(
    stay: DischargeResources,
    *,
    hook: str = "encounter-discharge",
    prefetch: bool | Iterable[str] = True,
    fhir_server: str | None = None,
    access_token: str | None = None,
    user: str = "Practitioner/demo-clinician",
    consents: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A CDS Hooks request for this discharge. `prefetch`: True for every key, False for none, or keys;
    `consents`: the patient's active Consents (prefetched under `consent`)."""
    context = {"userId": user, "patientId": stay.patient_id, "encounterId": stay.encounter_id}
    values = {
        "patient": stay.patient,
        "encounter": stay.encounter,
        "encounters": searchset([stay.encounter, *stay.history]),
        "conditions": searchset(stay.conditions),
        "medications": searchset(stay.medication_requests),
        "labs": searchset(stay.observations),
        "procedures": searchset(stay.procedures),
        "consent": searchset(consents),
    }
    return _hook_request(
        hook,
        context,
        values,
        prefetch=prefetch,
        fhir_server=fhir_server,
        access_token=access_token,
        scope="patient/*.rs",
    )
