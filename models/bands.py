"""Risk bands, what each one means for the clinician, and how well each did on validation data.

Above the model's alert threshold (chosen on utility) a score is an alert; only a band whose
positive predictive value, measured on validation data, reaches `CRITICAL_PPV` justifies
interrupting the clinician (CDS Hooks `critical`). So training measures every band's PPV and
sensitivity on the data it chose the threshold on (`BandReport`, stored in the manifest) and,
when the data shows one, adds a `very-high` band at the lowest score from which PPV reaches the
target. A site replaces the bands with its own (from its go-live report, `CDS_RISK_BANDS`);
each level is then judged from the site's own PPV.

Sensitivity of a band: the share of all positives scored in that band or above (the sensitivity
of alerting from that band up). PPV: the share of positives among those scored in the band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = [
    "ALERT",
    "BELOW",
    "Band",
    "BandReport",
    "BandStats",
    "CRITICAL_PPV",
    "INTERRUPT",
    "MIN_INTERRUPT_POSITIVES",
    "RiskBands",
    "band_report",
    "interrupt_bound",
    "with_interrupt_band",
]

CRITICAL_PPV = 0.3  # the PPV from which a band may interrupt (CDS Hooks `critical`)
MIN_INTERRUPT_POSITIVES = 30  # a PPV measured on fewer positives does not justify a new band
BELOW, ALERT, INTERRUPT = "below", "alert", "interrupt"  # levels, mapped to card indicators by hooks
VERY_HIGH = "very-high"


class BandStats(BaseModel):
    """One band on validation data (no PHI: counts and rates)."""

    model_config = ConfigDict(frozen=True)

    name: str
    lower: float
    rows: int  # scored rows (ICU hours, discharges) in the band
    positives: int
    ppv: float | None  # None for an empty band
    sensitivity: float  # positives scored in this band or above / all positives


class BandReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    measured_on: str  # which data, in words
    rows: int
    positives: int
    critical_ppv: float
    bands: list[BandStats]

    def stats(self, name: str) -> BandStats | None:
        return next((b for b in self.bands if b.name == name), None)


def interrupt_bound(
    probability: np.ndarray,
    label: np.ndarray,
    threshold: float,
    *,
    critical_ppv: float = CRITICAL_PPV,
    min_positives: int = MIN_INTERRUPT_POSITIVES,
) -> float | None:
    """The lowest score at or above `threshold` from which the PPV of everything scored that high
    reaches `critical_ppv` on at least `min_positives` positives; None when no such score exists."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    # Cut only between distinct scores: everything scored at a cut is in the band.
    last_of_value = np.r_[p[1:] != p[:-1], True]
    positives = np.cumsum(y)
    count = np.arange(1, len(p) + 1)
    ok = last_of_value & (p >= threshold) & (positives >= min_positives) & (positives >= critical_ppv * count)
    if not ok.any():
        return None
    return float(p[np.flatnonzero(ok)[-1]])


def with_interrupt_band(
    bands: Mapping[str, float],
    probability: np.ndarray,
    label: np.ndarray,
    threshold: float,
    *,
    critical_ppv: float = CRITICAL_PPV,
) -> dict[str, float]:
    """`bands` plus a `very-high` band where the validation data shows a PPV worth interrupting for."""
    out = dict(bands)
    bound = interrupt_bound(probability, label, threshold, critical_ppv=critical_ppv)
    if bound is not None and bound > max(out.values()):
        out[VERY_HIGH] = round(bound, 6)
    return out


def band_report(
    bands: Mapping[str, float],
    probability: np.ndarray,
    label: np.ndarray,
    *,
    measured_on: str,
    critical_ppv: float = CRITICAL_PPV,
) -> BandReport:
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(label).astype(bool)
    ordered = sorted(bands.items(), key=lambda kv: kv[1])
    total = int(y.sum())
    stats = []
    for i, (name, lower) in enumerate(ordered):
        upper = ordered[i + 1][1] if i + 1 < len(ordered) else np.inf
        inside = (p >= lower) & (p < upper)
        rows, positives = int(inside.sum()), int(y[inside].sum())
        stats.append(
            BandStats(
                name=name,
                lower=float(lower),
                rows=rows,
                positives=positives,
                ppv=round(positives / rows, 4) if rows else None,
                sensitivity=round(int(y[p >= lower].sum()) / total, 4) if total else 0.0,
            )
        )
    return BandReport(
        measured_on=measured_on, rows=len(p), positives=total, critical_ppv=critical_ppv, bands=stats
    )


@dataclass(frozen=True)
class Band:
    name: str
    lower: float
    level: str  # BELOW | ALERT | INTERRUPT
    ppv: float | None
    sensitivity: float | None


@dataclass(frozen=True)
class RiskBands:
    """The bands a model serves with: its manifest's, or the site's."""

    bands: tuple[Band, ...]  # ascending lower bounds, the first at 0
    measured_on: str  # where each band's PPV and sensitivity come from
    critical_ppv: float

    @staticmethod
    def level_of(lower: float, ppv: float | None, threshold: float, critical_ppv: float) -> str:
        if lower < threshold:
            return BELOW
        return INTERRUPT if ppv is not None and ppv >= critical_ppv else ALERT

    @classmethod
    def build(
        cls,
        entries: Sequence[tuple[str, float, float | None, float | None]],
        *,
        threshold: float,
        measured_on: str,
        critical_ppv: float = CRITICAL_PPV,
    ) -> RiskBands:
        """`entries`: (name, lower bound, PPV, sensitivity); checked here, whoever gave them."""
        ordered = sorted(entries, key=lambda e: e[1])
        names = [e[0] for e in ordered]
        if not ordered or ordered[0][1] != 0.0:
            raise ValueError("risk bands must start with a band whose lower bound is 0")
        if len(set(names)) != len(names) or len({e[1] for e in ordered}) != len(ordered):
            raise ValueError("risk band names and lower bounds must be unique")
        for name, lower, ppv, sensitivity in ordered:
            if not 0.0 <= lower < 1.0:
                raise ValueError(f"risk band {name!r}: lower bound {lower} is not in [0, 1)")
            for what, v in (("PPV", ppv), ("sensitivity", sensitivity)):
                if v is not None and not 0.0 <= v <= 1.0:
                    raise ValueError(f"risk band {name!r}: {what} {v} is not in [0, 1]")
        return cls(
            tuple(
                Band(n, float(lo), cls.level_of(lo, ppv, threshold, critical_ppv), ppv, sens)
                for n, lo, ppv, sens in ordered
            ),
            measured_on,
            critical_ppv,
        )

    def band(self, probability: float) -> Band:
        """The highest band whose lower bound the probability reaches."""
        chosen = self.bands[0]
        for b in self.bands:
            if probability >= b.lower:
                chosen = b
        return chosen

    def named(self, name: str) -> Band | None:
        return next((b for b in self.bands if b.name == name), None)
