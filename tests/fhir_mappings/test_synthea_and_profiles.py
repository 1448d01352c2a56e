"""Every Synthea bundle maps without error; vendor profiles; the shapes the hot path must read."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

import fhir_mappings
from fhir_mappings import (
    EPIC,
    GENERIC,
    NO_ROW,
    ORACLE_HEALTH,
    MappingReport,
    Pseudonymizer,
    map_bundle,
    measurements_from_observation,
    select_profile,
)
from tests.conftest import DATA_DIR, need

PSEUDO = Pseudonymizer(b"s" * 32)
T = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.mark.data
def test_every_synthea_bundle_maps_and_every_unmapped_code_has_a_reason() -> None:
    folder = need(DATA_DIR / "synthea", "Synthea bundles")
    files = sorted(folder.glob("*.json"))
    assert len(files) == 50
    total, unmapped, stays = MappingReport(), Counter[str](), 0
    for path in files:
        mapped = map_bundle(json.loads(path.read_text()), pseudonymizer=PSEUDO)
        assert mapped.validation == [], path.name
        assert not mapped.report.unit_errors and not mapped.report.skipped, path.name
        total.merge(mapped.report)
        stays += mapped.stay is not None
        for item in mapped.unmapped():
            unmapped[item.code] += item.count
            assert item.reason != NO_ROW, item.code  # every code left out is left out on purpose
    # Counted independently of the mapping: Observation entries, IMP encounters, BP panels.
    resources = [e["resource"] for p in files for e in json.loads(p.read_text())["entry"]]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert (
        stays
        == sum(
            any(
                r["resourceType"] == "Encounter" and r.get("class", {}).get("code") == "IMP"
                for r in (e["resource"] for e in json.loads(p.read_text())["entry"])
            )
            for p in files
        )
        == 4
    )
    assert total.observations == len(observations) == 4466
    mapped_obs = total.observations - sum(unmapped.values())
    panels = sum(
        1 for o in observations if any(c.get("code") in ("85354-9", "55284-4") for c in o["code"]["coding"])
    )
    # The mapped ones, derived from the code table's rows, not from the mapping: an Observation whose
    # code or a component's code is a row of observation_codes.csv (Synthea sends only LOINC).
    rows = csv.DictReader(
        (Path(fhir_mappings.__file__).parent / "tables" / "observation_codes.csv").read_text().splitlines()
    )
    known = {(r["system"], r["code"]) for r in rows}

    def coded(o: dict) -> list[tuple[str, str]]:
        parts = [o["code"], *(c["code"] for c in o.get("component", []))]
        return [(c.get("system"), c.get("code")) for part in parts for c in part["coding"]]

    expected = sum(any(k in known for k in coded(o)) for o in observations)
    assert expected > 1000  # the bundles carry vitals and labs, not only pain scores and smoking status
    assert mapped_obs == expected and total.measurements == mapped_obs + panels  # a BP panel gives SBP+DBP


def test_select_profile_by_fhir_base_or_issuer() -> None:
    rules = {"https://ehr.example.org/api/FHIR/R4": "epic", "https://cerner.example.org/": "oracle-health"}
    assert select_profile("https://EHR.example.org/api/FHIR/R4/", None, rules) is EPIC
    assert select_profile(None, "https://cerner.example.org/tenant/1", rules) is ORACLE_HEALTH
    assert select_profile("https://ehr.example.org/api/FHIR/R4evil", None, rules) is GENERIC
    assert select_profile("https://other.example.org", None, rules) is GENERIC
    prelim = select_profile(None, None, rules, accept_preliminary=True)
    assert "preliminary" in prelim.valid_statuses and "preliminary" not in GENERIC.valid_statuses
    with pytest.raises(ValueError):
        select_profile(None, None, {"https://x": "nope"})


def _obs(code: dict, **extra: object) -> dict:
    return {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"coding": [code]}, **extra}


def test_local_codes_count_only_in_their_vendor_profile() -> None:
    epic_pulse = _obs(
        {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679", "code": "8"},
        effectiveDateTime="2026-03-01T03:00:00-05:00",
        valueQuantity={"value": 88, "unit": "/min"},
    )
    report = MappingReport()
    assert measurements_from_observation(epic_pulse, GENERIC, report) == []
    assert report.unmapped_codes == {"urn:oid:1.2.840.114350.1.13.0.1.7.2.707679|8": 1}
    (m,) = measurements_from_observation(epic_pulse, EPIC, MappingReport())
    assert (m.variable, m.value, m.time) == ("HR", 88.0, T)
    # Flowsheet row 6 (Temp) is listed but unverified: never applied, reported as unmapped.
    epic_temp = _obs(
        {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679", "code": "6"},
        effectiveDateTime="2026-03-01T03:00:00-05:00",
        valueQuantity={"value": 100.4, "unit": "[degF]"},
    )
    report = MappingReport()
    assert measurements_from_observation(epic_temp, EPIC, report) == []
    assert report.unmapped_codes == {"urn:oid:1.2.840.114350.1.13.0.1.7.2.707679|6": 1}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"effectivePeriod": {"start": "2026-03-01T07:50:00Z", "end": "2026-03-01T09:00:00+01:00"}}, T),
        ({"issued": "2026-03-01T08:00:00.000+00:00"}, T),
        ({"effectiveInstant": "2026-03-01T13:30:00+05:30"}, T),
    ],
)
def test_times_from_period_issued_and_offsets(extra: dict, expected: datetime) -> None:
    o = _obs(
        {"system": "http://loinc.org", "code": "2160-0"},
        valueQuantity={"value": 88.4, "unit": "umol/L"},
        **extra,
    )
    (m,) = measurements_from_observation(o, GENERIC, MappingReport())
    assert m.time == expected and m.value == pytest.approx(1.0, rel=1e-3)


def test_comparators_free_text_units_and_preliminary() -> None:
    report = MappingReport()
    lt = _obs(
        {"system": "http://loinc.org", "code": "10839-9"},
        effectiveDateTime="2026-03-01T08:00:00Z",
        valueQuantity={"value": 0.01, "comparator": "<", "unit": "ng/mL"},
    )
    assert measurements_from_observation(lt, GENERIC, report) == []
    bad_unit = {**lt, "valueQuantity": {"value": 3, "unit": "John Smith MRN 12345"}}
    assert measurements_from_observation(bad_unit, GENERIC, report) == []
    prelim = {**lt, "status": "preliminary", "valueQuantity": {"value": 0.2, "unit": "ng/mL"}}
    assert measurements_from_observation(prelim, GENERIC, report) == []
    assert len(measurements_from_observation(prelim, GENERIC.with_preliminary(), report)) == 1
    assert report.skipped["comparator"] == 1 and report.skipped["status:preliminary"] == 1
    assert report.unit_errors == {"TroponinI|<free-text>": 1}  # free text never reaches reports or logs


def test_pulse_ox_component_fio2_and_lab_sao2() -> None:
    pulse_ox = _obs(
        {"system": "http://loinc.org", "code": "59408-5"},
        effectiveDateTime="2026-03-01T08:00:00Z",
        valueQuantity={"value": 93, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "3150-0"}]},
                "valueQuantity": {"value": 40, "unit": "%"},
            }
        ],
    )
    got = {m.variable: m.value for m in measurements_from_observation(pulse_ox, GENERIC, MappingReport())}
    assert got == {"O2Sat": 93.0, "FiO2": pytest.approx(0.4)}


@pytest.mark.data
def test_cds_map_prints_the_table_and_unmapped_codes(tmp_path) -> None:
    folder = need(DATA_DIR / "synthea", "Synthea bundles")
    bundle = next(
        b
        for b in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
        if any(
            e["resource"].get("class", {}).get("code") == "IMP"
            for e in b["entry"]
            if e["resource"]["resourceType"] == "Encounter"
        )
    )
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "informational"}],
            }
        }
    )
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "map", "--bundle", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"CDS_VAR_DIR": str(tmp_path / "var"), "CDS_PSEUDONYM_KEY": "k" * 32, "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "OperationOutcome entries skipped: 1" in out and "validation issues: 0" in out
    assert "http://loinc.org|8302-2" in out and "canonical table:" in out and "ICULOS" in out
