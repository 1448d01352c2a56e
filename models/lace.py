"""The LACE-style baseline for 30-day readmission, scored on the same encounters as the model.

LACE (van Walraven et al., CMAJ 2010) from the fields a discharge table has: Length of stay,
Acute (emergency or urgent) admission, Charlson index from the three ranked diagnoses, and
Emergency visits (over the past year here, LACE uses six months). The points come from
`fhir_mappings.lace_points`, the same code that makes the model's `lace_points` feature.
"""

from __future__ import annotations

import numpy as np

from fhir_mappings import DischargeTable, lace_points

__all__ = ["LACE_DESCRIPTION", "lace_score"]

LACE_DESCRIPTION = (
    "LACE-style proxy: length of stay (0-7), emergency/urgent admission (3), Charlson index from "
    "diag_1..3 (0-5), emergency visits in the prior year (0-4); no six-month window, no full problem list"
)


def lace_score(table: DischargeTable) -> np.ndarray:
    """Integer points 0-19 per encounter; higher means more likely readmitted."""
    return lace_points(table)
