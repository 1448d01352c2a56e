"""Conversion of a quantity to its variable's canonical UCUM unit.

Data, not code: `tables/unit_aliases.csv` turns the spellings EHRs send into UCUM codes, and
`tables/units.csv` gives, per variable, each accepted unit with `canonical = value * factor +
offset`. A unit equal to the variable's canonical unit needs no row. Anything else is refused
(UnitError), never passed through as if it were canonical.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import UnitError
from .variables import VARIABLES, variable

__all__ = ["Conversion", "UnitTable", "default_unit_table"]


@dataclass(frozen=True, slots=True)
class Conversion:
    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        if self.factor == 1.0 and self.offset == 0.0:
            return value
        return value * self.factor + self.offset


_IDENTITY = Conversion(1.0, 0.0)


class UnitTable:
    def __init__(self, conversions: dict[tuple[str, str], Conversion], aliases: dict[str, str]) -> None:
        self.conversions = conversions
        self.aliases = aliases
        self._folded = {k.casefold(): v for k, v in aliases.items()}
        self._cache: dict[tuple[str, str], Conversion | None] = {}
        self._fast: dict[tuple[str, Any], tuple[float, float] | None] = {}
        canonical = {v.unit.casefold() for v in VARIABLES}
        self._known = canonical | {u.casefold() for _, u in conversions} | set(self._folded)

    @classmethod
    def from_csv(cls, units_text: str, aliases_text: str) -> UnitTable:
        conversions = {
            (r["variable"], r["unit"]): Conversion(float(r["factor"]), float(r["offset"] or 0))
            for r in csv.DictReader(units_text.splitlines())
        }
        aliases = {r["alias"]: r["ucum"] for r in csv.DictReader(aliases_text.splitlines())}
        return cls(conversions, aliases)

    def known(self, unit: str) -> bool:
        """Whether `unit` is a spelling the tables know (a canonical unit, a converted unit or an
        alias): only such a unit read out of free text (valueString) is echoed in reports."""
        return unit.strip().casefold() in self._known

    def normalise(self, unit: str) -> str:
        unit = unit.strip()
        return self.aliases.get(unit) or self._folded.get(unit.casefold()) or unit

    def conversion(self, var: str, unit: str | None) -> Conversion:
        key = (var, unit or "")
        try:
            found = self._cache[key]
        except KeyError:
            found = self._cache[key] = self._find(var, unit)
        if found is None:
            raise UnitError(f"unit {unit!r} cannot be converted to {variable(var).unit!r} for {var}")
        return found

    def lookup(self, var: str, unit: Any) -> tuple[float, float] | None:
        """(factor, offset) for the hot path, or None when the unit cannot be converted."""
        key = (var, unit)
        try:
            return self._fast[key]
        except KeyError:
            pass
        found = self._find(var, unit) if unit is None or isinstance(unit, str) else None
        pair = (found.factor, found.offset) if found is not None else None
        if len(self._fast) < 10_000:
            self._fast[key] = pair
        return pair

    def _find(self, var: str, unit: str | None) -> Conversion | None:
        canonical = variable(var).unit
        if unit is None or unit == "":
            # Dimensionless variables (FiO2 as a fraction, pH) are often sent without a unit.
            return _IDENTITY if canonical in ("1", "[pH]") else None
        for candidate in (unit.strip(), self.normalise(unit)):
            if candidate == canonical:
                return _IDENTITY
            if (var, candidate) in self.conversions:
                return self.conversions[(var, candidate)]
        return None

    def to_canonical(self, var: str, value: float, unit: str | None) -> float:
        return self.conversion(var, unit).apply(value)

    def units_for(self, var: str) -> list[str]:
        return [variable(var).unit] + [u for (v, u) in self.conversions if v == var]


def default_unit_table() -> UnitTable:
    files = resources.files(__package__)
    return UnitTable.from_csv(
        files.joinpath("tables/units.csv").read_text(encoding="utf-8"),
        files.joinpath("tables/unit_aliases.csv").read_text(encoding="utf-8"),
    )
