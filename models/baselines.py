"""Clinical baselines for the sepsis model: bedside scores on exactly the rows the model scores.

The scores come from `fhir_mappings.clinical_scores` through the same feature code the model
uses (the latest values carried forward, causal), so a baseline and the model see the same
information up to each hour. All are partial in set A's layout (see clinical_scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fhir_mappings import CanonicalTable, Feature, build_features, hourly_spec

__all__ = ["BASELINES", "Baseline", "baseline_scores"]


@dataclass(frozen=True, slots=True)
class Baseline:
    name: str  # as reported
    series: str  # a fhir_mappings.SCORE_SERIES name
    alert_at: float  # the published "act on this" cut-off


BASELINES: tuple[Baseline, ...] = (
    Baseline("qSOFA (partial)", "qsofa", 2),
    Baseline("SIRS (no bands)", "sirs", 2),
    Baseline("NEWS2 (partial)", "news2", 5),
    Baseline("MEWS (partial)", "mews", 5),
    Baseline("SOFA (partial)", "sofa_partial", 2),
)

_SPEC = hourly_spec("baselines", [Feature(b.series, "last", b.series) for b in BASELINES])


def baseline_scores(table: CanonicalTable) -> dict[str, np.ndarray]:
    """Baseline name -> score per table row; an hour before any input was measured scores 0."""
    x = np.nan_to_num(build_features(table, _SPEC).astype(np.float64), nan=0.0)
    return {b.name: x[:, j] for j, b in enumerate(BASELINES)}
