"""Reading training and evaluation files (the I/O edge of the models layer).

PhysioNet 2019 layout: a parquet file like setA.parquet (columns `patient`, `hour`, the 40
variables, `SepsisLabel`) or a directory of `pNNNNNN.psv` files (pipe-separated, one file per
patient, `NaN` for missing). Both become one frame with `patient`, `hour`, variables, label.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fhir_mappings import PHYSIONET_COLUMNS

from .errors import DatasetError

__all__ = [
    "DEFAULT_DATA_DIR",
    "data_fingerprint",
    "default_sepsis_path",
    "export_key",
    "is_bulk_export",
    "read_physionet",
]

DEFAULT_DATA_DIR = Path("../shared/data")
_PSV_NAME = re.compile(r"^p?(\d+)\.psv$", re.IGNORECASE)


def default_sepsis_path(data_dir: Path | str = DEFAULT_DATA_DIR) -> Path:
    return Path(data_dir) / "physionet2019" / "setA.parquet"


def _read_psv_dir(path: Path) -> pd.DataFrame:
    files = sorted(
        f for f in path.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() == ".psv"
    )
    if not files:
        raise DatasetError(f"no .psv files in {path}")
    frames = []
    for i, f in enumerate(files):
        m = _PSV_NAME.match(f.name)
        patient_id = int(m.group(1)) if m else i
        frame = pd.read_csv(f, sep="|", na_values=["NaN", "nan", ""])
        frame.insert(0, "hour", np.arange(len(frame), dtype=np.int32))
        frame.insert(0, "patient", patient_id)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def is_bulk_export(path: Path | str) -> bool:
    """A directory of FHIR Bulk Data NDJSON files (`$export` output), not a table."""
    path = Path(path)
    return path.is_dir() and any(f.name.endswith((".ndjson", ".ndjson.gz")) for f in path.iterdir())


def export_key(path: Path | str) -> bytes:
    """The pseudonym key of an export read directly: derived from its fingerprint, so every command
    that reads the same export re-derives the same ids (and so the same site split)."""
    return hashlib.sha256(b"cds-ml export table\0" + data_fingerprint(path).encode()).digest()


def _read_bulk_export(path: Path) -> pd.DataFrame:
    """The export's hourly table through the hook's mapping (fhir_mappings.read_export, generic
    profile; a site with local codes runs `cds site import --site-map` instead). The stay ids are
    pseudonyms under a key derived from the export's own fingerprint, so every command that reads
    this export (adapt, then the gate; evaluate) re-derives the same ids and the same site split;
    they live in memory only (a lineage keeps a hash of the whole id set, never an id)."""
    from fhir_mappings import Pseudonymizer, read_export

    frame, report = read_export(path, pseudonymizer=Pseudonymizer(export_key(path)))
    if frame.empty:
        raise DatasetError(f"the export at {path} gave no ICU stay ({report.stays_skipped or 'none found'})")
    return frame


def read_physionet(path: Path | str) -> pd.DataFrame:
    """A table in PhysioNet 2019 layout: parquet, one .psv, a directory of .psv, or a FHIR Bulk
    export directory read through the hook's mapping."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if is_bulk_export(path):
        frame = _read_bulk_export(path)
    elif path.is_dir():
        frame = _read_psv_dir(path)
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".psv":
        frame = pd.read_csv(path, sep="|", na_values=["NaN", "nan", ""])
        frame.insert(0, "hour", np.arange(len(frame), dtype=np.int32))
        m = _PSV_NAME.match(path.name)
        frame.insert(0, "patient", int(m.group(1)) if m else 0)
    else:
        raise DatasetError(f"unsupported dataset format: {path.name} (parquet, .psv or a directory of .psv)")
    missing = [c for c in PHYSIONET_COLUMNS if c not in frame]
    if "ICULOS" in missing:
        raise DatasetError(f"{path} is not in PhysioNet 2019 layout: no ICULOS column")
    for column in missing:  # another hospital may lack some variables entirely
        frame[column] = np.nan
    if "patient" not in frame:
        raise DatasetError(f"{path} has no patient column")
    return frame.sort_values(["patient", "hour" if "hour" in frame else "ICULOS"], kind="stable").reset_index(
        drop=True
    )


def data_fingerprint(path: Path | str) -> str:
    """sha256 of a file, or of the sorted (name, sha256) list of a directory's files."""
    path = Path(path)

    def file_hash(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                h.update(f"{f.name}\0{file_hash(f)}\n".encode())
        return h.hexdigest()
    return file_hash(path)
