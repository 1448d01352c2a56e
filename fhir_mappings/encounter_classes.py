"""What kind of encounter an `Encounter.class` coding names, per vendor profile.

Data: `tables/encounter_classes.csv` (profile or `*` for all, system or `*` for any, code or `*`
with a display to match, kind, status, source). Kinds: inpatient, emergency, outpatient,
observation, planned. An EHR that does not use v3-ActCode (Epic's own patient class system) gets
rows under its profile; a class no row names is *unrecognised*, which the stay selection treats as
a fallback behind recognised inpatient classes, never as proof of a hospital stay. Rows whose
status is `unverified` are listed but not applied (as for local Observation codes).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["ENCOUNTER_KINDS", "ClassRow", "EncounterClasses", "encounter_classes"]

ENCOUNTER_KINDS = ("inpatient", "emergency", "outpatient", "observation", "planned")


@dataclass(frozen=True, slots=True)
class ClassRow:
    profile: str
    system: str
    code: str
    display: str
    kind: str
    status: str
    source: str

    @property
    def applied(self) -> bool:
        return self.status != "unverified"


class EncounterClasses:
    def __init__(self, rows: Iterable[ClassRow]) -> None:
        self.rows = tuple(rows)
        for row in self.rows:
            if row.kind not in ENCOUNTER_KINDS:
                raise ValueError(f"encounter class row {row.system}|{row.code}: unknown kind {row.kind!r}")
        live = [r for r in self.rows if r.applied]
        self._by_code = {(r.system, r.code): r.kind for r in live if r.code != "*"}
        self._by_display = {(r.system, r.display.casefold()): r.kind for r in live if r.code == "*"}

    def kind(self, coding: Any) -> str | None:
        """The kind of encounter a class Coding names, or None when no row recognises it."""
        if not isinstance(coding, Mapping):
            return None
        system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
        if not isinstance(system, str):
            system = ""
        if isinstance(code, str):
            found = self._by_code.get((system, code)) or self._by_code.get(("*", code))
            if found:
                return found
        if isinstance(display, str):
            return self._by_display.get((system, display.strip().casefold()))
        return None


def _rows() -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath("tables/encounter_classes.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@cache
def encounter_classes(profile: str) -> EncounterClasses:
    """The class rows that apply to one profile: the shared ones and the profile's own."""
    return EncounterClasses(
        ClassRow(**{k: (v or "").strip() for k, v in r.items()})
        for r in _rows()
        if r["profile"] in ("*", profile)
    )
