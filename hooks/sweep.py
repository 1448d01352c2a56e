"""The census sweep's pure part: the resources of many patients (a Bulk Data export or paged
searches) -> one canonical table per inpatient through the SAME mapping a `sepsis-risk` call uses
-> the scored rows, their RiskAssessments and a unit-level report ranked by risk.

A patient is scored when the hook would give a card, decided by the hook's own functions:
`sepsis_stay` (the in-progress inpatient Encounter, `to_canonical` with the trained ICU-clock
bound), `short_of_minimum` (the service's minimum data), and no Consent refusing decision support;
every other patient is counted under the hook's reason. Its RiskAssessment is the hook's
`recorded_risk_assessment` of the same explanation and worded drivers (only the id, the time and
the `census-sweep` tag differ). Identities stop here as in the hook: rows carry keyed
pseudonyms, never EHR ids.

Readmission (`readmission_rows`): today's expected discharges, each scored by `readmission-risk`'s
own `score` on what its prefetch would hold (a few patients a day: no batch path needed).
"""

from __future__ import annotations

import codecs
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fhir_mappings import (
    CANONICAL_COLUMNS,
    CanonicalTable,
    MappingError,
    Pseudonymizer,
    VendorProfile,
    parse_datetime,
    reference_id,
    select_encounter,
)
from fhir_mappings.writeback import CANONICAL
from models import RiskModel

from .consent import ConsentDecision, consent_decision
from .drivers import group_contributions
from .readmission import READMISSION
from .scoring import recorded_risk_assessment, short_of_minimum
from .sepsis import NOT_APPLICABLE_REASON, SEPSIS, card_drivers, sepsis_stay
from .service import NoCard, ScoredCard, ScoringInput, feature_hash

__all__ = [
    "CensusPatient",
    "NdjsonStream",
    "ReadmissionRow",
    "SWEEP_TAG",
    "SweepRow",
    "SweepStay",
    "census_patients",
    "ndjson_resource",
    "parse_ndjson",
    "readmission_rows",
    "sepsis_stays",
    "sweep_risk_assessment",
    "sweep_rows",
    "unit_report",
]

# meta.tag on a sweep's RiskAssessments: scored by the census sweep, not shown in a card.
SWEEP_TAG = {"system": f"{CANONICAL}/CodeSystem/assessment-origin", "code": "census-sweep"}
CONSENT_REFUSED = "decision-support-refused"
NO_STAY = "no-stay"
UNMAPPABLE = "unmappable"


def ndjson_resource(line: str, n: int) -> dict[str, Any] | None:
    """Line `n` of an NDJSON file: its FHIR resource, None when blank; MappingError (with its
    line number, never its text) for a line that is not a JSON object with a resourceType."""
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except ValueError:
        raise MappingError(f"NDJSON line {n} is not JSON", path=f"line {n}") from None
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise MappingError(f"NDJSON line {n} is not a FHIR resource", path=f"line {n}")
    return value


def parse_ndjson(data: bytes | str) -> list[dict[str, Any]]:
    """One FHIR resource per line (Bulk Data NDJSON); blank lines skipped (see `ndjson_resource`);
    bytes that are not UTF-8 raise MappingError too."""
    if isinstance(data, bytes):
        stream = NdjsonStream()
        return stream.feed(data) + stream.end()
    return [r for n, line in enumerate(data.splitlines(), 1) if (r := ndjson_resource(line, n)) is not None]


class NdjsonStream:
    """`parse_ndjson` for a file read in chunks (a download): feed the bytes as they come, each
    call gives the resources of the lines it completed; `end` the last line's. Whatever the chunks,
    the resources, line numbers and errors are `parse_ndjson`'s for the whole file; only the lines
    not yet complete are held, never the file."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._pending = ""
        self._line = 0

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        try:
            return self._lines(self._decoder.decode(chunk), final=False)
        except UnicodeDecodeError:
            raise MappingError("NDJSON is not UTF-8", path=f"line {self._line + 1}") from None

    def end(self) -> list[dict[str, Any]]:
        try:
            return self._lines(self._decoder.decode(b"", final=True), final=True)
        except UnicodeDecodeError:
            raise MappingError("NDJSON is not UTF-8", path=f"line {self._line + 1}") from None

    def _lines(self, text: str, *, final: bool) -> list[dict[str, Any]]:
        lines = (self._pending + text).splitlines(keepends=True)
        self._pending = ""
        # The last line may go on in the next chunk (and a "\r" may be half of a "\r\n").
        if lines and not final and (not lines[-1].endswith(_LINE_ENDS) or lines[-1].endswith("\r")):
            self._pending = lines.pop()
        out = []
        for line in lines:
            self._line += 1
            if (r := ndjson_resource(line.rstrip("".join(_LINE_ENDS)), self._line)) is not None:
                out.append(r)
        return out


# What str.splitlines splits on.
_LINE_ENDS = ("\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


@dataclass
class CensusPatient:
    """One patient's share of the census resources, gathered as a hook's prefetch would be."""

    patient_id: str
    patient: dict[str, Any] | None = None
    encounters: list[dict[str, Any]] = field(default_factory=list)
    observations: dict[Any, dict[str, Any]] = field(default_factory=dict)
    consents: list[dict[str, Any]] = field(default_factory=list)
    other: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # Condition, Procedure, ...


_OTHER = ("Condition", "MedicationRequest", "Procedure")


def census_patients(resources: Iterable[Any]) -> tuple[list[CensusPatient], dict[str, dict[str, Any]]]:
    """(patients with at least one Encounter, in first-seen order; Locations by id). Observations
    are kept one per id, as the hook keeps them across its prefetch keys."""
    by_id: dict[str, CensusPatient] = {}
    locations: dict[str, dict[str, Any]] = {}

    def of(pid: str | None) -> CensusPatient | None:
        if not pid:
            return None
        found = by_id.get(pid)
        if found is None:
            found = by_id[pid] = CensusPatient(pid)
        return found

    for r in resources:
        if not isinstance(r, dict):
            continue
        kind = r.get("resourceType")
        if kind == "Patient" and isinstance(r.get("id"), str):
            p = of(r["id"])
            assert p is not None
            p.patient = r
        elif kind == "Encounter":
            if (p := of(reference_id(r.get("subject"), "Patient"))) is not None:
                p.encounters.append(r)
        elif kind == "Observation":
            if (p := of(reference_id(r.get("subject"), "Patient"))) is not None:
                rid = r.get("id")
                key = rid if isinstance(rid, str) and rid else ("no-id", len(p.observations))
                p.observations[key] = r
        elif kind == "Consent":
            if (p := of(reference_id(r.get("patient"), "Patient"))) is not None:
                p.consents.append(r)
        elif kind == "Location" and isinstance(r.get("id"), str):
            locations[r["id"]] = r
        elif kind in _OTHER:
            if (p := of(reference_id(r.get("subject"), "Patient"))) is not None:
                p.other.setdefault(str(kind), []).append(r)
    return [p for p in by_id.values() if p.encounters], locations


@dataclass(frozen=True)
class SweepStay:
    pseudonym: str
    table: CanonicalTable
    icu_hour: int
    unit: str  # medical | surgical | icu (unit not known)
    consent: ConsentDecision


def _unit(table: CanonicalTable) -> str:
    last = table.values[-1]
    if last[CanonicalTable.column_index("Unit1")] == 1.0:
        return "medical"
    if last[CanonicalTable.column_index("Unit2")] == 1.0:
        return "surgical"
    return "icu"


def sepsis_stays(
    patients: Sequence[CensusPatient],
    locations: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    pseudonymizer: Pseudonymizer,
    source: str,
    profile: VendorProfile,
) -> tuple[list[SweepStay], Counter[str]]:
    """The stays a `sepsis-risk` call would score now (its own `sepsis_stay` and minimum data),
    and why the others are not scored."""
    stays: list[SweepStay] = []
    skipped: Counter[str] = Counter()
    for p in patients:
        consent = consent_decision(p.consents, p.patient_id, now)
        if not consent.decision_support:  # not mapped; counted as the hook would answer
            in_hospital = select_encounter(p.encounters, None, p.patient_id, profile=profile) is not None
            skipped[CONSENT_REFUSED if in_hospital else NO_STAY] += 1
            continue
        try:
            found = sepsis_stay(
                p.encounters,
                list(p.observations.values()),
                locations,
                patient_id=p.patient_id,
                patient=p.patient,
                encounter_id=None,
                now=now,
                pseudonymizer=pseudonymizer,
                source=source,
                profile=profile,
            )
        except MappingError:
            skipped[UNMAPPABLE] += 1
            continue
        if found is None:
            skipped[NO_STAY] += 1
            continue
        if isinstance(found, NoCard):
            skipped[found.reason] += 1
            continue
        stay = found[1]
        if (short := short_of_minimum(SEPSIS, CANONICAL_COLUMNS, stay.table.values, {})) is not None:
            skipped[short.reason] += 1
            continue
        assert stay.pseudonym is not None  # the patient id came from the EHR's resources
        stays.append(SweepStay(stay.pseudonym, stay.table, stay.current_hour, _unit(stay.table), consent))
    return stays, skipped


@dataclass(frozen=True)
class SweepRow:
    """One scored inpatient: what the RiskAssessment and the unit report say."""

    stay: SweepStay
    features: np.ndarray  # (n_features,) the row scored
    probability: float
    band: str
    shap: np.ndarray  # (n_features,) log-odds
    base_value: float
    drivers: tuple[int, ...]  # feature indices, largest |SHAP| first
    contributions: np.ndarray  # (n_features + 1,) float32 TreeSHAP as scored, the base value last


def sweep_rows(
    model: RiskModel,
    stays: Sequence[SweepStay],
    features: np.ndarray,
    probabilities: np.ndarray,
    contributions: np.ndarray,
    *,
    drivers: int = 3,
) -> list[SweepRow]:
    """Bands and top drivers (vectorised over patients) joined to their stays."""
    shap = contributions[:, :-1]
    k = min(drivers, shap.shape[1])
    if len(stays) and k:
        top = np.argpartition(-np.abs(shap), k - 1, axis=1)[:, :k]
        order = np.argsort(-np.abs(np.take_along_axis(shap, top, axis=1)), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
    else:
        top = np.empty((len(stays), 0), dtype=np.int64)
    rows = []
    for i, stay in enumerate(stays):
        p = float(probabilities[i])
        rows.append(
            SweepRow(
                stay,
                features[i],
                p,
                model.band(p),  # the served bands (a site's when it has its own), as a hook call's
                shap[i],
                float(contributions[i, -1]),
                tuple(int(j) for j in top[i]),
                contributions[i],
            )
        )
    return rows


def sweep_risk_assessment(
    model: RiskModel, row: SweepRow, *, now: datetime, assessment_id: str | None = None
) -> tuple[str, dict[str, Any], str]:
    """(id, the RiskAssessment a `sepsis-risk` call would record for this patient now, tagged
    `census-sweep`, the feature hash): the hook's own `recorded_risk_assessment` on the same
    explanation, grouping and worded drivers, so only the id, the time and the tag tell them apart."""
    assessment_id = assessment_id or str(uuid.uuid4())
    explanation = model.explanation_of(row.features, row.contributions)
    grouped = group_contributions(explanation.contributions)
    drivers, gaps = card_drivers(grouped)
    resource = recorded_risk_assessment(
        card_uuid=assessment_id,
        service=SEPSIS,
        model=model,
        pseudonym=row.stay.pseudonym,
        occurrence=now,
        icu_hour=row.stay.icu_hour,
        probability=row.probability,
        band=row.band,
        explanation=explanation,
        grouped=grouped,
        worded=[d.variable for d in (*drivers, *gaps)],
        feature_values=row.features,
    )
    resource["meta"] = {"tag": [dict(SWEEP_TAG)]}
    return assessment_id, resource, feature_hash(row.features)


def unit_report(
    model: RiskModel, rows: Sequence[SweepRow], previous: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Patients ranked by risk within each unit, with their top drivers and the change since the
    last sweep (`previous`: pseudonym -> probability; None for a patient not scored then)."""
    names = model.spec.names
    labels = [f.label for f in model.spec.features]
    ranked = sorted(rows, key=lambda r: (r.stay.unit, -r.probability, r.stay.pseudonym))
    out = []
    for r in ranked:
        before = previous.get(r.stay.pseudonym)
        out.append(
            {
                "unit": r.stay.unit,
                "pseudonym": r.stay.pseudonym,
                "icu_hour": r.stay.icu_hour,
                "probability": round(r.probability, 4),
                "band": r.band,
                "above_threshold": r.probability >= model.threshold,
                "change": None if before is None else round(r.probability - before, 4),
                "drivers": [
                    {"feature": names[j], "label": labels[j], "shap": round(float(r.shap[j]), 4)}
                    for j in r.drivers
                ],
            }
        )
    return out


# --- readmission: today's expected discharges, one hook call's scoring each -------------------


@dataclass(frozen=True)
class ReadmissionRow:
    pseudonym: str
    probability: float
    band: str
    risk_assessment: dict[str, Any]  # as the hook records it (tagged `census-sweep`)
    features_sha256: str | None
    consent: ConsentDecision
    drivers: tuple[tuple[str, float], ...]  # (feature, SHAP), largest first, as recorded


def _expected_end(encounter: Mapping[str, Any]) -> datetime | None:
    period = encounter.get("period")
    end = period.get("end") if isinstance(period, Mapping) else None
    try:
        return parse_datetime(end, "Encounter.period.end") if end else None
    except MappingError:
        return None


def readmission_rows(
    patients: Sequence[CensusPatient],
    *,
    model: RiskModel,
    now: datetime,
    pseudonymizer: Pseudonymizer,
    source: str,
    profile: VendorProfile,
) -> tuple[list[ReadmissionRow], Counter[str]]:
    """Patients whose in-progress inpatient stay is expected to end today (its `period.end`, the
    planned discharge, falls on `now`'s UTC date), each scored by `readmission-risk`'s own
    `score` on what its prefetch would hold: few patients a day, so one at a time."""
    rows: list[ReadmissionRow] = []
    skipped: Counter[str] = Counter()
    today = now.astimezone(UTC).date()
    for p in patients:
        encounter = select_encounter(p.encounters, None, p.patient_id, profile=profile)
        end = _expected_end(encounter) if encounter is not None else None
        if encounter is None or end is None or end.astimezone(UTC).date() != today:
            skipped["not-discharged-today"] += 1
            continue
        consent = consent_decision(p.consents, p.patient_id, now)
        if not consent.decision_support:
            skipped[CONSENT_REFUSED] += 1
            continue
        fetched: dict[str, Any] = {
            "patient": p.patient,
            "encounter": encounter,
            "encounters": list(p.encounters),
            "conditions": p.other.get("Condition", []),
            "medications": p.other.get("MedicationRequest", []),
            "labs": list(p.observations.values()),
            "procedures": p.other.get("Procedure", []),
            "consent": list(p.consents),
        }
        context = {"patientId": p.patient_id, "encounterId": encounter.get("id")}
        scored = READMISSION.score(
            ScoringInput(context, fetched, model, now, pseudonymizer, str(uuid.uuid4()), source, profile)
        )
        if not isinstance(scored, ScoredCard):
            skipped[scored.reason if isinstance(scored, NoCard) else NOT_APPLICABLE_REASON] += 1
            continue
        risk = {**scored.risk_assessment, "meta": {"tag": [dict(SWEEP_TAG)]}}
        drivers = tuple(
            (str(part["valueString"]), float(shap["valueDecimal"]))
            for e in risk.get("extension", ())
            if str(e.get("url", "")).endswith("/shap-contribution")
            for part in e["extension"]
            if part["url"] == "feature"
            for shap in e["extension"]
            if shap["url"] == "shap"
        )
        rows.append(
            ReadmissionRow(
                str(risk["subject"]["identifier"]["value"]),
                scored.probability,
                scored.band,
                risk,
                scored.features_sha256,
                consent,
                drivers[:3],
            )
        )
    return rows, skipped
