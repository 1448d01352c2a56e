"""The ICU clock of a hospital stay, read from its Encounter.

Conventions (shared with PhysioNet 2019): the encounter in context is the hospital stay; the ICU
stay starts at the `period.start` of its ICU `location` entry (else at the encounter's own
`period.start`); an observation at time t falls in ICU hour ceil((t - icu_start) / 1 h), at least
1 (PhysioNet's ICULOS); HospAdmTime is hospital admission minus ICU start, in hours.

A location entry's Location is found however the reference is written: `Location/abc`, an
absolute URL, a versioned `Location/abc/_history/3` (all looked up by id among the Locations
fetched), or `#icu` naming a Location contained in the Encounter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import MappingError, StayError
from .profiles import GENERIC, VendorProfile
from .resources import codings, element, objects, parse_datetime, resolve_reference, subject_mismatch

__all__ = ["NOT_A_STAY_STATUSES", "IcuClock", "icu_clock", "icu_episodes", "select_encounter"]

_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class IcuClock:
    icu_start: datetime
    hospital_admission: datetime | None
    unit: str | None  # "medical" | "surgical" | None
    from_location: bool

    def hour_of(self, t: datetime) -> int:
        return max(1, math.ceil((t - self.icu_start) / _HOUR))

    @property
    def window_start(self) -> datetime:
        """Observations before this belong to an earlier stay."""
        if self.hospital_admission is None:
            return self.icu_start
        return min(self.hospital_admission, self.icu_start)

    @property
    def hosp_adm_hours(self) -> float:
        if self.hospital_admission is None:
            return math.nan
        return round((self.hospital_admission - self.icu_start) / _HOUR, 2)


def _words_match(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def _describe_location(
    entry: Mapping[str, Any], encounter: Mapping[str, Any], locations: Mapping[str, Mapping[str, Any]]
) -> tuple[str, set[tuple[str, str]]]:
    """Lower-case words naming a location entry, and the codes of its Location.type."""
    ref = element(entry, "location")
    texts = [ref.get("display")]
    codes: set[tuple[str, str]] = set()
    loc = resolve_reference(ref, "Location", encounter, locations)
    if loc:
        texts += [loc.get("name"), loc.get("description")]
        for concept in objects(loc, "type"):
            codes.update(codings(concept))
            texts.append(concept.get("text"))
            texts += [c.get("display") for c in objects(concept, "coding")]
    return " ".join(t for t in texts if isinstance(t, str)).lower(), codes


def _icu_entries(
    encounter: Mapping[str, Any], locations: Mapping[str, Mapping[str, Any]], profile: VendorProfile
) -> list[tuple[datetime, datetime | None, str]]:
    """(start, end, words) of each ICU location entry with a start, in the Encounter's order."""
    found: list[tuple[datetime, datetime | None, str]] = []
    entries = encounter.get("location")
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        if not isinstance(entry, Mapping):
            continue
        text, codes = _describe_location(entry, encounter, locations)
        if not (codes & profile.icu_location_codes or _words_match(text, profile.icu_words)):
            continue
        p = element(entry, "period")
        if not p.get("start"):
            continue
        start = parse_datetime(p["start"], f"Encounter.location[{i}].period.start")
        end = parse_datetime(p["end"], f"Encounter.location[{i}].period.end") if p.get("end") else None
        found.append((start, end, text))
    return found


def icu_episodes(
    encounter: Mapping[str, Any], locations: Mapping[str, Mapping[str, Any]], profile: VendorProfile = GENERIC
) -> list[tuple[datetime, datetime | None]]:
    """The separate ICU stays of a hospital encounter, (start, end or None), in time order:
    ICU location entries less than an hour apart are one stay, as `icu_clock` joins them. The
    bulk export reader builds one table per episode, each with the clock `icu_clock` gives at its
    end."""
    entries = sorted(_icu_entries(encounter, locations, profile), key=lambda e: e[0])
    episodes: list[tuple[datetime, datetime | None]] = []
    for start, end, _ in entries:
        if episodes:
            first, last_end = episodes[-1]
            if last_end is None or last_end >= start - _HOUR:
                joined = None if last_end is None or end is None else max(last_end, end)
                episodes[-1] = (first, joined)
                continue
        episodes.append((start, end))
    return episodes


def icu_clock(
    encounter: Mapping[str, Any],
    locations: Mapping[str, Mapping[str, Any]],
    as_of: datetime,
    profile: VendorProfile,
) -> IcuClock:
    period = element(encounter, "period")
    admission = parse_datetime(period["start"], "Encounter.period.start") if period.get("start") else None
    icu_entries = [e for e in _icu_entries(encounter, locations, profile) if e[0] <= as_of]

    if icu_entries:
        icu_entries.sort(key=lambda e: e[0])
        # The current ICU stay: the latest ICU entry, extended back over contiguous ICU beds.
        start, _, text = icu_entries[-1]
        for prev_start, prev_end, _ in reversed(icu_entries[:-1]):
            if prev_end is None or prev_end >= start - _HOUR:
                start = min(start, prev_start)
            else:
                break
        unit = None
        if _words_match(text, profile.medical_icu_words):
            unit = "medical"
        elif _words_match(text, profile.surgical_icu_words):
            unit = "surgical"
        return IcuClock(start, admission, unit, from_location=True)
    if admission is None:
        raise StayError(
            "has neither an ICU location period nor a start (e.g. an ongoing outpatient visit)",
            reason="no-icu-clock",
            path="Encounter.period",
        )
    return IcuClock(admission, admission, None, from_location=False)


# Encounters that are not (or not yet, or never were) a stay: never chosen as the stay in context.
NOT_A_STAY_STATUSES = frozenset({"planned", "cancelled", "entered-in-error"})
_RANK = {"inpatient": 2, None: 1}  # recognised inpatient first, then classes no row recognises


def select_encounter(
    encounters: Sequence[Mapping[str, Any]],
    encounter_id: str | None,
    patient_id: str | None = None,
    *,
    profile: VendorProfile = GENERIC,
    in_progress: bool = True,
) -> Mapping[str, Any] | None:
    """The hospital stay in context: the Encounter named by `encounterId`, else the latest
    inpatient encounter (only in-progress ones with `in_progress`; None when there is none).

    Class codes are read through the profile (Epic's own patient-class system, v3-ActCode for the
    rest): a recognised inpatient class ranks first, an unrecognised class is a fallback, and a
    class the profile recognises as something else (outpatient, emergency, observation, planned)
    is never taken for a hospital stay. Planned, cancelled and entered-in-error encounters are
    never chosen, even by id. With `patient_id`, an Encounter whose subject names someone else is
    never chosen."""
    encounters = [
        e
        for e in encounters
        if isinstance(e, Mapping)
        and e.get("resourceType") == "Encounter"
        and not (isinstance(e.get("status"), str) and e["status"] in NOT_A_STAY_STATUSES)
        and (patient_id is None or subject_mismatch(e, patient_id) is None)
    ]
    if encounter_id:
        return next((e for e in encounters if e.get("id") == encounter_id), None)
    candidates = []
    for e in encounters:
        if in_progress and e.get("status") != "in-progress":
            continue
        rank = _RANK.get(profile.classes.kind(e.get("class")), 0)
        if rank == 0:
            continue
        period = element(e, "period")
        try:
            start = parse_datetime(period.get("start"), "Encounter.period.start")
        except MappingError:
            start = _EPOCH
        candidates.append((rank, start, e))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]
