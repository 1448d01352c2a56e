"""Observation -> canonical measurements (time, variable, value in the canonical unit).

One Observation can give several measurements: a blood-pressure panel (85354-9, or Synthea's
55284-4) gives SBP and DBP from its components. What cannot be used is counted by reason in a
`MappingReport`, never silently dropped and never guessed:

- status not in the profile's valid statuses (final, amended, corrected; preliminary only when a
  profile says so) -> `status:<status>`;
- no usable time -> `no-time` / `bad-time`; effective[x] (dateTime, instant, a period's end, else
  its start) is when the value was true, `issued` is used only when effective[x] is absent;
- `dataAbsentReason` -> `data-absent`; valueCodeableConcept / valueBoolean / a non-number ->
  `non-numeric`; a quantity with a comparator (`<0.01`) -> `comparator` (a limit, not a value);
- `valueString` (MEDITECH sends some results so: "45.0 %", "15.0 gm/L", "4.0") is read as a number
  and an optional unit; anything else in the string -> `string-not-a-number`, a leading `<`/`>` ->
  `comparator`; the string itself is never echoed, and a unit in it only when it is one the unit
  tables know (else `<unrecognised>`);
- a value without a unit takes the unit its code fixes (`implied_unit` in observation_codes.csv:
  heart rate in /min, potassium in mmol/L ...), else it is a unit error `<variable>|<none>`;
- a local code that disagrees with the standard code beside it -> the standard code's variable,
  and the disagreement counted in `code_conflicts` (see codes.py);
- a unit the profile's unit table cannot convert -> `unit_errors["<variable>|<unit>"]`;
- a value outside its variable's plausibility range once in the canonical unit (HR -50 /min,
  Temp 1e6 Cel, a number too large for a float) -> `implausible["<variable>"]`;
- a code no table row maps -> `unmapped_codes["<system>|<code>"]`.

Speed: this is the hot path of every hook call (~700 Observations), so it reads plain JSON dicts
with a few `get`s, and memoises the three things that repeat across Observations: parsed
timestamps, (codings, categories) -> variable, and (variable, unit) -> conversion. Malformed
resources (a field of the wrong JSON type) are counted as `malformed`, never raised.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .codes import CodeMatch
from .errors import MappingError
from .profiles import VendorProfile
from .resources import parse_datetime
from .variables import PLAUSIBLE_RANGES

__all__ = ["MappingReport", "Measurement", "measurements_from_observation", "observation_time"]

UCUM = "http://unitsofmeasure.org"
_NON_NUMERIC = ("valueCodeableConcept", "valueBoolean", "valueInteger", "valueRange", "valueRatio")
# A number, then an optional unit: "45.0 %", "15.0 gm/L", "4.0", "1.2e3 /uL".
_STRING_VALUE = re.compile(
    r"^\s*(?P<cmp><=|>=|<|>)?\s*(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?)\s*(?P<unit>\S.{0,39})?$"
)
_STRING_MAX = 64  # a result string longer than this is a note, not a value
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.:/\[\]{}%*^+\-]{1,80}$")
_TIME_CACHE: dict[str, tuple[datetime, float]] = {}
_TIME_CACHE_MAX = 200_000
_RANGES = PLAUSIBLE_RANGES


def safe_token(text: Any) -> str:
    """A code, system or unit as it may appear in reports and logs: free text is never echoed.

    Codes and units are short tokens; anything else (spaces, long strings) could be a name or a
    note put in the wrong field, so it is replaced by a marker.
    """
    if isinstance(text, str) and _SAFE_TOKEN.match(text):
        return text
    return "<none>" if text is None or text == "" else "<free-text>"


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
    mapped: Counter[str] = field(default_factory=Counter)  # variable -> measurements
    implausible: Counter[str] = field(default_factory=Counter)  # variable -> values out of range
    code_conflicts: Counter[str] = field(default_factory=Counter)  # local vs standard code -> count

    def as_dict(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "measurements": self.measurements,
            "skipped": dict(self.skipped),
            "unmapped_codes": dict(self.unmapped_codes),
            "unit_errors": dict(self.unit_errors),
            "implausible": dict(self.implausible),
            "code_conflicts": dict(self.code_conflicts),
        }

    def merge(self, other: MappingReport) -> None:
        self.observations += other.observations
        self.measurements += other.measurements
        self.skipped.update(other.skipped)
        self.unmapped_codes.update(other.unmapped_codes)
        self.unit_errors.update(other.unit_errors)
        self.mapped.update(other.mapped)
        self.implausible.update(other.implausible)
        self.code_conflicts.update(other.code_conflicts)


def _parse_time(text: Any, path: str) -> tuple[datetime, float]:
    got = _TIME_CACHE.get(text) if isinstance(text, str) else None
    if got is None:
        when = parse_datetime(text, path)
        got = (when, when.timestamp())
        if len(_TIME_CACHE) >= _TIME_CACHE_MAX:
            _TIME_CACHE.clear()
        _TIME_CACHE[text] = got
    return got


def _time(obs: Mapping[str, Any]) -> tuple[datetime, float] | None:
    text = obs.get("effectiveDateTime")
    if text is not None:
        return _parse_time(text, "Observation.effectiveDateTime")
    text = obs.get("effectiveInstant")
    if text is not None:
        return _parse_time(text, "Observation.effectiveInstant")
    period = obs.get("effectivePeriod")
    if isinstance(period, Mapping):
        for key in ("end", "start"):
            if period.get(key):
                return _parse_time(period[key], f"Observation.effectivePeriod.{key}")
    if obs.get("issued"):
        return _parse_time(obs["issued"], "Observation.issued")
    return None


def observation_time(obs: Mapping[str, Any]) -> datetime | None:
    """When the value was true: effective[x] (a period's end, when it is known), else `issued`."""
    got = _time(obs)
    return got[0] if got is not None else None


def _coding_key(concept: Any) -> tuple[tuple[Any, Any], ...]:
    codings = concept.get("coding") if type(concept) is dict or isinstance(concept, Mapping) else None
    if not codings:
        return ()
    if len(codings) == 1:
        c = codings[0]
        return ((c.get("system"), c.get("code")),)
    return tuple((c.get("system"), c.get("code")) for c in codings)


def _category_codes(obs: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for concept in obs.get("category") or ():
        for c in concept.get("coding") or ():
            code = c.get("code")
            if isinstance(code, str):
                found.add(code)
    return frozenset(found)


def _string_value(text: Any) -> tuple[float, Any, bool] | str:
    """(value, unit or None, True) from a valueString, or a skip reason."""
    if not isinstance(text, str) or len(text) > _STRING_MAX:
        return "string-not-a-number"
    m = _STRING_VALUE.match(text)
    if m is None:
        return "string-not-a-number"
    if m["cmp"]:
        return "comparator"
    value = float(m["num"])
    if not math.isfinite(value):
        return "string-not-a-number"
    return value, m["unit"].strip() if m["unit"] else None, True


_UNRECOGNISED = "<unrecognised>"  # a unit read out of free text that the unit tables do not know


def _value(part: Mapping[str, Any]) -> tuple[float, Any, bool] | str:
    """(value, unit, whether the unit was read out of free text) or a skip reason."""
    q = part.get("valueQuantity")
    if q is None:
        if "dataAbsentReason" in part:
            return "data-absent"
        if "valueString" in part:
            return _string_value(part["valueString"])
        if any(k in part for k in _NON_NUMERIC):
            return "non-numeric"
        return "no-value"
    value = q.get("value")
    kind = type(value)
    if kind is not float and kind is not int and (kind is bool or not isinstance(value, int | float)):
        return "non-numeric"  # a string, a bool, null (numpy numbers from our own converters pass)
    if kind is not int and not math.isfinite(value):
        return "non-numeric"
    if q.get("comparator") is not None:
        return "comparator"
    unit = q.get("code") if q.get("system") == UCUM else None
    if unit is None:
        unit = q.get("unit")
        if unit is None:
            unit = q.get("code")
    try:
        return float(value), unit, False
    except OverflowError:  # a JSON integer beyond any float (10**400): certainly out of range
        return (math.inf if value > 0 else -math.inf), unit, False


def scan_observation(
    obs: Mapping[str, Any], profile: VendorProfile, report: MappingReport, out: list[tuple[Any, ...]]
) -> None:
    """Append (timestamp, variable, value, resource id, component index, datetime) for each
    usable value of one Observation to `out`; count everything else in `report`.

    The usual shape (plain dicts: an effectiveDateTime seen before, one coding, a quantity with a
    float) is read inline, ~8 % fewer instructions; any other goes through `_time`, `_coding_key`
    and `_value`, which answer the same for it (tests/fhir_mappings/test_scan_paths.py)."""
    report.observations += 1
    try:
        status = obs.get("status")
        if status not in profile.valid_statuses:
            report.skipped[f"status:{safe_token(status)}"] += 1
            return
        text = obs.get("effectiveDateTime")
        when = _TIME_CACHE.get(text) if type(text) is str else None
        if when is None:
            try:
                when = _time(obs)
            except MappingError:
                report.skipped["bad-time"] += 1
                return
            if when is None:
                report.skipped["no-time"] += 1
                return
        codes = profile.codes
        rid = obs.get("id")
        if type(rid) is not str and not isinstance(rid, str):
            rid = ""
        concept = obs.get("code")
        codings = concept.get("coding") if type(concept) is dict else None
        if type(codings) is list and len(codings) == 1:
            c = codings[0]
            key: tuple[tuple[Any, Any], ...] = ((c.get("system"), c.get("code")),)
        else:
            key = _coding_key(concept)
        got = codes.lookup(key)
        if got is codes.BY_CATEGORY:
            got = codes.match(key, _category_codes(obs))
        components = obs.get("component")
        found = 0
        if got.variable is not None:
            found = 1
            _emit(obs, got, -1, when, rid, profile.units, report, out)
        if components:
            # Panels (blood pressure) and US Core pulse oximetry (FiO2 as a component).
            for index, part in enumerate(components):
                ckey = _coding_key(part.get("code"))
                cgot = codes.lookup(ckey)
                if cgot is codes.BY_CATEGORY:
                    cgot = codes.match(ckey, _category_codes(obs))
                if cgot.variable is not None:
                    found += 1
                    _emit(part, cgot, index, when, rid, profile.units, report, out)
        if not found:
            system, code = key[0] if key else (None, None)
            report.unmapped_codes[f"{safe_token(system)}|{safe_token(code)}"] += 1
    except (AttributeError, TypeError, KeyError, IndexError, ValueError, OverflowError):
        report.skipped["malformed"] += 1


def _emit(
    part: Mapping[str, Any],
    got: CodeMatch,
    index: int,
    when: tuple[datetime, float],
    rid: str,
    units: Any,
    report: MappingReport,
    out: list[tuple[Any, ...]],
) -> None:
    if got.conflict is not None:
        report.code_conflicts[got.conflict] += 1
    q: Any = part.get("valueQuantity")
    value = q.get("value") if type(q) is dict else None
    if type(value) is float and math.isfinite(value):
        # The usual shape, read inline: what `_value` answers for a quantity with a finite float.
        if q.get("comparator") is not None:
            report.skipped["comparator"] += 1
            return
        sent = q.get("code") if q.get("system") == UCUM else None
        if sent is None:
            sent = q.get("unit")
            if sent is None:
                sent = q.get("code")
        from_text = False
    else:
        read = _value(part)
        if isinstance(read, str):
            report.skipped[read] += 1
            return
        value, sent, from_text = read
    var = got.variable
    assert var is not None  # only matched codes are emitted
    unit = sent
    if unit is None and got.row is not None and got.row.implied_unit is not None:
        unit = got.row.implied_unit  # the code fixes the unit (potassium in mmol/L)
    conversion = units.lookup(var, unit)
    if conversion is None:
        # Free text is never echoed: a unit read out of a valueString only when the tables know it.
        shown = (
            _UNRECOGNISED if from_text and sent is not None and not units.known(sent) else safe_token(sent)
        )
        report.unit_errors[f"{var}|{shown}"] += 1
        return
    factor, offset = conversion
    if offset or factor != 1.0:
        value = value * factor + offset
    bounds = _RANGES.get(var)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        report.implausible[var] += 1
        return
    out.append((when[1], var, value, rid, index, when[0]))
    report.measurements += 1
    report.mapped[var] += 1


def measurements_from_observation(
    obs: Mapping[str, Any], profile: VendorProfile, report: MappingReport
) -> list[Measurement]:
    out: list[tuple[Any, ...]] = []
    scan_observation(obs, profile, report, out)
    return [Measurement(dt, var, value, (rid, index)) for _, var, value, rid, index, dt in out]
