"""Reading a FHIR Bulk Data export directory (the file I/O edge of `fhir_mappings.bulk`).

`$export` writes NDJSON, one resource per line, one file (or several: `Observation.000.ndjson`,
`Observation_2.ndjson`, `1.Observation.ndjson`) per resource type, optionally gzip-compressed
(`.ndjson.gz`). The type is read from the file name; a file of a type we do not read is listed in
the report (`files_ignored`).

Memory stays small however large the export: Patients, Locations, inpatient Encounters and the
sepsis Conditions are kept (only the fields the mapping reads); each Observation is mapped as it
streams (`scan_observation`, the hook's code) and only its measurements, a few numbers, are
spilled to per-partition temporary files (patients hashed into `partitions` buckets, pickled
batches). Then one partition at a time is read back, grouped by patient and turned into tables
(`bulk.patient_stays`). Peak memory is the kept resources plus one partition; the temporary files
take about 60 bytes per measurement and are removed at the end (docs/site-golive.md has figures).

    reader = iter_export("export/", pseudonymizer=p, profile="epic", site_map="site_map.csv")
    for stay in reader.stays():   # SiteStay: table, SepsisLabel, pseudonyms
        ...
    reader.report                 # ExportReport: what could not be mapped, by reason

or `read_export(...) -> (frame, report)` for the whole PhysioNet-shaped frame at once.
"""

from __future__ import annotations

import gzip
import pickle
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd

from .bulk import EXPORT_COLUMNS, ExportReport, SiteStay, patient_stays, stays_frame, trimmed
from .codes import site_code_rows
from .deid import Pseudonymizer
from .fhir_to_table import MAX_ICU_HOURS
from .observations import scan_observation
from .outcomes import SepsisOnset, is_sepsis_condition, sepsis_onset
from .profiles import GENERIC, PROFILES, VendorProfile
from .resources import reference_id
from .stay import NOT_A_STAY_STATUSES

__all__ = [
    "EXPORT_TYPES",
    "ExportReader",
    "export_files",
    "iter_export",
    "ndjson_resources",
    "read_export",
    "write_stays",
]

# Read in this order: Observations last, once every stay and patient is known.
EXPORT_TYPES = ("Patient", "Location", "Encounter", "Condition", "Observation")
_NAME = re.compile(r"^(?:.*?[._-])?(?P<type>[A-Z][A-Za-z]+)(?:[._-].*?)?\.ndjson(?:\.gz)?$")
_PATIENT_KEYS = ("resourceType", "id", "birthDate", "gender")
_LOCATION_KEYS = ("resourceType", "id", "name", "description", "type")
_ENCOUNTER_KEYS = (
    "resourceType",
    "id",
    "status",
    "class",
    "subject",
    "period",
    "location",
    "partOf",
    "contained",
    "hospitalization",
)
_BATCH = 4096
Progress = Callable[[int, int], None]  # (bytes read so far, bytes in all files)


def export_files(
    path: Path | str, types: Sequence[str] = EXPORT_TYPES
) -> tuple[dict[str, list[Path]], list[str]]:
    """The NDJSON files of an export by resource type (of `types`), and the names of the others."""
    found: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for file in sorted(Path(path).iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        m = _NAME.match(file.name)
        kind = m["type"] if m else None
        if kind is not None and kind in types:
            found.setdefault(kind, []).append(file)
        else:
            ignored.append(file.name)
    return found, ignored


def _profile(profile: str | VendorProfile, site_map: Path | str | None) -> VendorProfile:
    chosen = profile if isinstance(profile, VendorProfile) else PROFILES.get(profile)
    if chosen is None:
        raise ValueError(f"unknown EHR profile {profile!r} (known: {', '.join(sorted(PROFILES))})")
    if site_map is not None:
        path = Path(site_map)
        chosen = chosen.with_site_codes(site_code_rows(path.read_text(encoding="utf-8"), source=path.name))
    return chosen


class _Spill:
    """Measurements per patient, bucketed into partition files of pickled batches
    ({patient id: [measurement, ...]}; pickle loads such batches ten times faster than marshal)."""

    def __init__(self, directory: Path, partitions: int) -> None:
        self.directory = directory
        self.partitions = partitions
        self.buffers: list[dict[str, list[tuple[Any, ...]]]] = [{} for _ in range(partitions)]
        self.sizes = [0] * partitions
        self.files: list[IO[bytes] | None] = [None] * partitions

    def bucket(self, patient_id: str) -> int:
        return zlib.crc32(patient_id.encode()) % self.partitions

    def add(self, bucket: int, patient_id: str, items: list[tuple[Any, ...]]) -> None:
        buffer = self.buffers[bucket]
        found = buffer.get(patient_id)
        if found is None:
            buffer[patient_id] = items
        else:
            found += items
        self.sizes[bucket] += len(items)
        if self.sizes[bucket] >= _BATCH:
            self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        if not self.buffers[bucket]:
            return
        f = self.files[bucket]
        if f is None:
            f = self.files[bucket] = open(self.directory / f"part-{bucket:04d}.bin", "wb")  # noqa: SIM115
        pickle.dump(self.buffers[bucket], f, protocol=5)
        self.buffers[bucket] = {}
        self.sizes[bucket] = 0

    def close(self) -> None:
        for bucket in range(self.partitions):
            self._flush(bucket)
            f = self.files[bucket]
            if f is not None:
                f.close()

    def read(self, bucket: int) -> dict[str, list[tuple[Any, ...]]]:
        """patient id -> (timestamp, variable, value, resource id, component index) tuples."""
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        path = self.directory / f"part-{bucket:04d}.bin"
        if not path.exists():
            return grouped
        with open(path, "rb") as f:
            while True:
                try:
                    batch = pickle.load(f)  # our own temporary file, written above
                except EOFError:
                    break
                for pid, items in batch.items():
                    found = grouped.get(pid)
                    if found is None:
                        grouped[pid] = items
                    else:
                        found += items
        return grouped


def ndjson_resources(
    file: Path,
    kind: str,
    read: Counter[str],
    bad_lines: Counter[str],
    done: int = 0,
    total: int = 0,
    progress: Progress | None = None,
) -> Iterator[dict[str, Any]]:
    """The `kind` resources of one NDJSON file (gzip when it ends in .gz), one line at a time;
    lines that are not JSON or not of `kind` are counted in `bad_lines`, never echoed."""
    with open(file, "rb") as raw:
        stream: Any = gzip.GzipFile(fileobj=raw) if file.name.endswith(".gz") else raw
        for n, line in enumerate(stream):
            if not line.strip():
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad_lines[kind] += 1
                continue
            if not isinstance(resource, dict) or resource.get("resourceType") != kind:
                bad_lines[kind] += 1  # never echoed: it could be anything
                continue
            read[kind] += 1
            if progress is not None and n % 20_000 == 0:
                progress(done + raw.tell(), total)
            yield resource
    if progress is not None:
        progress(done + file.stat().st_size, total)


@dataclass
class ExportReader:
    """One pass over an export: `stays()` yields each ICU stay, `report` fills as it goes."""

    path: Path
    pseudonymizer: Pseudonymizer
    profile: VendorProfile = GENERIC
    source: str = ""
    max_icu_hours: int = MAX_ICU_HOURS
    partitions: int = 64
    work_dir: Path | None = None
    progress: Progress | None = None
    report: ExportReport = field(default_factory=ExportReport)
    _subjects: dict[str, str] = field(default_factory=dict, repr=False)  # subject reference -> id

    def stays(self) -> Iterator[SiteStay]:
        files, ignored = export_files(self.path)
        self.report.files_ignored = ignored
        ordered = [(kind, f) for kind in EXPORT_TYPES for f in files.get(kind, [])]
        self.report.files = [f.name for _, f in ordered]
        total = sum(f.stat().st_size for _, f in ordered)
        done = 0
        patients: dict[str, dict[str, Any]] = {}
        locations: dict[str, dict[str, Any]] = {}
        encounters: dict[str, list[dict[str, Any]]] = {}
        encounter_patient: dict[str, str] = {}
        onsets: dict[str, list[SepsisOnset]] = {}
        with tempfile.TemporaryDirectory(prefix="cds-export-", dir=self.work_dir) as tmp:
            spill = _Spill(Path(tmp), self.partitions)
            try:
                for kind, file in ordered:
                    for resource in self._resources(kind, file, done, total):
                        if kind == "Observation":
                            self._observation(resource, encounter_patient, spill)
                        elif kind == "Patient" and isinstance(resource.get("id"), str):
                            patients[resource["id"]] = trimmed(resource, _PATIENT_KEYS)
                        elif kind == "Location" and isinstance(resource.get("id"), str):
                            locations[resource["id"]] = trimmed(resource, _LOCATION_KEYS)
                        elif kind == "Encounter":
                            self._encounter(resource, encounters, encounter_patient)
                        elif kind == "Condition":
                            self._condition(resource, encounter_patient, onsets)
                    done += file.stat().st_size
            finally:
                spill.close()
            yield from self._tables(spill, patients, locations, encounters, onsets)

    def _resources(self, kind: str, file: Path, done: int, total: int) -> Iterator[dict[str, Any]]:
        report = self.report
        return ndjson_resources(file, kind, report.resources, report.bad_lines, done, total, self.progress)

    def _encounter(
        self,
        resource: dict[str, Any],
        encounters: dict[str, list[dict[str, Any]]],
        encounter_patient: dict[str, str],
    ) -> None:
        pid = reference_id(resource.get("subject"), "Patient")
        eid = resource.get("id")
        if pid is None or not isinstance(eid, str):
            self.report.encounters_ignored["no-patient-or-id"] += 1
            return
        status = resource.get("status")
        kind = self.profile.classes.kind(resource.get("class"))
        if (resource.get("partOf") is None and kind not in ("inpatient", None)) or (
            isinstance(status, str) and status in NOT_A_STAY_STATUSES
        ):
            # Not a stay and never part of one: counted, not kept (an export holds many visits).
            reason = f"status:{status}" if status in NOT_A_STAY_STATUSES else f"class:{kind}"
            self.report.encounters_ignored[reason] += 1
            return
        encounters.setdefault(pid, []).append(trimmed(resource, _ENCOUNTER_KEYS))
        encounter_patient[eid] = pid

    def _condition(
        self,
        resource: dict[str, Any],
        encounter_patient: dict[str, str],
        onsets: dict[str, list[SepsisOnset]],
    ) -> None:
        if not is_sepsis_condition(resource):
            return
        onset = sepsis_onset(resource)
        pid = onset.patient_id or (encounter_patient.get(onset.encounter_id) if onset.encounter_id else None)
        if pid is None:
            self.report.conditions["sepsis-without-patient"] += 1
            return
        self.report.conditions["sepsis" if onset.onset is not None else "sepsis-without-onset"] += 1
        onsets.setdefault(pid, []).append(onset)

    def _observation(self, obs: dict[str, Any], encounter_patient: dict[str, str], spill: _Spill) -> None:
        out: list[tuple[Any, ...]] = []
        scan_observation(obs, self.profile, self.report.observations, out)
        if not out:
            return
        subject = obs.get("subject")
        ref = subject.get("reference") if type(subject) is dict else None
        pid = self._subjects.get(ref) if type(ref) is str else None
        if pid is None:
            pid = reference_id(subject, "Patient")
            if pid is not None and type(ref) is str and len(self._subjects) < 1_000_000:
                self._subjects[ref] = pid
        if pid is None:
            eid = reference_id(obs.get("encounter"), "Encounter")
            pid = encounter_patient.get(eid) if eid is not None else None
        if pid is None:
            self.report.observations_unassigned["no-patient"] += 1
            return
        spill.add(
            spill.bucket(pid), pid, [(ts, var, value, rid, index) for ts, var, value, rid, index, _ in out]
        )

    def _tables(
        self,
        spill: _Spill,
        patients: dict[str, dict[str, Any]],
        locations: dict[str, dict[str, Any]],
        encounters: dict[str, list[dict[str, Any]]],
        onsets: dict[str, list[SepsisOnset]],
    ) -> Iterator[SiteStay]:
        by_bucket: dict[int, set[str]] = {}
        for pid in encounters:
            by_bucket.setdefault(spill.bucket(pid), set()).add(pid)
        for bucket in range(spill.partitions):
            measured = spill.read(bucket)
            for pid in sorted(by_bucket.get(bucket, set()) | set(measured)):
                yield from patient_stays(
                    pid,
                    patients.get(pid),
                    encounters.get(pid, []),
                    locations,
                    measured.get(pid, []),
                    onsets.get(pid, []),
                    pseudonymizer=self.pseudonymizer,
                    profile=self.profile,
                    source=self.source,
                    max_icu_hours=self.max_icu_hours,
                    report=self.report,
                )
            del measured


def iter_export(
    path: Path | str,
    *,
    pseudonymizer: Pseudonymizer,
    profile: str | VendorProfile = "generic",
    site_map: Path | str | None = None,
    source: str = "",
    max_icu_hours: int = MAX_ICU_HOURS,
    partitions: int = 64,
    work_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> ExportReader:
    """A reader of the export at `path` (a directory of NDJSON files), with the vendor `profile`
    (a name or a VendorProfile) and an optional site code map CSV applied on top of it."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"not an export directory: {path}")
    return ExportReader(
        Path(path),
        pseudonymizer,
        _profile(profile, site_map),
        source,
        max_icu_hours,
        partitions,
        Path(work_dir) if work_dir is not None else None,
        progress,
    )


def read_export(path: Path | str, **options: Any) -> tuple[pd.DataFrame, ExportReport]:
    """The whole export as one PhysioNet-shaped frame (`bulk.EXPORT_COLUMNS`) and its report."""
    reader = iter_export(path, **options)
    frame = stays_frame(list(reader.stays()))
    return frame, reader.report


def write_stays(stays: Iterator[SiteStay], out: Path | str, *, batch: int = 500) -> int:
    """Write stays as they stream: `out.parquet` (one file, row groups of `batch` stays) or a
    directory of PhysioNet `.psv` files (`p000001.psv` ..., one per stay, with `stays.csv` naming
    each file's stay and person pseudonyms). Returns the number of stays written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    written = 0
    if out.suffix == ".parquet":
        writer: Any = None
        pending: list[SiteStay] = []

        def flush() -> None:
            nonlocal writer
            table = pa.Table.from_pandas(stays_frame(pending), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
            pending.clear()

        try:
            for stay in stays:
                pending.append(stay)
                written += 1
                if len(pending) >= batch:
                    flush()
            if pending or writer is None:
                flush()
        finally:
            if writer is not None:
                writer.close()
        return written
    out.mkdir(parents=True, exist_ok=True)
    columns = [*EXPORT_COLUMNS[3:]]
    with open(out / "stays.csv", "w", encoding="utf-8") as index:
        index.write("file,patient,person\n")
        for stay in stays:
            written += 1
            name = f"p{written:06d}.psv"
            stay.frame()[columns].to_csv(out / name, sep="|", index=False, na_rep="NaN")
            index.write(f"{name},{stay.key},{stay.person}\n")
    return written
