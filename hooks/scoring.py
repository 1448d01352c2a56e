"""The one path from a service's canonical table to a card and a RiskAssessment, shared by every
service: minimum data -> the task's serving row -> probability, band, SHAP -> the service's card ->
the RiskAssessment we record -> the clinician's pseudonym and the hash of the scored row (for
the audit trail). A service's `_score` maps its fetched resources to its canonical table and
words its card; everything after is here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from fhir_mappings import RECORDED_CONTRIBUTIONS, build_risk_assessment
from models import Explanation, RiskModel, model_task

from .cards import CARD_EXTENSION
from .drivers import CONTEXT_SUFFIXES, ClinicalDriver, context_features, group_contributions, variable_of
from .service import NoCard, ScoredCard, ScoringInput, Service, feature_hash

__all__ = ["Score", "card_from_table", "recorded_risk_assessment", "short_of_minimum"]

_CONTEXT = tuple(f"__{s}" for s in CONTEXT_SUFFIXES)
CONTEXT_VARIABLES = 8  # clinical variables whose value and timing features the RiskAssessment keeps


@dataclass(frozen=True)
class Score:
    """What the model said about the row scored now, for the service's card wording."""

    probability: float
    band: str
    explanation: Explanation
    model: RiskModel
    level: str = "below"  # the band's level (models.bands): sets the card's indicator
    # The contributions grouped by clinical variable, largest first (hooks.drivers): grouped once
    # per call for the card's wording and for what the RiskAssessment keeps.
    drivers: Sequence[ClinicalDriver] = ()

    @property
    def band_validation(self) -> dict[str, Any] | None:
        """The band's PPV and sensitivity on validation data (the manifest's or the site's)."""
        found = self.model.bands.named(self.band)
        if found is None or found.ppv is None:
            return None
        return {
            "ppv": found.ppv,
            **({"sensitivity": found.sensitivity} if found.sensitivity is not None else {}),
            "measuredOn": self.model.bands.measured_on,
        }


def short_of_minimum(
    service: Service, columns: Sequence[str], values: Any, log: dict[str, Any]
) -> NoCard | None:
    """The service's no-card answer when the last row of one stay's table (`values`) is below its
    minimum data; None when it may be scored (the hook and the sweep both ask here)."""
    if service.minimum_data is None:
        return None
    enough, found = service.minimum_data.assess(columns, values)
    return None if enough else NoCard(service.minimum_data.reason, {**log, "minimum": found})


def recorded_risk_assessment(
    *,
    card_uuid: str,
    service: Service,
    model: RiskModel,
    pseudonym: str,
    occurrence: datetime,
    icu_hour: int | None,
    probability: float,
    band: str,
    explanation: Explanation,
    grouped: Sequence[ClinicalDriver],
    worded: Iterable[str],
    feature_values: np.ndarray | None = None,
) -> dict[str, Any]:
    """The RiskAssessment we record for one score, the same whoever scored it (a hook call or the
    census sweep): the largest contributions and, for the clinical variables the app and the card
    word, the features that say the latest value and when (so the app words a driver as the card
    did): the app's waterfall rows (`grouped`, largest first), the card's drivers (`worded`:
    their variables), and every variable among the largest contributions; and the scored row
    itself (`feature_values`), so retraining from served records has every feature."""
    recorded = [c for c in explanation.contributions if c.shap != 0.0 or c.feature.endswith(_CONTEXT)]
    top = [d.variable for d in grouped[:CONTEXT_VARIABLES]]
    top += worded
    names = {c.feature for c in recorded}
    largest = sorted(recorded, key=lambda c: -abs(c.shap))[:RECORDED_CONTRIBUTIONS]
    shown = {variable_of(c.feature) for c in largest}
    return build_risk_assessment(
        card_uuid=card_uuid,
        service_id=service.id,
        pseudonym=pseudonym,
        occurrence=occurrence,
        icu_hour=icu_hour,
        model_name=model.name,
        model_version=model.version,
        probability=probability,
        band=band,
        outcome_code=model_task(service.model_name).outcome,
        horizon_hours=model.manifest.horizon_hours,
        base_value=explanation.base_value,
        contributions=recorded,
        also_record=context_features(top, names) | context_features(shown, names, ("last", "hours_since")),
        feature_values=feature_values,
        feature_spec_hash=model.spec.spec_hash,
    )


def card_from_table(
    inp: ScoringInput,
    service: Service,
    table: Any,
    columns: Sequence[str],
    *,
    pseudonym: str,
    icu_hour: int | None,
    log: dict[str, Any],
    card: Callable[[Score], dict[str, Any]],
) -> ScoredCard | NoCard:
    """Score the last row of `table` (one patient's stay, `columns` its column names) and build the
    card with the service's `card`; below the service's minimum data, no card."""
    if (short := short_of_minimum(service, columns, table.values, log)) is not None:
        return short
    task = model_task(service.model_name)
    model = inp.model
    row = task.serving_row(table, model.spec)
    probability = float(model.predict(row)[0])
    band = model.band(probability)
    explanation = model.explain(row[0])
    grouped = group_contributions(explanation.contributions)
    built = card(Score(probability, band, explanation, model, model.band_level(band), grouped))
    worded = built.get("extension", {}).get(CARD_EXTENSION, {}).get("shap", {}).get("drivers", [])
    risk = recorded_risk_assessment(
        card_uuid=inp.card_uuid,
        service=service,
        model=model,
        pseudonym=pseudonym,
        occurrence=inp.now,
        icu_hour=icu_hour,
        probability=probability,
        band=band,
        explanation=explanation,
        grouped=grouped,
        worded=(d["variable"] for d in worded if isinstance(d, dict) and isinstance(d.get("variable"), str)),
        feature_values=row[0],
    )
    user = inp.context.get("userId")
    user_pseudonym = (
        inp.pseudonymizer.pseudonym(user.split("/", 1)[0], user, source=inp.source)
        if isinstance(user, str) and user
        else None
    )
    return ScoredCard(
        card=built,
        risk_assessment=risk,
        user_pseudonym=user_pseudonym,
        probability=probability,
        band=band,
        log={**log, "band": band},
        features_sha256=feature_hash(row),
        row=row,
    )
