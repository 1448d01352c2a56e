"""A CDS service as a declarative value: discovery fields, prefetch templates, the least data it
needs, and the pure function that turns fetched resources into a scored card (or says why not)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from fhir_mappings import GENERIC, FhirQuery, Pseudonymizer, VendorProfile
from models import RiskModel

__all__ = [
    "INSUFFICIENT_DATA",
    "NON_ADHERENCE",
    "NOT_APPLICABLE",
    "STALE_DATA",
    "Fetched",
    "MinimumData",
    "NoCard",
    "OverrideReason",
    "ScoredCard",
    "ScoringInput",
    "Service",
    "feature_hash",
]

# Reason code (logs, metrics) of an answer without a card because the data is too thin to score.
INSUFFICIENT_DATA = "insufficient-data"

# HL7 non-adherence reason codes (the code system CDS Hooks 3.0 suggests for overrideReasons).
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"

# Per prefetch key: a resource (or None) for a read template, a list of resources for a search.
Fetched = Mapping[str, dict[str, Any] | list[dict[str, Any]] | None]


@dataclass(frozen=True, slots=True)
class OverrideReason:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


# Offered by every service; each service adds the reasons specific to its advice.
NOT_APPLICABLE = OverrideReason(NON_ADHERENCE, "cds-not-applicable", "Not applicable to this patient")
STALE_DATA = OverrideReason(
    NON_ADHERENCE, "cds-suboptimal-context", "Data shown is incomplete or out of date"
)


@dataclass(frozen=True)
class ScoringInput:
    context: Mapping[str, Any]
    fetched: Fetched
    model: RiskModel
    now: datetime
    pseudonymizer: Pseudonymizer
    card_uuid: str
    source: str  # the FHIR base the data came from (scopes pseudonyms)
    profile: VendorProfile = GENERIC  # the EHR's mapping profile (codes, ICU locations, statuses)


@dataclass(frozen=True)
class ScoredCard:
    card: dict[str, Any]  # the CDS Hooks card
    risk_assessment: dict[str, Any]  # FHIR RiskAssessment to record
    user_pseudonym: str | None
    probability: float
    band: str
    log: dict[str, Any] = field(default_factory=dict)  # counts for the hook log; never PHI
    features_sha256: str | None = None  # feature_hash of the row scored, for the audit trail
    # The de-identified feature row scored (1 x features, the model's spec order): a shadow version
    # re-scores it (same feature spec, checked at load), and drift tallies it in aggregate
    # (cds/drift.py); never stored or logged per call.
    row: np.ndarray | None = field(default=None, repr=False, compare=False)


def feature_hash(row: np.ndarray) -> str:
    """SHA-256 of the de-identified feature row a model scored (float64 in the spec's order, NaN
    as NaN): the audit trail can show which input gave a score without keeping the input."""
    return hashlib.sha256(
        np.ascontiguousarray(np.asarray(row, dtype=np.float64).ravel()).tobytes()
    ).hexdigest()


@dataclass(frozen=True)
class NoCard:
    """An answer without a card, and why: `reason` is a stable code for logs and metrics (the
    hook outcome's reason), `log` counts for the hook log (never values or identities)."""

    reason: str
    log: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MinimumData:
    """The least recent usable data a service scores from: at least `count` measured values of
    at least `distinct` different `variables` in the last `window_hours` rows of the table it
    scores (rows are ICU hours; None: every row). Below it a model would answer from
    demographics and the absence of data alone, so the service answers no card (`reason`).

    "Measured" means a value that survived the mapping (right patient, readable time, status,
    unit and plausibility range), i.e. a non-empty cell of the canonical table, so the same rule
    reads training files and FHIR alike (`per_row` is how docs/mapping.md measures it on set A).
    """

    variables: tuple[str, ...]
    count: int
    distinct: int = 1
    window_hours: int | None = None
    reason: str = INSUFFICIENT_DATA

    def per_row(
        self, columns: Sequence[str], values: np.ndarray, group_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(measured values, distinct variables) in the window ending at each row, counting only
        rows of the same stay (`group_start`: each row's stay's first row; None: one stay)."""
        names = list(columns)
        measured = ~np.isnan(values[:, [names.index(v) for v in self.variables]])
        n = len(values)
        row = np.arange(n)
        start = np.zeros(n, dtype=np.int64) if group_start is None else np.asarray(group_start)
        low = start if self.window_hours is None else np.maximum(row - self.window_hours + 1, start)
        total = np.vstack([np.zeros((1, measured.shape[1]), dtype=np.int64), np.cumsum(measured, axis=0)])
        window = total[row + 1] - total[low]
        return window.sum(axis=1), (window > 0).sum(axis=1)

    def met(
        self, columns: Sequence[str], values: np.ndarray, group_start: np.ndarray | None = None
    ) -> np.ndarray:
        """Per row: whether the minimum is met at that row."""
        found, distinct = self.per_row(columns, values, group_start)
        return (found >= self.count) & (distinct >= self.distinct)

    def assess(self, columns: Sequence[str], values: np.ndarray) -> tuple[bool, dict[str, int]]:
        """Whether the last row of one stay's table meets the minimum, with the counts found."""
        if not len(values):
            return False, {"values": 0, "variables": 0}
        found, distinct = self.per_row(columns, values[-(self.window_hours or len(values)) :])
        counts = {"values": int(found[-1]), "variables": int(distinct[-1])}
        return counts["values"] >= self.count and counts["variables"] >= self.distinct, counts

    def describe(self) -> str:
        """The rule in words, for documentation."""
        window = f" in the last {self.window_hours} hours" if self.window_hours else ""
        spread = f", of at least {self.distinct} different variables," if self.distinct > 1 else ""
        values = f"value{'s' if self.count != 1 else ''}"
        return f"at least {self.count} measured {values}{spread} among {', '.join(self.variables)}{window}"


@dataclass(frozen=True)
class Service:
    id: str
    hooks: tuple[str, ...]  # the same service may answer several hooks
    title: str
    description: str
    prefetch: Mapping[str, str]
    model_name: str
    # None: the service does not apply; NoCard: no card, with a reason code and counts for the log.
    score: Callable[[ScoringInput], ScoredCard | NoCard | None]
    usage_requirements: str | None = None
    required_context: tuple[str, ...] = ("userId", "patientId")
    # Second-round reads needed once the first round is in (e.g. Location of an ICU bed).
    followups: Callable[[Mapping[str, Any], Fetched, VendorProfile], dict[str, FhirQuery]] | None = None
    # Prefetch keys that are Observation searches by category (key -> category). When the EHR did
    # not prefetch them, the fallback asks for the categories the EHR's vendor profile names.
    observation_keys: Mapping[str, str] = field(default_factory=dict)
    override_reasons: tuple[OverrideReason, ...] = ()
    # The least usable data the service scores from (below it: NoCard with reason insufficient-data).
    minimum_data: MinimumData | None = None
    # a band's level (models.bands: below the alert threshold, an alert, worth interrupting for)
    # -> CDS Hooks card indicator. `critical` only where validation PPV justifies interrupting.
    indicators: Mapping[str, str] = field(
        default_factory=lambda: {"below": "info", "alert": "warning", "interrupt": "critical"}
    )

    def discovery(self) -> list[dict[str, Any]]:
        """One discovery entry per hook (CDS Hooks lets one id appear under several hooks)."""
        entries = []
        for hook in self.hooks:
            entry: dict[str, Any] = {
                "hook": hook,
                "id": self.id,
                "title": self.title,
                "description": self.description,
                "prefetch": dict(self.prefetch),
            }
            if self.usage_requirements:
                entry["usageRequirements"] = self.usage_requirements
            entries.append(entry)
        return entries
