"""PhysioNet 2019 set A -> a FHIR Bulk Data export directory (NDJSON), as a hospital would send it.

Each stay goes through `stay_to_fhir` (the converter the hook tests use), finished and discharged:
the ICU location's period ends 45 minutes into the stay's last ICU hour, the hospital encounter an
hour later. A stay whose `SepsisLabel` turns 1 at ICU hour f gets a sepsis `Condition` (SNOMED CT
91302008) with its onset in the middle of ICU hour f + 6, so PhysioNet's rule (label 1 from
hour(onset) - 6) gives back the same labels.

`icu_as_child=True` writes the untidy shape real exports have: the hospital Encounter without
locations, the ICU stay as its own Encounter (class ACUTE, `partOf` the hospital stay, no location
period) and the unit named only in `Location.name` ("Medical Intensive Care Unit (MICU)"), with
the Condition naming the ICU Encounter. `shapes=True` sends values in the varied shapes of
`stay_to_fhir(shapes=...)` (seeded per patient). Used by tests/fhir_mappings/test_bulk_set_a.py
and benchmarks/bulk_import.py.
"""

from __future__ import annotations

import gzip as gzip_module
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd

from .physionet_fhir import stay_to_fhir

__all__ = ["ICU_START", "set_a_export_resources", "write_set_a_export"]

ICU_START = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
SNOMED = "http://snomed.info/sct"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_PLAIN_NAMES = {
    "micu": "Medical Intensive Care Unit (MICU)",
    "sicu": "Surgical Intensive Care Unit (SICU)",
    "icu": "Intensive Care Unit",
}


def _icu_start(index: int) -> datetime:
    """Stays spread over a year, so that the export is not one instant."""
    return ICU_START + timedelta(hours=7 * (index % 1250))


def _stay_resources(
    rows: pd.DataFrame, index: int, *, shapes: bool, icu_as_child: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    icu_start = _icu_start(index)
    pid = int(rows["patient"].iloc[0])
    stay = stay_to_fhir(rows, icu_start=icu_start, shapes=pid if shapes else None)
    last = int(rows["ICULOS"].max())
    icu_end = icu_start + timedelta(hours=last - 1, minutes=45)
    discharge = icu_end + timedelta(hours=1)
    encounter = stay.encounter
    encounter["status"] = "finished"
    # No start when set A has no HospAdmTime: the admission is unknown, not the ICU start.
    encounter.setdefault("period", {})["end"] = discharge.isoformat()
    encounter["location"][0]["period"]["end"] = icu_end.isoformat()
    stay_ref = f"Encounter/{encounter['id']}"
    yield "Patient", stay.patient
    if icu_as_child:
        entry = encounter.pop("location")[0]
        child = {
            "resourceType": "Encounter",
            "id": f"{encounter['id']}-icu",
            "status": "finished",
            "class": {"system": V3_ACT, "code": "ACUTE", "display": "inpatient acute"},
            "subject": encounter["subject"],
            "partOf": {"reference": stay_ref},
            "period": entry["period"],
            "location": [{"location": {"reference": entry["location"]["reference"]}, "status": "completed"}],
        }
        stay_ref = f"Encounter/{child['id']}"
        yield "Encounter", encounter
        yield "Encounter", child
    else:
        yield "Encounter", encounter
    labels = rows["SepsisLabel"].to_numpy() if "SepsisLabel" in rows else ()
    positive = [int(h) for h, y in zip(rows["ICULOS"].tolist(), labels, strict=False) if y == 1]
    if positive:
        onset = icu_start + timedelta(hours=min(positive) + 6 - 1, minutes=30)
        yield (
            "Condition",
            {
                "resourceType": "Condition",
                "id": f"{encounter['id']}-sepsis",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "resolved",
                        }
                    ]
                },
                "code": {"coding": [{"system": SNOMED, "code": "91302008", "display": "Sepsis"}]},
                "subject": {"reference": f"Patient/{stay.patient['id']}"},
                "encounter": {"reference": stay_ref},
                "onsetDateTime": onset.isoformat(),
            },
        )
    for obs in stay.observations:
        yield "Observation", obs


def set_a_export_resources(
    frame: pd.DataFrame, *, shapes: bool = False, icu_as_child: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(resourceType, resource) of every stay of a set-A frame, then the Locations."""
    locations: dict[str, dict[str, Any]] = {}
    for index, (_, rows) in enumerate(frame.groupby("patient", sort=True)):
        rows = rows.sort_values("ICULOS").reset_index(drop=True)
        yield from _stay_resources(rows, index, shapes=shapes, icu_as_child=icu_as_child)
        unit = "micu" if rows["Unit1"].iloc[0] == 1 else "sicu" if rows["Unit2"].iloc[0] == 1 else "icu"
        if unit not in locations:
            location = stay_to_fhir(rows.iloc[:1], icu_start=ICU_START).location
            if icu_as_child:  # only a name, as many exports have it
                location = {"resourceType": "Location", "id": location["id"], "name": _PLAIN_NAMES[unit]}
            locations[unit] = location
    for location in locations.values():
        yield "Location", location


def write_set_a_export(
    frame: pd.DataFrame,
    directory: Path | str,
    *,
    shapes: bool = False,
    icu_as_child: bool = False,
    gzip: bool = False,
    observation_files: int = 1,
    copies: int = 1,
) -> Counter[str]:
    """Write the export (Patient, Encounter, Location, Condition, Observation NDJSON) and return
    how many resources of each type were written. `observation_files` > 1 splits Observations
    into `Observation.000.ndjson`, `Observation.001.ndjson`, ... as large exports do. `copies` > 1
    (plain shapes only) sends every value that many times, each earlier copy one minute before the
    next within the same ICU hour, as a monitor charting every few minutes does: the table read
    back is the same, the export `copies` times as large (the 20-million-Observation benchmark)."""
    if copies > 1 and shapes:
        raise ValueError("copies > 1 needs the plain shapes (one effectiveDateTime per Observation)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".ndjson.gz" if gzip else ".ndjson"
    handles: dict[str, IO[bytes]] = {}
    counts: Counter[str] = Counter()

    def handle(name: str) -> IO[bytes]:
        if name not in handles:
            path = directory / f"{name}{suffix}"
            handles[name] = gzip_module.open(path, "wb", compresslevel=1) if gzip else open(path, "wb")  # noqa: SIM115
        return handles[name]

    try:
        for kind, resource in set_a_export_resources(frame, shapes=shapes, icu_as_child=icu_as_child):
            name = kind
            for copy in range(copies - 1 if kind == "Observation" else 0, -1, -1):
                if copy:
                    when = datetime.fromisoformat(resource["effectiveDateTime"]) - timedelta(minutes=copy)
                    sent = {
                        **resource,
                        "id": f"{resource['id']}-c{copy}",
                        "effectiveDateTime": when.isoformat(),
                    }
                else:
                    sent = resource
                if kind == "Observation" and observation_files > 1:
                    name = f"Observation.{counts[kind] % observation_files:03d}"
                handle(name).write(orjson.dumps(sent) + b"\n")
                counts[kind] += 1
    finally:
        for f in handles.values():
            f.close()
    return counts
