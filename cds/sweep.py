"""`cds sweep sepsis`: score every current inpatient at once, as Epic's model scores its census
every 15 minutes, where a CDS Hooks call scores only the chart someone opens. `cds sweep
readmission`: today's expected discharges (in-progress stays whose `period.end` is today), each
scored by `readmission-risk`'s own scoring, ranked for the discharge planners.

Read the census (cds/census_fetch.py: SMART Backend Services token, Bulk Data `$export` or paged
searches) -> the hook's mapping per patient (hooks/sweep.py) -> features for all patients at once
-> probabilities and exact TreeSHAP in batches on the device `choose_device` picks (CDS_DEVICE)
-> one RiskAssessment per patient in the record store, 200 per transaction (tagged
`census-sweep`, with its `card-scored` audit entry, de-identified as a hook's; `cds sweep
--every` repeats the sweep: cds/sweep_schedule.py) -> a unit-level report: patients ranked by
risk within each ICU unit, with their top drivers and the change since the last sweep, written to
`<var_dir>/sweeps/` under pseudonyms. The worklist is the report's patients above the model's
alert threshold; no EHR identifier is written or logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from fhir_mappings import Pseudonymizer
from hooks import ConsentDecision
from hooks.sweep import (
    ReadmissionRow,
    SweepRow,
    census_patients,
    readmission_rows,
    sepsis_stays,
    sweep_risk_assessment,
    sweep_rows,
    unit_report,
)
from models import (
    ModelRegistry,
    RiskModel,
    choose_device,
    last_rows,
    model_task,
    predict_rows,
    shap_rows,
)

from .audit import card_audit
from .backend_services import BackendTokenSource
from .census_fetch import CensusFetch, fetch_census, readmission_query
from .errors import PreconditionFailed, StoreError
from .keys import pseudonym_key
from .privacy import labelled_no_reuse
from .settings import Settings
from .stores import CardRecord, RecordStore

__all__ = [
    "Assessed",
    "SweepOutcome",
    "card_record",
    "format_report",
    "record_assessments",
    "run_sweep",
    "score_stays",
]

log = logging.getLogger("cds.sweep")
SERVICE_IDS = {"sepsis": "sepsis-risk", "readmission": "readmission-risk"}
WRITE_BATCH = 200  # RiskAssessments per store transaction (docs/performance.md measures it)


@dataclass
class SweepOutcome:
    model: str
    rows: list[SweepRow] | list[ReadmissionRow]
    report: list[dict[str, Any]]
    skipped: Counter[str]
    fetch: CensusFetch | None
    device: str
    model_version: str
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    written: int = 0
    report_path: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scored": len(self.rows),
            "above_threshold": sum(1 for r in self.report if r["above_threshold"]),
            "skipped": dict(sorted(self.skipped.items())),
            "read_by": self.fetch.method if self.fetch else None,
            "requests": self.fetch.stats.requests if self.fetch else 0,
            "retries": dict(self.fetch.stats.retries) if self.fetch else {},
            "device": self.device,
            "model_version": self.model_version,
            "written": self.written,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "report": str(self.report_path) if self.report_path else None,
        }


@dataclass(frozen=True)
class Assessed:
    """One patient's RiskAssessment as the sweep records it, with what its audit entry says."""

    assessment_id: str
    risk_assessment: dict[str, Any]
    features_sha256: str | None
    probability: float
    band: str
    consent: ConsentDecision


def card_record(assessed: Assessed, model: RiskModel, service_id: str) -> CardRecord:
    """The stored card of one swept patient: its RiskAssessment (marked no-reuse when the patient
    refused training use) and its `card-scored` audit entry, as a hook call's."""
    risk = assessed.risk_assessment
    if not assessed.consent.training:
        risk = labelled_no_reuse(risk)
    audit = card_audit(
        service_id=service_id,
        card_uuid=assessed.assessment_id,
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.manifest.model_sha256,
        features_sha256=assessed.features_sha256,
        probability=assessed.probability,
        band=assessed.band,
        issuer=None,
        user_pseudonym=None,
        consent=assessed.consent.code,
    )
    return CardRecord(
        assessed.assessment_id, service_id, None, risk, time.time(), audit={**audit, "origin": "census-sweep"}
    )


async def record_assessments(
    store: RecordStore,
    assessed: Sequence[Assessed],
    model: RiskModel,
    service_id: str,
    *,
    batch: int = WRITE_BATCH,
) -> int:
    """Every swept patient's card into the store, `batch` cards per transaction (one sync each,
    not one per card); how many were written. A batch the store refuses stops the sweep with a
    StoreError that says how many were recorded before it (those stay: each batch is all or none)."""
    written = 0
    for a in range(0, len(assessed), batch):
        cards = [card_record(x, model, service_id) for x in assessed[a : a + batch]]
        try:
            await store.put_cards(cards)
        except StoreError as exc:
            raise StoreError(
                f"the census sweep recorded {written} of {len(assessed)} RiskAssessments; "
                f"a batch of {len(cards)} was not recorded and the rest not tried ({exc.message})"
            ) from exc
        written += len(cards)
    return written


def score_stays(model: RiskModel, stays: list[Any], device: str, seconds: dict[str, float]) -> list[SweepRow]:
    """Features, probabilities and SHAP for all stays at once (each stage timed in `seconds`)."""
    t0 = time.perf_counter()
    features = last_rows([s.table for s in stays], model.spec, workers=os.cpu_count() or 1)
    t1 = time.perf_counter()
    probabilities = predict_rows(model, features, device=device)
    t2 = time.perf_counter()
    contributions = shap_rows(model, features)
    t3 = time.perf_counter()
    rows = sweep_rows(model, stays, features, probabilities, contributions)
    seconds.update(features=t1 - t0, score=t2 - t1, shap=t3 - t2, rank=time.perf_counter() - t3)
    return rows


def _previous(directory: Path, model: str) -> dict[str, float]:
    latest = directory / f"{model}-latest.json"
    if not latest.exists():
        return {}
    try:
        body = json.loads(latest.read_text())
        return {str(k): float(v) for k, v in body.get("probabilities", {}).items()}
    except (ValueError, AttributeError):
        log.warning("the last sweep's report is unreadable; changes are not shown")
        return {}


def _write_report(directory: Path, now: datetime, outcome: SweepOutcome) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    body = {
        "at": now.isoformat(),
        "model_version": outcome.model_version,
        "summary": outcome.summary(),
        "patients": outcome.report,
        "probabilities": {r["pseudonym"]: r["probability"] for r in outcome.report},
    }
    stem = f"{outcome.model}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    path = directory / f"{stem}.json"
    n = 1
    while path.exists():  # two sweeps in one second (a short --every): keep both
        n += 1
        path = directory / f"{stem}-{n}.json"
    text = json.dumps(body, indent=1)
    path.write_text(text)
    (directory / f"{outcome.model}-latest.json").write_text(text)
    return path


def _readmission_report(
    rows: list[ReadmissionRow], previous: dict[str, float], threshold: float
) -> list[dict[str, Any]]:
    ranked = sorted(rows, key=lambda r: (-r.probability, r.pseudonym))
    return [
        {
            "unit": "discharges",
            "pseudonym": r.pseudonym,
            "icu_hour": None,
            "probability": round(r.probability, 4),
            "band": r.band,
            "above_threshold": r.probability >= threshold,
            "change": None
            if previous.get(r.pseudonym) is None
            else round(r.probability - previous[r.pseudonym], 4),
            "drivers": [{"feature": f, "label": f, "shap": round(v, 4)} for f, v in r.drivers],
        }
        for r in ranked
    ]


async def run_sweep(
    settings: Settings,
    store: RecordStore,
    *,
    model_name: str = "sepsis",
    now: datetime | None = None,
    write: bool = True,
    http: httpx.AsyncClient | None = None,
) -> SweepOutcome:
    """One sweep of the census for `model_name` (sepsis | readmission): read, map, score, record, report."""
    ehr = settings.sweep_ehr
    if ehr is None:
        raise PreconditionFailed("no sweep EHR configured (CDS_SWEEP_EHR)")
    if model_name not in SERVICE_IDS:
        raise PreconditionFailed(f"no census sweep for {model_name!r}")
    at = now or datetime.now(UTC)
    seconds: dict[str, float] = {}
    spec = model_task(model_name).feature_spec()
    versions = await store.active_versions()
    artifact = ModelRegistry(settings.model_dir).load(model_name, spec, versions.get(model_name))
    # Sepsis scores the whole census in batches (the chosen device); readmission one discharge at a
    # time, as the hook does (few a day: the CPU).
    device = choose_device(settings.device) if model_name == "sepsis" else "cpu"
    model = RiskModel(artifact, spec, device=device)

    owned = http is None
    client = http or httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=ehr.timeout_s)
    try:
        t = time.perf_counter()
        fetched = await fetch_census(
            client,
            ehr,
            now=at,
            query=readmission_query() if model_name == "readmission" else None,
            tokens=BackendTokenSource(client, ehr),
        )
        seconds["read"] = time.perf_counter() - t
    finally:
        if owned:
            await client.aclose()

    t = time.perf_counter()
    patients, locations = census_patients(fetched.resources)
    pseudonymizer = Pseudonymizer(pseudonym_key(settings))
    source = ehr.pseudonym_source or ehr.fhir_base
    profile = settings.vendor_profile(ehr.fhir_base)
    directory = settings.var_dir / "sweeps"
    previous = _previous(directory, model_name)
    records: list[Assessed] = []
    outcome: SweepOutcome
    if model_name == "sepsis":
        stays, skipped = sepsis_stays(
            patients, locations, now=at, pseudonymizer=pseudonymizer, source=source, profile=profile
        )
        seconds["map"] = time.perf_counter() - t
        rows = score_stays(model, stays, device, seconds) if stays else []
        outcome = SweepOutcome(
            model_name,
            rows,
            unit_report(model, rows, previous),
            skipped,
            fetched,
            device,
            model.version,
            seconds,
        )
        if write:
            for row in rows:
                assessment_id, risk, features_sha256 = sweep_risk_assessment(model, row, now=at)
                records.append(
                    Assessed(
                        assessment_id, risk, features_sha256, row.probability, row.band, row.stay.consent
                    )
                )
    else:
        discharges, skipped = readmission_rows(
            patients, model=model, now=at, pseudonymizer=pseudonymizer, source=source, profile=profile
        )
        seconds["score"] = time.perf_counter() - t
        report = _readmission_report(discharges, previous, model.threshold)
        outcome = SweepOutcome(
            model_name, discharges, report, skipped, fetched, device, model.version, seconds
        )
        for d in discharges:
            records.append(
                Assessed(
                    str(d.risk_assessment["id"]),
                    d.risk_assessment,
                    d.features_sha256,
                    d.probability,
                    d.band,
                    d.consent,
                )
            )

    if write:
        t = time.perf_counter()
        outcome.written = await record_assessments(store, records, model, SERVICE_IDS[model_name])
        seconds["record"] = time.perf_counter() - t
        outcome.report_path = _write_report(directory, at, outcome)
    log.info("census sweep done", extra={"sweep": outcome.summary()})
    return outcome


def format_report(outcome: SweepOutcome, *, limit: int = 20) -> str:
    """The unit report as a text table (pseudonyms, never EHR ids): the highest risks first."""
    lines = [
        f"{'unit':<10} {'patient':<14} {'hour':>5} {'risk':>7} {'change':>7}  {'band':<9} top drivers",
    ]
    ranked = sorted(outcome.report, key=lambda r: -r["probability"])[:limit]
    for r in ranked:
        change = "new" if r["change"] is None else f"{r['change'] * 100:+.1f}"
        drivers = ", ".join(f"{d['label']} ({d['shap']:+.2f})" for d in r["drivers"])
        flag = "*" if r["above_threshold"] else " "
        hour = "" if r["icu_hour"] is None else r["icu_hour"]
        lines.append(
            f"{r['unit']:<10} {r['pseudonym'][:12] + '..':<14} {hour:>5} "
            f"{r['probability'] * 100:>6.1f}% {change:>7}  {r['band']:<8}{flag} {drivers}"
        )
    return "\n".join(lines)
