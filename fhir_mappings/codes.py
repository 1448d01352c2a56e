"""Which coded Observation means which canonical variable.

The mapping is data: `tables/observation_codes.csv` (variable, system, code, category, priority,
display). An integration analyst adds a row for a local code; no code changes.

Rules, in order:
- a row with a `category` applies only to Observations carrying that category (so LOINC 2708-6
  is SpO2 when sent as a vital sign, arterial SaO2 when sent as a laboratory result);
- when an Observation's codings map to several variables, the lowest `priority` wins (US Core
  pulse oximetry carries both 59408-5 and 2708-6 and means SpO2).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .variables import CLINICAL_VARIABLES

__all__ = ["CodeRow", "CodeTable", "default_code_table"]


@dataclass(frozen=True, slots=True)
class CodeRow:
    variable: str
    system: str
    code: str
    category: str | None
    priority: int
    display: str

    @classmethod
    def from_csv(cls, r: Mapping[str, str]) -> CodeRow:
        """One row of `observation_codes.csv` or `local_codes.csv` (extra columns ignored)."""
        return cls(
            variable=r["variable"],
            system=r["system"],
            code=r["code"],
            category=r["category"] or None,
            priority=int(r["priority"] or 1),
            display=r["display"],
        )


class CodeTable:
    """Look-up of (system, code[, category]) -> variable."""

    def __init__(self, rows: Iterable[CodeRow]) -> None:
        self.rows = tuple(rows)
        self._index: dict[tuple[str, str], list[CodeRow]] = {}
        self._lookup_cache: dict[tuple[tuple[Any, Any], ...], str | None] = {}
        for row in self.rows:
            if row.variable not in CLINICAL_VARIABLES:
                raise ValueError(f"observation code table names unknown variable {row.variable!r}")
            self._index.setdefault((row.system, row.code), []).append(row)

    @classmethod
    def from_csv(cls, text: str) -> CodeTable:
        return cls(CodeRow.from_csv(r) for r in csv.DictReader(text.splitlines()))

    def extended(self, rows: Iterable[CodeRow]) -> CodeTable:
        return CodeTable((*self.rows, *rows))

    # `lookup` answers this when the Observation's categories decide (see `match`).
    BY_CATEGORY = "<by-category>"

    def lookup(self, codings: tuple[tuple[Any, Any], ...]) -> str | None:
        """The variable these (system, code) pairs mean regardless of category, None, or
        `BY_CATEGORY`. Memoised: an EHR sends the same few codings over and over."""
        try:
            return self._lookup_cache[codings]
        except KeyError:
            pass
        rows = [row for key in codings for row in self._index.get(key, ())]
        found: str | None
        if any(row.category is not None for row in rows):
            found = self.BY_CATEGORY
        else:
            found = min(rows, key=lambda r: r.priority).variable if rows else None
        if len(self._lookup_cache) < 50_000:
            self._lookup_cache[codings] = found
        return found

    def match(self, codings: Iterable[tuple[Any, Any]], categories: frozenset[str]) -> str | None:
        """The variable that these (system, code) pairs mean, or None."""
        best: CodeRow | None = None
        for key in codings:
            for row in self._index.get(key, ()):
                if row.category is not None and row.category not in categories:
                    continue
                if best is None or row.priority < best.priority:
                    best = row
        return best.variable if best else None

    def codes_for(self, variable: str) -> list[CodeRow]:
        return [r for r in self.rows if r.variable == variable]


def default_code_table() -> CodeTable:
    text = resources.files(__package__).joinpath("tables/observation_codes.csv").read_text(encoding="utf-8")
    return CodeTable.from_csv(text)
