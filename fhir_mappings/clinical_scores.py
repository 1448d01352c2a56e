"""Bedside early-warning scores from the canonical variables: one code for features and baselines.

Each function takes the latest value of each variable (NaN when never measured) as equal-shaped
arrays and returns points per row. A missing component scores 0, as a clinician would read an
unmeasured vital as "not known to be abnormal"; so the scores are *partial* where set A's layout
lacks an input (no GCS/AVPU, no vasopressors, no urine output, no PaO2, no band count):

- qSOFA (Seymour 2016): RR >= 22, SBP <= 100; no mentation term (range 0-2).
- SIRS (1992): temperature, heart rate, RR or PaCO2, WBC; no bands (range 0-4).
- NEWS2 (RCP 2017): RR, SpO2 scale 1, supplemental O2 (FiO2 > 0.21), SBP, pulse, temperature;
  no consciousness term (range 0-17).
- MEWS (Subbe 2001): SBP, HR, RR, temperature; no AVPU (range 0-11).
- SOFA (Vincent 1996): platelets, bilirubin, creatinine, MAP < 70, and respiration from the
  SpO2/FiO2 ratio (Rice 2007 cut-offs 512/357/214/89 standing in for PaO2/FiO2 400/300/200/100);
  no GCS, no vasopressor tiers (range 0-16).
- Shock index: HR / SBP.

Pure numpy, elementwise: a row's score depends on that row's inputs only, so the features built
from them stay causal and bit-identical between one patient and a batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCORE_INPUTS", "mews", "news2", "qsofa", "shock_index", "sirs", "sofa_partial"]

# The canonical variables each score reads, in argument order.
SCORE_INPUTS: dict[str, tuple[str, ...]] = {
    "qsofa": ("Resp", "SBP"),
    "sirs": ("Temp", "HR", "Resp", "PaCO2", "WBC"),
    "news2": ("Resp", "O2Sat", "FiO2", "SBP", "HR", "Temp"),
    "mews": ("SBP", "HR", "Resp", "Temp"),
    "sofa_partial": ("Platelets", "Bilirubin_total", "Creatinine", "MAP", "O2Sat", "FiO2"),
    "shock_index": ("HR", "SBP"),
}


def _points(x: np.ndarray, edges: tuple[float, ...], points: tuple[float, ...], *, right: bool) -> np.ndarray:
    """Points for the band `x` falls in; bands split at `edges` (a value equal to an edge goes to
    the upper band unless `right`); NaN scores 0."""
    x = np.asarray(x, dtype=np.float64)
    band = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left" if right else "right")
    out = np.asarray(points, dtype=np.float64)[np.minimum(band, len(points) - 1)]
    out[np.isnan(x)] = 0.0
    return out


def _flag(condition: np.ndarray) -> np.ndarray:
    return np.asarray(condition, dtype=np.float64)


def qsofa(resp: np.ndarray, sbp: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        score: np.ndarray = _flag(resp >= 22) + _flag(sbp <= 100)
    return score


def sirs(
    temp: np.ndarray, hr: np.ndarray, resp: np.ndarray, paco2: np.ndarray, wbc: np.ndarray
) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (
            _flag((temp > 38) | (temp < 36))
            + _flag(hr > 90)
            + _flag((resp > 20) | (paco2 < 32))
            + _flag((wbc > 12) | (wbc < 4))
        )


def news2(
    resp: np.ndarray, spo2: np.ndarray, fio2: np.ndarray, sbp: np.ndarray, hr: np.ndarray, temp: np.ndarray
) -> np.ndarray:
    # Integer-valued vitals banded on closed intervals, e.g. RR <= 8: 3, 9-11: 1, ...
    with np.errstate(invalid="ignore"):
        oxygen = 2.0 * _flag(fio2 > 0.21)
    return (
        _points(resp, (8, 11, 20, 24), (3, 1, 0, 2, 3), right=True)
        + _points(spo2, (91, 93, 95), (3, 2, 1, 0), right=True)
        + oxygen
        + _points(sbp, (90, 100, 110, 219), (3, 2, 1, 0, 3), right=True)
        + _points(hr, (40, 50, 90, 110, 130), (3, 1, 0, 1, 2, 3), right=True)
        + _points(temp, (35.0, 36.0, 38.0, 39.0), (3, 1, 0, 1, 2), right=True)
    )


def mews(sbp: np.ndarray, hr: np.ndarray, resp: np.ndarray, temp: np.ndarray) -> np.ndarray:
    return (
        _points(sbp, (70, 80, 100, 199), (3, 2, 1, 0, 2), right=True)
        + _points(hr, (40, 50, 100, 110, 129), (2, 1, 0, 1, 2, 3), right=True)
        + _points(resp, (9, 15, 21, 30), (2, 0, 1, 2, 3), right=False)
        + _points(temp, (35.0, 38.5), (2, 0, 2), right=False)
    )


def sofa_partial(
    platelets: np.ndarray,
    bilirubin: np.ndarray,
    creatinine: np.ndarray,
    map_: np.ndarray,
    spo2: np.ndarray,
    fio2: np.ndarray,
) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sf = spo2 / fio2
    sf = np.where(np.isfinite(sf), sf, np.nan)
    return (
        _points(platelets, (20, 50, 100, 150), (4, 3, 2, 1, 0), right=False)
        + _points(bilirubin, (1.2, 2.0, 6.0, 12.0), (0, 1, 2, 3, 4), right=False)
        + _points(creatinine, (1.2, 2.0, 3.5, 5.0), (0, 1, 2, 3, 4), right=False)
        + _points(map_, (70,), (1, 0), right=False)
        + _points(sf, (89, 214, 357, 512), (4, 3, 2, 1, 0), right=False)
    )


def shock_index(hr: np.ndarray, sbp: np.ndarray) -> np.ndarray:
    """HR / SBP; missing below 1 mmHg, where the ratio means nothing and a plausible-looking
    5e-324 would give 1e308, beyond what a float32 feature can hold (set A's lowest SBP is 22)."""
    sbp = np.asarray(sbp, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = np.asarray(hr, dtype=np.float64) / np.where(sbp >= 1.0, sbp, np.nan)
    out[~np.isfinite(out)] = np.nan
    return out
