"""Which coded Observation means which canonical variable.

The mapping is data: `tables/observation_codes.csv` holds the standard (LOINC) rows and
`tables/local_codes.csv` a vendor profile's local codes (Cerner event codes, Epic flowsheet rows),
each with its source and a status. An integration analyst adds a row; no code changes.

Rules, in order:
- a row with a `category` applies only to Observations carrying that category (so LOINC 2708-6
  is SpO2 when sent as a vital sign, arterial SaO2 when sent as a laboratory result);
- **a standard code wins**: when an Observation carries a standard coding that maps, local rows
  are not consulted for its variable; a local row that names another variable is a *conflict*,
  counted and reported (`MappingReport.code_conflicts`), never silently applied. Local rows are the
  fallback for resources without a mapped standard code;
- among rows of the same kind, the lowest `priority` wins (US Core pulse oximetry carries both
  59408-5 and 2708-6 and means SpO2);
- a local row's system may hold `*` for one segment that differs per site or tenant
  (`https://fhir.cerner.com/*/codeSet/72`, `urn:oid:1.2.840.114350.1.13.*.*.7.2.707679`);
- a row whose status is `unverified` is listed (docs, `cds map`) but never applied: a code nobody
  confirmed must not decide what a value means. An analyst sets it to `site-confirmed` once the
  site confirms it.

A **site code map** (`site_code_rows`) is the same kind of local rows in a CSV a site edits for its
own export (`system,code,variable,unit`, optionally `category,priority,display,status`): its
site-local systems (`http://<site>/CodeSystem/vitals`) become local rows of status
`site-confirmed`, applied on top of the vendor profile (`VendorProfile.with_site_codes`), so a
standard code beside them still wins. `unit` is the unit the site sends the code's values in: the
unit a value without one is taken to be in.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .variables import CLINICAL_VARIABLES

__all__ = ["ROW_STATUSES", "CodeMatch", "CodeRow", "CodeTable", "default_code_table", "site_code_rows"]

# verified: seen in a vendor's published payloads or documentation (`source` says where);
# site-confirmed: a site's analyst confirmed it for that site; unverified: not applied.
ROW_STATUSES = ("verified", "site-confirmed", "unverified")
_SEGMENT = "[A-Za-z0-9-]+"


@dataclass(frozen=True, slots=True)
class CodeRow:
    variable: str
    system: str
    code: str
    category: str | None
    priority: int
    display: str
    standard: bool = True  # a row of the standard table (LOINC), not a vendor's local code
    source: str = ""
    status: str = "verified"
    implied_unit: str | None = None  # the unit a value without one is in (the code fixes it)

    @classmethod
    def from_csv(cls, r: Mapping[str, str], *, standard: bool = True) -> CodeRow:
        """One row of `observation_codes.csv` or `local_codes.csv`."""
        status = (r.get("status") or "verified").strip()
        if status not in ROW_STATUSES:
            raise ValueError(
                f"code row {r.get('system')}|{r.get('code')}: status {status!r} is not one of {ROW_STATUSES}"
            )
        return cls(
            variable=r["variable"],
            system=r["system"],
            code=r["code"],
            category=r["category"] or None,
            priority=int(r["priority"] or 1),
            display=r["display"],
            standard=standard,
            source=(r.get("source") or "").strip(),
            status=status,
            implied_unit=(r.get("implied_unit") or "").strip() or None,
        )

    @property
    def applied(self) -> bool:
        return self.status != "unverified"

    @property
    def key(self) -> str:
        return f"{self.system}|{self.code}"


@dataclass(frozen=True, slots=True)
class CodeMatch:
    """What an Observation's codings mean: the variable (or None), the row that decided it, and
    the local row that disagreed with the standard code, if any."""

    variable: str | None
    row: CodeRow | None = None
    conflict: str | None = None  # "<local system|code>=<VAR> vs <standard system|code>=<VAR>"


NO_MATCH = CodeMatch(None)


def _pattern(system: str) -> re.Pattern[str]:
    return re.compile(_SEGMENT.join(re.escape(part) for part in system.split("*")))


class CodeTable:
    """Look-up of (system, code[, category]) -> variable."""

    # `lookup` answers this when the Observation's categories decide (see `match`).
    BY_CATEGORY: Any = CodeMatch(None)  # a distinct object: compare with `is`

    def __init__(self, rows: Iterable[CodeRow]) -> None:
        self.rows = tuple(rows)
        self._index: dict[tuple[str, str], list[CodeRow]] = {}
        self._wild: dict[str, list[tuple[re.Pattern[str], CodeRow]]] = {}  # code -> (system pattern, row)
        self._lookup_cache: dict[tuple[tuple[Any, Any], ...], CodeMatch] = {}
        for row in self.rows:
            if row.variable not in CLINICAL_VARIABLES:
                raise ValueError(f"observation code table names unknown variable {row.variable!r}")
            if not row.applied:
                continue
            if "*" in row.system:
                self._wild.setdefault(row.code, []).append((_pattern(row.system), row))
            else:
                self._index.setdefault((row.system, row.code), []).append(row)

    @classmethod
    def from_csv(cls, text: str, *, standard: bool = True) -> CodeTable:
        return cls(CodeRow.from_csv(r, standard=standard) for r in csv.DictReader(text.splitlines()))

    def extended(self, rows: Iterable[CodeRow]) -> CodeTable:
        return CodeTable((*self.rows, *rows))

    @property
    def local_rows(self) -> tuple[CodeRow, ...]:
        return tuple(r for r in self.rows if not r.standard)

    def _rows(self, key: tuple[Any, Any]) -> list[CodeRow]:
        found = list(self._index.get(key, ()))
        system, code = key
        if self._wild and isinstance(system, str) and code in self._wild:
            found += [row for pattern, row in self._wild[code] if pattern.fullmatch(system)]
        return found

    def lookup(self, codings: tuple[tuple[Any, Any], ...]) -> CodeMatch:
        """What these (system, code) pairs mean regardless of category, or `BY_CATEGORY` when a
        row's category decides (then call `match`). Memoised: an EHR sends the same few codings
        over and over."""
        try:
            return self._lookup_cache[codings]
        except KeyError:
            pass
        rows = [row for key in codings for row in self._rows(key)]
        found = self.BY_CATEGORY if any(r.category is not None for r in rows) else self._decide(rows)
        if len(self._lookup_cache) < 50_000:
            self._lookup_cache[codings] = found
        return found

    def match(self, codings: Iterable[tuple[Any, Any]], categories: frozenset[str]) -> CodeMatch:
        """What these (system, code) pairs mean in an Observation of these categories."""
        rows = [
            row
            for key in codings
            for row in self._rows(key)
            if row.category is None or row.category in categories
        ]
        return self._decide(rows)

    @staticmethod
    def _decide(rows: list[CodeRow]) -> CodeMatch:
        if not rows:
            return NO_MATCH
        standard = [r for r in rows if r.standard]
        local = [r for r in rows if not r.standard]
        best_local = min(local, key=lambda r: r.priority) if local else None
        if not standard:
            assert best_local is not None
            return CodeMatch(best_local.variable, best_local)
        best = min(standard, key=lambda r: r.priority)
        disagreeing = [r for r in local if r.variable != best.variable]
        if disagreeing:
            other = min(disagreeing, key=lambda r: r.priority)
            conflict = f"{other.key}={other.variable} vs {best.key}={best.variable}"
            return CodeMatch(best.variable, best, conflict)
        return CodeMatch(best.variable, best)

    def codes_for(self, variable: str) -> list[CodeRow]:
        return [r for r in self.rows if r.variable == variable]


def default_code_table() -> CodeTable:
    text = resources.files(__package__).joinpath("tables/observation_codes.csv").read_text(encoding="utf-8")
    return CodeTable.from_csv(text)


SITE_MAP_COLUMNS = ("system", "code", "variable", "unit")


def site_code_rows(text: str, *, source: str = "site code map") -> list[CodeRow]:
    """The rows of a site code map CSV (header `system,code,variable,unit`, optionally `category`,
    `priority`, `display`, `status`); blank lines and lines starting with `#` are ignored.

    Raises ValueError naming the line for a missing column, an unknown variable or status."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in SITE_MAP_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(missing)} (need {', '.join(SITE_MAP_COLUMNS)})"
        )
    rows: list[CodeRow] = []
    for line, r in enumerate(reader, start=2):
        system, code, var = (
            (r.get("system") or "").strip(),
            (r.get("code") or "").strip(),
            (r["variable"] or "").strip(),
        )
        if not system or not code:
            raise ValueError(f"{source} line {line}: system and code are required")
        if var not in CLINICAL_VARIABLES:
            raise ValueError(f"{source} line {line}: {var!r} is not one of the canonical variables")
        status = (r.get("status") or "site-confirmed").strip()
        if status not in ROW_STATUSES:
            raise ValueError(f"{source} line {line}: status {status!r} is not one of {ROW_STATUSES}")
        rows.append(
            CodeRow(
                variable=var,
                system=system,
                code=code,
                category=(r.get("category") or "").strip() or None,
                priority=int((r.get("priority") or "").strip() or 1),
                display=(r.get("display") or "").strip(),
                standard=False,
                source=source,
                status=status,
                implied_unit=(r.get("unit") or "").strip() or None,
            )
        )
    return rows
