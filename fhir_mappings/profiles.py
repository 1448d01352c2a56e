"""Vendor profiles: what differs between EHRs, as data.

A profile names the extra local codes an EHR uses beside LOINC, how its ICU locations are
recognised and split into medical (PhysioNet `Unit1`) and surgical (`Unit2`) ICUs, and which
Observation statuses count. `GENERIC` follows plain FHIR R4 / US Core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .codes import CodeTable, default_code_table
from .units import UnitTable, default_unit_table

__all__ = ["GENERIC", "VendorProfile"]

V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


@dataclass(frozen=True)
class VendorProfile:
    name: str
    codes: CodeTable
    units: UnitTable
    valid_statuses: frozenset[str] = frozenset({"final", "amended", "corrected"})
    # Location.type codings that mark an ICU, and words in a location's name or display.
    icu_location_codes: frozenset[tuple[str, str]] = frozenset(
        {(V3_ROLE_CODE, "ICU"), (V3_ROLE_CODE, "PEDICU"), (V3_ROLE_CODE, "PEDNICU"), (V3_ROLE_CODE, "CCU")}
    )
    # Whole words or phrases, matched case-insensitively on word boundaries.
    icu_words: tuple[str, ...] = ("icu", "micu", "sicu", "intensive care", "critical care")
    medical_icu_words: tuple[str, ...] = ("micu", "medical icu", "medical intensive care")
    surgical_icu_words: tuple[str, ...] = ("sicu", "surgical icu", "surgical intensive care")
    observation_categories: tuple[str, ...] = ("vital-signs", "laboratory")
    extra: dict[str, str] = field(default_factory=dict)


GENERIC = VendorProfile(name="generic", codes=default_code_table(), units=default_unit_table())
