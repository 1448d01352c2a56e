"""Diagnosis codes -> clinical groups and Charlson comorbidities (ICD-9-CM, ICD-10-CM, SNOMED CT).

The knowledge is data: `tables/diagnosis_groups.csv` (code ranges -> clinical group; the most
specific range wins), `tables/charlson.csv` (Quan et al. 2005 coding of the Charlson index) and
`tables/snomed_icd.csv` (SNOMED CT -> ICD-9-CM / ICD-10-CM for the conditions that matter here).
Ranges compare the code without its dot, on the first `len(start)` characters.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "CHARLSON_WEIGHTS",
    "DIAGNOSIS_GROUPS",
    "ICD9",
    "ICD10",
    "SNOMED",
    "DiagnosisCoder",
    "charlson_score",
    "default_diagnosis_coder",
]

ICD9 = "http://hl7.org/fhir/sid/icd-9-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
_SYSTEM_KEYS = {ICD9: "icd9", ICD10: "icd10", "icd9": "icd9", "icd10": "icd10"}

# Charlson et al. (1987) weights.
CHARLSON_WEIGHTS: dict[str, int] = {
    "myocardial_infarction": 1,
    "heart_failure": 1,
    "peripheral_vascular": 1,
    "cerebrovascular": 1,
    "dementia": 1,
    "chronic_pulmonary": 1,
    "rheumatic": 1,
    "peptic_ulcer": 1,
    "mild_liver": 1,
    "diabetes": 1,
    "diabetes_complicated": 2,
    "hemiplegia": 2,
    "renal": 2,
    "malignancy": 2,
    "severe_liver": 3,
    "metastatic_tumour": 6,
    "hiv_aids": 6,
}
# The more severe form replaces the milder one.
_HIERARCHY = {
    "diabetes_complicated": "diabetes",
    "severe_liver": "mild_liver",
    "metastatic_tumour": "malignancy",
}


def _table(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath(f"tables/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@dataclass(frozen=True, slots=True)
class _Range:
    system: str
    start: str
    end: str
    value: str

    def matches(self, key: str) -> bool:
        head = key[: len(self.start)]
        return len(head) == len(self.start) and self.start <= head <= self.end


def _key(code: str) -> str:
    return code.strip().upper().replace(".", "")


DIAGNOSIS_GROUPS: tuple[str, ...] = tuple(dict.fromkeys(r["group"] for r in _table("diagnosis_groups.csv")))


class DiagnosisCoder:
    """(system, code) -> clinical group and Charlson categories."""

    def __init__(
        self,
        groups: Iterable[dict[str, str]],
        charlson: Iterable[dict[str, str]],
        snomed: Iterable[dict[str, str]],
    ) -> None:
        self._groups = [_Range(r["system"], r["start"], r["end"], r["group"]) for r in groups]
        self._charlson = [_Range(r["system"], r["start"], r["end"], r["category"]) for r in charlson]
        unknown = {r.value for r in self._charlson} - set(CHARLSON_WEIGHTS)
        if unknown:
            raise ValueError(f"charlson table names unknown categories: {sorted(unknown)}")
        self._snomed = {r["snomed"]: (r["icd9"], r["icd10"]) for r in snomed}

    def to_icd(self, system: str, code: str) -> tuple[str, str] | None:
        """An ICD (system key, code) for a coding we understand, or None."""
        if system in _SYSTEM_KEYS:
            return _SYSTEM_KEYS[system], code
        if system == SNOMED and code in self._snomed:
            return "icd9", self._snomed[code][0]  # the training data's own system
        return None

    def best(self, codings: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
        """The first ICD-9-CM, else ICD-10-CM, else mapped SNOMED coding of one concept."""
        found = [c for c in (self.to_icd(s, k) for s, k in codings) if c is not None]
        for wanted in ("icd9", "icd10"):
            for system, code in found:
                if system == wanted:
                    return system, code
        return None

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - the coder is a long-lived singleton
    def group(self, system: str, code: str) -> str | None:
        key, sys_key = _key(code), _SYSTEM_KEYS.get(system, system)
        hits = [r for r in self._groups if r.system == sys_key and r.matches(key)]
        if not hits:
            return None
        # Most specific: longest prefix, then the narrowest range, then table order.
        return min(hits, key=lambda r: (-len(r.start), _width(r), self._groups.index(r))).value

    @functools.lru_cache(maxsize=8192)  # noqa: B019
    def charlson(self, system: str, code: str) -> frozenset[str]:
        key, sys_key = _key(code), _SYSTEM_KEYS.get(system, system)
        return frozenset(r.value for r in self._charlson if r.system == sys_key and r.matches(key))


def _width(r: _Range) -> int:
    try:
        return int("".join(ch for ch in r.end if ch.isdigit()) or 0) - int(
            "".join(ch for ch in r.start if ch.isdigit()) or 0
        )
    except ValueError:
        return 0


def charlson_score(categories: Iterable[str]) -> int:
    present = set(categories)
    for severe, mild in _HIERARCHY.items():
        if severe in present:
            present.discard(mild)
    return sum(CHARLSON_WEIGHTS[c] for c in present)


@functools.cache
def default_diagnosis_coder() -> DiagnosisCoder:
    return DiagnosisCoder(_table("diagnosis_groups.csv"), _table("charlson.csv"), _table("snomed_icd.csv"))
