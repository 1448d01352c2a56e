"""SHAP contributions grouped into clinical drivers, and the words a clinician reads for each.

A model sees one clinical variable through many features (its latest value, change since the
previous one, window statistics, hours since measured, measurements in 24 h); a clinician acts
on the variable. So every feature's exact TreeSHAP contribution is summed into its variable's
driver (nothing dropped: base value + drivers = the model's margin), and the driver is named by
its physiology with its latest value, unit, time and direction ("Lactate 3.1 mmol/L, 2 h ago,
rising"). A driver whose variable was not measured (or not in the last 24 h) is worded apart
("no lactate in 24 h"): the score then leans on a gap, not on a value.

Pure and shared by the cards (hooks) and the SMART app's page (cds.smart), so both say the same.
A feature's variable is its name before `__` (the hourly ICU set: `Lactate__max_24h`); features
without `__` (the discharge set, demographics) are their own variable.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CONTEXT_SUFFIXES",
    "ClinicalDriver",
    "Contribution",
    "FeatureShare",
    "context_features",
    "driver_parts",
    "driver_phrase",
    "gap_phrase",
    "group_contributions",
    "split_drivers",
    "value_words",
    "variable_of",
]

# The features that say what a driver's variable was and when (recorded with a card even at 0 SHAP).
CONTEXT_SUFFIXES = ("last", "hours_since", "delta_prev", "count_24h")
UNIT_DISPLAY = {
    "Cel": "°C",
    "mm[Hg]": "mmHg",
    "10*3/uL": "×10³/µL",
    "[pH]": "",
    "1": "",
    "a": "years",
}
_A1C = {0: "below 7 %", 1: "7-8 %", 2: "above 8 %"}
_GLUCOSE = {0: "below 200 mg/dL", 1: "200-300 mg/dL", 2: "above 300 mg/dL"}
_DRUG = {0: "not given", 1: "dose unchanged", 2: "dose increased", 3: "dose decreased"}
_WORDED_UNITS = {"flag", "sex", "age-band", "d", "band-a1c", "band-glucose", "drug-status", "count", "points"}
_YES_NO = {"Unit1", "Unit2"}
_STEADY = 0.005  # a change below 0.5 % of the latest value reads as unchanged


class Contribution(Protocol):
    """One feature's exact SHAP contribution (models.Contribution satisfies it)."""

    @property
    def feature(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def shap(self) -> float: ...


@dataclass(frozen=True, slots=True)
class FeatureShare:
    """A contribution read back from a stored record (a RiskAssessment extension)."""

    feature: str
    label: str
    unit: str
    value: float | None
    shap: float


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def variable_of(feature: str) -> str:
    return feature.split("__", 1)[0]


@dataclass(frozen=True)
class ClinicalDriver:
    """One clinical variable: its features' contributions summed (log-odds), and what was measured."""

    variable: str
    label: str
    unit: str
    value: float | None  # the latest value (None: never measured, or not recorded with the card)
    hours_ago: float | None
    change: float | None  # latest minus the previous measurement
    count_24h: float | None
    shap: float
    features: tuple[Contribution, ...]
    value_known: bool  # False when the latest-value feature is not among the features (not recorded)

    @property
    def measured(self) -> bool:
        """False when the variable has no value at all: the score leans on its absence."""
        if self.value_known:
            return not _missing(self.value)
        # Without it, any value but a count (0 when never measured) says it was measured.
        return any(not _missing(c.value) for c in self.features if not c.feature.endswith("__count_24h"))

    @property
    def recent(self) -> bool:
        """Measured, and (where the model counts them) at least once in the last 24 h."""
        return self.measured and (self.count_24h is None or self.count_24h > 0)

    @property
    def direction(self) -> str | None:
        if _missing(self.change) or _missing(self.value):
            return None
        assert self.change is not None and self.value is not None
        if abs(self.change) <= _STEADY * max(abs(self.value), 1e-9):
            return "unchanged"
        return "rising" if self.change > 0 else "falling"


def _label_unit(
    variable: str, features: Sequence[Contribution], labels: Mapping[str, tuple[str, str]]
) -> tuple[str, str]:
    last = f"{variable}__last"
    for c in features:
        if c.feature in (last, variable):
            return c.label, c.unit
    if last in labels:
        return labels[last]
    label, unit = features[0].label, features[0].unit
    return label.split(":")[0].split(",")[0].strip(), unit


def group_contributions(
    contributions: Iterable[Contribution], labels: Mapping[str, tuple[str, str]] | None = None
) -> list[ClinicalDriver]:
    """Every contribution in exactly one driver, largest |sum| first. `labels` (feature -> (label,
    unit)) names a variable whose latest-value feature is not among the contributions."""
    grouped: dict[str, list[Contribution]] = {}
    for c in contributions:
        grouped.setdefault(variable_of(c.feature), []).append(c)
    drivers = []
    for variable, features in grouped.items():
        by_suffix = {c.feature.split("__", 1)[1]: c for c in features if "__" in c.feature}
        own = next((c for c in features if c.feature == variable), None)
        latest = by_suffix.get("last", own)
        label, unit = _label_unit(variable, features, labels or {})

        def known(suffix: str, found: Mapping[str, Contribution] = by_suffix) -> float | None:
            c = found.get(suffix)
            return None if c is None or _missing(c.value) else c.value

        drivers.append(
            ClinicalDriver(
                variable=variable,
                label=label,
                unit=unit,
                value=None if latest is None or _missing(latest.value) else latest.value,
                hours_ago=known("hours_since"),
                change=known("delta_prev"),
                count_24h=known("count_24h") if "count_24h" in by_suffix else None,
                shap=math.fsum(c.shap for c in features),
                features=tuple(sorted(features, key=lambda c: -abs(c.shap))),
                value_known=latest is not None,
            )
        )
    drivers.sort(key=lambda d: (-abs(d.shap), d.variable))
    return drivers


def context_features(
    variables: Iterable[str], names: Collection[str], suffixes: Sequence[str] = CONTEXT_SUFFIXES
) -> set[str]:
    """The features (among `names`) that say what each variable was and when."""
    chosen = set(variables)
    wanted = {f"{v}__{s}" for v in chosen for s in suffixes} | chosen
    return {n for n in names if n in wanted}


def value_words(feature: str, value: float | None, unit: str) -> str:
    """A value as a clinician writes it, by the unit its feature spec gives it."""
    if _missing(value):
        return "not measured"
    assert value is not None
    if feature == "Gender" or unit == "sex":
        return "male" if value >= 0.5 else "female"
    if feature in _YES_NO or unit == "flag":
        return "yes" if value >= 0.5 else "no"
    if unit == "age-band":
        return "90 years or older" if value >= 90 else f"{int(value)}-{int(value) + 9} years"
    if unit == "d":
        return f"{value:.0f} day{'s' if value != 1 else ''}"
    if unit == "band-a1c":
        return _A1C.get(int(value), "recorded")
    if unit == "band-glucose":
        return _GLUCOSE.get(int(value), "recorded")
    if unit == "drug-status":
        return _DRUG.get(int(value), "recorded")
    if unit in ("count", "points"):
        return f"{value:.0f}"
    magnitude = abs(value)
    text = (
        f"{value:.0f}"
        if magnitude >= 100 or float(value).is_integer()
        else f"{value:.3g}"
        if magnitude < 1
        else f"{value:.1f}"
    )
    return f"{text} {UNIT_DISPLAY.get(unit, unit)}".strip()


def _ago(hours: float) -> str:
    return "this hour" if hours < 1 else f"{hours:.0f} h ago"


def _named(label: str) -> str:
    """'Lactate' -> 'lactate' inside a sentence; acronyms (SpO2, AST, FiO2) keep their case."""
    label = label.removeprefix("Highest ")  # 'Highest HbA1c' not measured: no HbA1c at all
    word = label.split(" ", 1)[0]
    if any(ch.isupper() or ch.isdigit() for ch in word[1:]):
        return label
    return label[:1].lower() + label[1:]


def driver_parts(d: ClinicalDriver) -> tuple[str, tuple[str, ...]]:
    """('Lactate 3.1 mmol/L', ('2 h ago', 'rising')); worded values as 'Insulin: dose increased'."""
    if not d.measured:
        return gap_phrase(d), ()
    if d.value is None:
        return f"{d.label} (latest value not recorded with this card)", ()
    words = value_words(d.variable, d.value, d.unit)
    worded = d.unit in _WORDED_UNITS or d.variable in _YES_NO or d.variable == "Gender"
    rest = []
    if d.hours_ago is not None:
        rest.append(_ago(d.hours_ago))
    if d.direction is not None:
        rest.append(d.direction)
    return (f"{d.label}: {words}" if worded else f"{d.label} {words}"), tuple(rest)


def driver_phrase(d: ClinicalDriver) -> str:
    """'Lactate 3.1 mmol/L, 2 h ago, rising'."""
    head, rest = driver_parts(d)
    return ", ".join((head, *rest))


def gap_phrase(d: ClinicalDriver) -> str:
    """What was not measured: 'no lactate measured this stay', 'no lactate in 24 h (last 40 h ago)'."""
    if not d.measured:
        return f"no {_named(d.label)} measured this stay"
    when = f" (last {_ago(d.hours_ago)})" if d.hours_ago is not None else ""
    return f"no {_named(d.label)} in 24 h{when}"


def split_drivers(
    drivers: Sequence[ClinicalDriver], k: int, *, min_abs: float = 0.0
) -> tuple[list[ClinicalDriver], list[ClinicalDriver]]:
    """The `k` largest drivers measured recently, and the `k` largest that are gaps in the data."""
    big = [d for d in drivers if abs(d.shap) > min_abs]
    return [d for d in big if d.recent][:k], [d for d in big if not d.recent][:k]
