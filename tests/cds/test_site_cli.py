"""`cds site map-report` and `cds site import` on a small export: the unmapped codes, unit errors
and stays without an ICU clock are printed with counts and written as JSON; the imported table is
one the training loader reads (`models.load_sepsis_data`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fhir_mappings import sepsis_feature_spec
from models import load_sepsis_data, read_physionet

SITE = "http://hospital.example.org/CodeSystem/vitals"
ENV = {"CDS_PSEUDONYM_KEY": "site-cli-test-key-0123456789"}


def _cds(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def _export(directory: Path) -> Path:
    directory.mkdir()
    resources: list[dict[str, Any]] = []
    for n in range(3):
        pid = f"p{n}"
        resources.append({"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1960-01-01"})
        resources.append(
            {
                "resourceType": "Encounter",
                "id": f"h{n}",
                "status": "finished",
                "class": {"code": "IMP"},
                "subject": {"reference": f"Patient/{pid}"},
                "period": {"start": "2025-05-01T08:00:00Z", "end": "2025-05-02T08:00:00Z"},
                "location": [
                    {
                        "location": {"display": "MICU"},
                        "period": {"start": "2025-05-01T10:00:00Z", "end": "2025-05-01T21:30:00Z"},
                    }
                ]
                if n < 2
                else [],  # the third stay never reached an ICU: no ICU clock
            }
        )
        for h in range(10):
            for code, value, unit in (
                ("HR-LOCAL", 80 + h, "/min"),
                ("8867-4", 80 + h, "beats per fortnight"),
            ):
                system = SITE if code == "HR-LOCAL" else "http://loinc.org"
                resources.append(
                    {
                        "resourceType": "Observation",
                        "id": f"{pid}-{h}-{code}",
                        "status": "final",
                        "code": {"coding": [{"system": system, "code": code}]},
                        "subject": {"reference": f"Patient/{pid}"},
                        "effectiveDateTime": f"2025-05-01T{10 + h:02d}:30:00Z",
                        "valueQuantity": {"value": value, "unit": unit},
                    }
                )
    resources.append(
        {
            "resourceType": "Condition",
            "id": "c1",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008"}]},
            "subject": {"reference": "Patient/p0"},
            "encounter": {"reference": "Encounter/h0"},
            "onsetDateTime": "2025-05-01T19:00:00Z",  # ICU hour 9: labels from hour 3
        }
    )
    for kind in ("Patient", "Encounter", "Observation", "Condition"):
        lines = [json.dumps(r) for r in resources if r["resourceType"] == kind]
        (directory / f"{kind}.ndjson").write_text("\n".join(lines) + "\n")
    return directory


def test_map_report_lists_what_did_not_map(tmp_path: Path) -> None:
    export = _export(tmp_path / "export")
    done = _cds("site", "map-report", "--export", str(export), "--json", "report.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"30  {SITE}|HR-LOCAL" in out
    assert "30  HR|<free-text>" in out  # "beats per fortnight": a unit error, never echoed
    assert "1  no-icu-location" in out
    assert "reading export" in done.stderr  # the progress bar
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["observations"]["unmapped_codes"] == {f"{SITE}|HR-LOCAL": 30}
    assert report["stays"] == 2 and report["stays_skipped"] == {"no-icu-location": 1}
    assert report["conditions"] == {"sepsis": 1} and report["septic_stays"] == 1

    site_map = tmp_path / "site.csv"
    site_map.write_text(f"system,code,variable,unit\n{SITE},HR-LOCAL,HR,/min\n")
    done = _cds(
        "site",
        "map-report",
        "--export",
        str(export),
        "--site-map",
        str(site_map),
        "--json",
        "r2.json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["observations"]["unmapped_codes"] == {} and report["mapped"] == {"HR": 30}
    assert report["profile"] == "generic+site"


def test_import_writes_a_table_the_training_loader_reads(tmp_path: Path) -> None:
    export = _export(tmp_path / "export")
    site_map = tmp_path / "site.csv"
    site_map.write_text(f"system,code,variable,unit\n{SITE},HR-LOCAL,HR,/min\n")
    for out in ("table.parquet", "psv"):
        done = _cds(
            "site", "import", "--export", str(export), "--site-map", str(site_map), "--out", out, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        frame = read_physionet(tmp_path / out)
        assert len(frame) == 24 and frame["SepsisLabel"].sum() == 10
        data = load_sepsis_data(tmp_path / out, sepsis_feature_spec())
        assert data.features.shape[0] == 24 and data.label is not None and int(data.label.sum()) == 10
        assert np.nanmax(frame["HR"]) == 89
    assert (tmp_path / "table.parquet.report.json").exists() and (
        tmp_path / "psv" / "map-report.json"
    ).exists()


def test_unknown_profile_and_missing_export_are_one_line_errors(tmp_path: Path) -> None:
    done = _cds("site", "map-report", "--export", str(tmp_path / "nope"), cwd=tmp_path)
    assert (
        done.returncode == 2 and "not an export directory" in done.stderr and "Traceback" not in done.stderr
    )
    export = _export(tmp_path / "export")
    done = _cds(
        "site", "import", "--export", str(export), "--out", "t.parquet", "--profile", "nope", cwd=tmp_path
    )
    assert done.returncode == 2 and "unknown profile" in done.stderr
