"""The risk trend over the stay: the sepsis model re-scored hour by hour from the EHR's FHIR data,
read with the app session's access token (the same mapping and features as the hook), and when
each variable was last measured."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from fhir_mappings import (
    CANONICAL_COLUMNS,
    GENERIC,
    CDSError,
    PatientRecord,
    Pseudonymizer,
    VendorProfile,
    build_features,
    select_encounter,
    to_canonical,
)
from hooks import SERVICES, render_template
from models import TRAINED_MAX_ICU_HOURS, RiskModel

from ..fhir_client import FetchBudget, FhirClient

__all__ = ["MEASURED", "Trend", "sepsis_trend"]

# The time-varying variables whose last measurement the app lists (the static ones are not measured).
MEASURED = tuple(c for c in CANONICAL_COLUMNS if c not in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime"))


@dataclass(frozen=True)
class Trend:
    hours: tuple[int, ...]
    probabilities: tuple[float, ...]
    threshold: float
    last_measured: dict[str, int | None]  # variable -> ICU hour of its latest value (None: not in the stay)
    current_hour: int


def _resources(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


async def sepsis_trend(
    fhir: FhirClient,
    base: str,
    token: str,
    *,
    patient_id: str,
    encounter_id: str | None,
    model: RiskModel,
    pseudonymizer: Pseudonymizer,
    now: datetime,
    profile: VendorProfile = GENERIC,
    max_resources: int = 20_000,
) -> Trend | None:
    """None when the patient has no ICU stay to trend. FHIR errors propagate (the page says the
    trend is unavailable)."""
    service = SERVICES["sepsis-risk"]
    context = {"patientId": patient_id, **({"encounterId": encounter_id} if encounter_id else {})}
    budget = FetchBudget(max_resources)
    fetched: dict[str, Any] = {}

    async def one(key: str, template: str) -> None:
        query = render_template(template, context)
        if query is None:
            return
        if query.is_search:
            fetched[key] = (await fhir.search(base, query, token, budget)).resources
        else:
            fetched[key] = await fhir.read(base, query, token, budget)

    await asyncio.gather(*(one(k, t) for k, t in service.prefetch.items()))
    encounter = select_encounter(_resources(fetched.get("encounters")), encounter_id, patient_id)
    if encounter is None:
        return None
    observations = {
        r.get("id") or i: r
        for i, r in enumerate(o for k in ("vitals", "labs") for o in _resources(fetched.get(k)))
    }
    patient = fetched.get("patient")
    record = PatientRecord(
        patient_id=patient_id,
        patient=patient if isinstance(patient, dict) else None,
        encounter=encounter,
        observations=list(observations.values()),
    )
    return await asyncio.to_thread(_score_stay, record, model, pseudonymizer, now, profile)


def _score_stay(
    record: PatientRecord,
    model: RiskModel,
    pseudonymizer: Pseudonymizer,
    now: datetime,
    profile: VendorProfile,
) -> Trend | None:
    try:
        stay = to_canonical(
            record, as_of=now, pseudonymizer=pseudonymizer, profile=profile, max_hours=TRAINED_MAX_ICU_HOURS
        )
    except CDSError:
        return None
    rows = build_features(stay.table, model.spec)
    probabilities = model.predict(rows)
    values = stay.table.values
    last: dict[str, int | None] = {}
    for name in MEASURED:
        seen = np.flatnonzero(~np.isnan(values[:, CANONICAL_COLUMNS.index(name)]))
        last[name] = int(stay.table.iculos[seen[-1]]) if seen.size else None
    return Trend(
        hours=tuple(int(h) for h in stay.table.iculos),
        probabilities=tuple(float(p) for p in probabilities),
        threshold=model.threshold,
        last_measured=last,
        current_hour=stay.current_hour,
    )
