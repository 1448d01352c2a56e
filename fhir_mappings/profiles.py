"""Vendor profiles: what differs between EHRs, as data.

A profile names the extra local codes an EHR uses beside LOINC (rows of
`tables/local_codes.csv` with its name), how its ICU locations are recognised and split into
medical (PhysioNet `Unit1`) and surgical (`Unit2`) ICUs, which Observation statuses count, and
which Observation categories to query. `GENERIC` follows plain FHIR R4 / US Core; `EPIC` and
`ORACLE_HEALTH` (Cerner Millennium) add their local code systems, encounter classes and location
conventions; `MEDITECH` (Expanse) follows US Core codes and sends some results as `valueString`
(read by the same rules as every profile: `observations.py`).

Which profile serves a request is configuration, not code: `select_profile` matches the hook's
`fhirServer` base (or the JWT issuer of the EHR) against prefixes from settings.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources

from .codes import CodeRow, CodeTable, default_code_table
from .encounter_classes import EncounterClasses, encounter_classes
from .queries import FhirQuery
from .units import UnitTable, default_unit_table

__all__ = [
    "EPIC",
    "GENERIC",
    "MEDITECH",
    "ORACLE_HEALTH",
    "PROFILES",
    "VendorProfile",
    "observation_queries",
    "select_profile",
]

V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
FINAL_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True)
class VendorProfile:
    name: str
    codes: CodeTable
    units: UnitTable
    valid_statuses: frozenset[str] = FINAL_STATUSES
    # Location.type codings that mark an ICU, and words in a location's name or display.
    icu_location_codes: frozenset[tuple[str, str]] = frozenset(
        {(V3_ROLE_CODE, "ICU"), (V3_ROLE_CODE, "PEDICU"), (V3_ROLE_CODE, "PEDNICU"), (V3_ROLE_CODE, "CCU")}
    )
    # Whole words or phrases, matched case-insensitively on word boundaries.
    icu_words: tuple[str, ...] = ("icu", "micu", "sicu", "intensive care", "critical care")
    medical_icu_words: tuple[str, ...] = ("micu", "medical icu", "medical intensive care")
    surgical_icu_words: tuple[str, ...] = ("sicu", "surgical icu", "surgical intensive care")
    observation_categories: tuple[str, ...] = ("vital-signs", "laboratory")
    # Encounter.class codings -> inpatient / outpatient / planned ... (tables/encounter_classes.csv)
    classes: EncounterClasses = field(default_factory=lambda: encounter_classes("generic"))
    extra: dict[str, str] = field(default_factory=dict)

    def with_site_codes(self, rows: Iterable[CodeRow]) -> VendorProfile:
        """This profile with a site code map's rows (codes.site_code_rows) added as local rows.

        A row's unit must be one the unit tables convert to its variable's canonical unit: a map
        that names a unit we cannot convert is refused here, not discovered as unit errors later."""
        rows = tuple(rows)
        for row in rows:
            if row.implied_unit is not None and self.units.lookup(row.variable, row.implied_unit) is None:
                raise ValueError(
                    f"site code map {row.system}|{row.code}: unit {row.implied_unit!r} cannot be converted "
                    f"for {row.variable}"
                )
        if not rows:
            return self
        return dataclasses.replace(self, name=f"{self.name}+site", codes=self.codes.extended(rows))

    def with_preliminary(self) -> VendorProfile:
        """The same profile, also accepting `preliminary` results (a site's explicit choice)."""
        return dataclasses.replace(self, valid_statuses=self.valid_statuses | {"preliminary"})


def _local_rows(profile: str) -> list[CodeRow]:
    text = resources.files(__package__).joinpath("tables/local_codes.csv").read_text(encoding="utf-8")
    return [
        CodeRow.from_csv(r, standard=False)
        for r in csv.DictReader(text.splitlines())
        if r["profile"] == profile
    ]


_CODES = default_code_table()
_UNITS = default_unit_table()

GENERIC = VendorProfile(name="generic", codes=_CODES, units=_UNITS)

EPIC = VendorProfile(
    name="epic",
    codes=_CODES.extended(_local_rows("epic")),
    units=_UNITS,
    # Epic department names: "EMH MICU", "4 EAST CVICU", "NEURO ICU", "SURG TRAUMA ICU".
    icu_words=("icu", "micu", "sicu", "cvicu", "ccu", "neuro icu", "intensive care", "critical care"),
    medical_icu_words=("micu", "medical icu", "med icu", "medical intensive care"),
    surgical_icu_words=("sicu", "cvicu", "surg icu", "surgical icu", "trauma icu", "surgical intensive care"),
    observation_categories=("vital-signs", "laboratory"),
    classes=encounter_classes("epic"),
)

ORACLE_HEALTH = VendorProfile(
    name="oracle-health",
    codes=_CODES.extended(_local_rows("oracle-health")),
    units=_UNITS,
    # Millennium nurse units: "MICU", "SICU", "ICU North", "Medical Intensive Care Unit".
    icu_words=("icu", "micu", "sicu", "intensive care", "critical care"),
    medical_icu_words=("micu", "medical icu", "medical intensive care"),
    surgical_icu_words=("sicu", "surgical icu", "surgical intensive care"),
    # Millennium files bedside vitals under vital-signs and lab results under laboratory.
    observation_categories=("vital-signs", "laboratory"),
    classes=encounter_classes("oracle-health"),
)

MEDITECH = VendorProfile(
    name="meditech",
    codes=_CODES.extended(_local_rows("meditech")),
    units=_UNITS,
    classes=encounter_classes("meditech"),
)

PROFILES: Mapping[str, VendorProfile] = {p.name: p for p in (GENERIC, EPIC, ORACLE_HEALTH, MEDITECH)}


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.casefold()
    host, slash, path = rest.partition("/")
    return f"{scheme.casefold()}://{host.casefold()}{slash}{path}"


def _matches(value: str, prefix: str) -> bool:
    v, p = _normalise_url(value), _normalise_url(prefix)
    return v == p or v.startswith(p + "/")


@functools.lru_cache(maxsize=64)
def _with_preliminary(name: str) -> VendorProfile:
    return PROFILES[name].with_preliminary()


def select_profile(
    fhir_server: str | None,
    issuer: str | None,
    rules: Mapping[str, str],
    *,
    default: str = "generic",
    accept_preliminary: bool = False,
) -> VendorProfile:
    """The profile for one EHR: the longest `rules` prefix matching `fhir_server` or `issuer`.

    `rules` maps a FHIR base URL or a JWT issuer (prefixes of whole path segments) to a profile
    name, e.g. {"https://fhir.epic.example.org/api/FHIR/R4": "epic"}. No match: `default`.
    """
    best: tuple[int, str] | None = None
    for prefix, name in rules.items():
        if name not in PROFILES:
            raise ValueError(f"unknown EHR profile {name!r} (known: {', '.join(sorted(PROFILES))})")
        for value in (fhir_server, issuer):
            if value and _matches(value, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    name = best[1] if best else default
    if name not in PROFILES:
        raise ValueError(f"unknown EHR profile {name!r} (known: {', '.join(sorted(PROFILES))})")
    return _with_preliminary(name) if accept_preliminary else PROFILES[name]


def observation_queries(
    profile: VendorProfile, patient_id: str, *, count: int = 1000
) -> dict[str, FhirQuery]:
    """The Observation searches this profile asks for: one per category, newest first.
    `patient_id` must be a FHIR id (InvalidIdError otherwise)."""
    FhirQuery.read("Patient", patient_id)  # validates the id
    return {
        category: FhirQuery.search(
            "Observation",
            [("patient", patient_id), ("category", category), ("_sort", "-date"), ("_count", str(count))],
        )
        for category in profile.observation_categories
    }
