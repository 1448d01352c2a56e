"""Observation -> canonical measurements (time, variable, value in the canonical unit).

One Observation can give several measurements: a blood-pressure panel gives SBP and DBP from its
components. What cannot be used is counted by reason in a `MappingReport`, never silently
dropped and never guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import MappingError
from .profiles import VendorProfile
from .resources import categories, codings, parse_datetime

__all__ = ["MappingReport", "Measurement", "measurements_from_observation", "observation_time"]

UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class Measurement:
    time: datetime
    variable: str
    value: float
    order: tuple[str, int]  # (resource id, component index): a stable tie-break within one instant


@dataclass
class MappingReport:
    """What happened to each input resource: counts only, no values, no identities."""

    observations: int = 0
    measurements: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    unmapped_codes: Counter[str] = field(default_factory=Counter)  # "system|code" -> count
    unit_errors: Counter[str] = field(default_factory=Counter)  # "variable|unit" -> count

    def as_dict(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "measurements": self.measurements,
            "skipped": dict(self.skipped),
            "unmapped_codes": dict(self.unmapped_codes),
            "unit_errors": dict(self.unit_errors),
        }


def observation_time(obs: Mapping[str, Any]) -> datetime | None:
    """When the value was true: effective[x] (a period's end, when it is known), else `issued`."""
    if "effectiveDateTime" in obs:
        return parse_datetime(obs["effectiveDateTime"], "Observation.effectiveDateTime")
    if "effectiveInstant" in obs:
        return parse_datetime(obs["effectiveInstant"], "Observation.effectiveInstant")
    period = obs.get("effectivePeriod")
    if isinstance(period, Mapping):
        for key in ("end", "start"):
            if period.get(key):
                return parse_datetime(period[key], f"Observation.effectivePeriod.{key}")
    if obs.get("issued"):
        return parse_datetime(obs["issued"], "Observation.issued")
    return None


def _quantity(element: Mapping[str, Any]) -> tuple[float, str | None] | str:
    """(value, unit) or a skip reason."""
    if "dataAbsentReason" in element and "valueQuantity" not in element:
        return "data-absent"
    q = element.get("valueQuantity")
    if not isinstance(q, Mapping):
        return "no-quantity"
    value = q.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "non-numeric"
    unit = q.get("code") if q.get("system") == UCUM and isinstance(q.get("code"), str) else None
    if unit is None:
        unit = q.get("unit") if isinstance(q.get("unit"), str) else q.get("code")
    return float(value), unit if isinstance(unit, str) else None


def measurements_from_observation(
    obs: Mapping[str, Any], profile: VendorProfile, report: MappingReport
) -> list[Measurement]:
    report.observations += 1
    status = obs.get("status")
    if status not in profile.valid_statuses:
        report.skipped[f"status:{status}"] += 1
        return []
    try:
        when = observation_time(obs)
    except MappingError:
        report.skipped["bad-time"] += 1
        return []
    if when is None:
        report.skipped["no-time"] += 1
        return []
    cats = categories(obs)
    rid = obs.get("id") if isinstance(obs.get("id"), str) else ""
    out: list[Measurement] = []
    parts: list[tuple[int, Mapping[str, Any]]] = [(-1, obs)]
    parts += [(i, c) for i, c in enumerate(obs.get("component") or ()) if isinstance(c, Mapping)]
    any_mapped = False
    for index, part in parts:
        codes = list(codings(part.get("code")))
        var = profile.codes.match(codes, cats)
        if var is None:
            if index == -1 and not parts[1:]:
                for system, code in codes[:1]:
                    report.unmapped_codes[f"{system}|{code}"] += 1
            continue
        any_mapped = True
        got = _quantity(part)
        if isinstance(got, str):
            report.skipped[got] += 1
            continue
        value, unit = got
        try:
            conversion = profile.units.conversion(var, unit)
        except MappingError:
            report.unit_errors[f"{var}|{unit}"] += 1
            continue
        out.append(Measurement(when, var, conversion.apply(value), (rid, index)))
    if not any_mapped and parts[1:]:
        for system, code in list(codings(obs.get("code")))[:1]:
            report.unmapped_codes[f"{system}|{code}"] += 1
    report.measurements += len(out)
    return out
