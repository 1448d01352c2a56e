"""CDS services, one module each: discovery entry, prefetch templates and card wording.

`SERVICES` is the explicit registry; adding a service is one module and one line here.
"""

from __future__ import annotations

from .cards import (
    CARD_EXTENSION,
    Driver,
    RiskCardText,
    build_risk_card,
    explanation_link,
    format_percent,
    format_value,
    strip_empty,
)
from .consent import CONSENT_KEY, CONSENT_TEMPLATE, ConsentDecision, consent_decision
from .drivers import (
    ClinicalDriver,
    FeatureShare,
    driver_phrase,
    gap_phrase,
    group_contributions,
    split_drivers,
)
from .fetch_plan import FetchPlan, Need, followup_needs, plan_fetch
from .prefetch import CONTEXT_IDS, check_context_ids, render_template, template_tokens
from .readmission import READMISSION, follow_up_request, readmission_card
from .scoring import Score, card_from_table, recorded_risk_assessment, short_of_minimum
from .sepsis import SEPSIS, card_drivers, sepsis_bundle_suggestion, sepsis_card, sepsis_stay
from .service import (
    INSUFFICIENT_DATA,
    Fetched,
    MinimumData,
    NoCard,
    OverrideReason,
    ScoredCard,
    ScoringInput,
    Service,
    feature_hash,
)
from .sweep import (
    SWEEP_TAG,
    CensusPatient,
    ReadmissionRow,
    SweepRow,
    SweepStay,
    census_patients,
    parse_ndjson,
    readmission_rows,
    sepsis_stays,
    sweep_risk_assessment,
    sweep_rows,
    unit_report,
)

SERVICES: dict[str, Service] = {s.id: s for s in (SEPSIS, READMISSION)}

__all__ = [
    "CARD_EXTENSION",
    "CONSENT_KEY",
    "CONSENT_TEMPLATE",
    "CONTEXT_IDS",
    "CensusPatient",
    "ClinicalDriver",
    "ConsentDecision",
    "Driver",
    "FeatureShare",
    "FetchPlan",
    "Fetched",
    "INSUFFICIENT_DATA",
    "MinimumData",
    "Need",
    "NoCard",
    "OverrideReason",
    "READMISSION",
    "ReadmissionRow",
    "RiskCardText",
    "SEPSIS",
    "SERVICES",
    "SWEEP_TAG",
    "Score",
    "ScoredCard",
    "ScoringInput",
    "Service",
    "SweepRow",
    "SweepStay",
    "build_risk_card",
    "card_drivers",
    "card_from_table",
    "census_patients",
    "check_context_ids",
    "consent_decision",
    "driver_phrase",
    "explanation_link",
    "feature_hash",
    "follow_up_request",
    "followup_needs",
    "format_percent",
    "format_value",
    "gap_phrase",
    "group_contributions",
    "parse_ndjson",
    "plan_fetch",
    "readmission_card",
    "readmission_rows",
    "recorded_risk_assessment",
    "render_template",
    "sepsis_bundle_suggestion",
    "sepsis_card",
    "sepsis_stay",
    "sepsis_stays",
    "short_of_minimum",
    "split_drivers",
    "strip_empty",
    "sweep_risk_assessment",
    "sweep_rows",
    "template_tokens",
    "unit_report",
]
