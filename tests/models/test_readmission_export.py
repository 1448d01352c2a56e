"""A FHIR Bulk export as the readmission model's site data: each discharge is the row the
`readmission-risk` hook's own mapping builds for that encounter, known at discharge only, labelled
by the export's later inpatient Encounters (30 days); `cds site validate readmission` reads it."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fhir_mappings import (
    INPATIENT_CLASSES,
    DischargeRecord,
    DischargeTable,
    Pseudonymizer,
    build_readmission_features,
    discharge_to_table,
    read_discharge_export,
    readmission_feature_spec,
)
from models import RiskModel, evaluate_readmission, load_readmission_data, read_diabetes130
from models.datasets import export_key
from models.registry import ModelRegistry
from models.site_readmission import load_readmission_site, readmission_site_pair
from testkit.synthea_export import bundle_resources, synthea_export, write_export
from tests.conftest import DATA_DIR, need
from tests.test_cli import cds

pytestmark = pytest.mark.data
SPEC = readmission_feature_spec()
KEY = Pseudonymizer(b"readmission export test key 32b!")
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _bundles() -> list[Path]:
    return sorted(need(DATA_DIR / "synthea", "Synthea bundles").glob("*.json"))


def _patients() -> dict[str, list[dict[str, Any]]]:
    """Patient id -> the patient's resources, as the export holds them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in _bundles():
        resources = bundle_resources(json.loads(path.read_text(encoding="utf-8")))
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        out[patient["id"]] = resources
    return out


def _stays(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in resources
        if r["resourceType"] == "Encounter"
        and r["class"]["code"] in INPATIENT_CLASSES
        and r["status"] == "finished"
        and r["period"].get("end")
    ]


def _categories(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for k in resource.get("category", []) for c in k.get("coding", [])}


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _hook_row(resources: list[dict[str, Any]], encounter: dict[str, Any], key: Pseudonymizer) -> np.ndarray:
    """The hook's own mapping of `encounter` from the patient's resources (its prefetch: the
    patient, the encounter, all encounters, conditions, laboratory observations, medication
    requests with their Medications, procedures), at the discharge."""

    def of(kind: str) -> list[dict[str, Any]]:
        return [r for r in resources if r["resourceType"] == kind]

    labs = [o for o in of("Observation") if "laboratory" in _categories(o)]
    patient = of("Patient")[0]
    record = DischargeRecord(
        patient_id=patient["id"],
        patient=patient,
        encounter=encounter,
        encounters=of("Encounter"),
        conditions=of("Condition"),
        observations=labs,
        medication_requests=of("MedicationRequest"),
        procedures=of("Procedure"),
        medications=of("Medication"),
    )
    mapped = discharge_to_table(record, as_of=_when(encounter["period"]["end"]), pseudonymizer=key)
    return np.asarray(mapped.table.values[0])


@pytest.fixture(scope="module")
def patients() -> dict[str, list[dict[str, Any]]]:
    return _patients()


def test_each_discharge_row_is_the_hooks_mapping_of_that_encounter(
    patients: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    export = synthea_export(_bundles(), tmp_path / "export", compress=True)
    found, report = read_discharge_export(export, pseudonymizer=KEY)
    expected = {
        KEY.pseudonym("Encounter", e["id"]): (pid, _hook_row(resources, e, KEY))
        for pid, resources in patients.items()
        for e in _stays(resources)
    }
    assert len(found) == len(expected) == report.discharges > 0
    for d in found:
        pid, row = expected[d.mapped.table.encounter[0]]
        assert d.mapped.pseudonym == KEY.pseudonym("Patient", pid)
        assert np.array_equal(d.mapped.table.values[0], row, equal_nan=True)
    # Through the models layer: the same rows under the export's own key, and the hook's features.
    data = load_readmission_data(export, SPEC)
    key = Pseudonymizer(export_key(export))
    by_encounter = {
        key.pseudonym("Encounter", e["id"]): _hook_row(resources, e, key)
        for resources in patients.values()
        for e in _stays(resources)
    }
    rows = np.stack([by_encounter[e] for e in data.table.encounter])
    assert np.array_equal(data.table.values, rows, equal_nan=True)
    assert np.array_equal(data.features, build_readmission_features(data.table, SPEC), equal_nan=True)
    assert set(data.frame.columns) == {"race", "gender", "age"} and "Unknown/Invalid" not in set(
        data.frame["gender"]
    )


def test_nothing_recorded_after_discharge_reaches_the_row(
    patients: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A glucose of 450 mg/dL on the stay: inside the stay it raises the row's glucose band; the same
    result effective after discharge (a late lab pointing at the stay) leaves the row as it was."""
    pid, resources = next((p, r) for p, r in patients.items() if _stays(r))
    stay = _stays(resources)[0]
    end = _when(stay["period"]["end"])

    def glucose(at: datetime) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": "late-glucose",
            "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{stay['id']}"},
            "effectiveDateTime": at.isoformat(),
            "valueQuantity": {"value": 450, "unit": "mg/dL", "code": "mg/dL"},
        }

    def row(extra: list[dict[str, Any]], name: str) -> np.ndarray:
        export = write_export([*copy.deepcopy(resources), *extra], tmp_path / name)
        found, _ = read_discharge_export(export, pseudonymizer=KEY)
        own = KEY.pseudonym("Encounter", stay["id"])
        return next(d.mapped.table.values[0] for d in found if d.mapped.table.encounter[0] == own)

    plain = row([], "plain")
    during = row([glucose(end - timedelta(hours=1))], "during")
    after = row([glucose(end + timedelta(days=2))], "after")
    column = DischargeTable.column_index("glucose")
    assert during[column] == 2.0 and not plain[column] == 2.0
    assert np.array_equal(after, plain, equal_nan=True)


def _stay(pid: str, eid: str, start: datetime, days: float, disposition: str | None = None) -> dict[str, Any]:
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start.isoformat(), "end": (start + timedelta(days=days)).isoformat()},
    }
    if disposition is not None:
        system = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
        encounter["hospitalization"] = {
            "dischargeDisposition": {"coding": [{"system": system, "code": disposition}]}
        }
    return encounter


def test_labels_follow_the_30_day_rule(tmp_path: Path) -> None:
    """Back 29 days after discharge: readmitted; back after 31 days: not; the last stay of each
    patient: not; a death at discharge has no outcome and is left out; a stay still open is no
    discharge but starts a readmission."""
    t0 = datetime(2020, 1, 1, 8, tzinfo=UTC)
    resources = [
        {"resourceType": "Patient", "id": "a", "gender": "female", "birthDate": "1950-06-01"},
        {"resourceType": "Patient", "id": "b", "gender": "male", "birthDate": "1940-02-01"},
        {"resourceType": "Patient", "id": "c", "gender": "male", "birthDate": "1960-02-01"},
        _stay("a", "a1", t0, 3),
        _stay("a", "a2", t0 + timedelta(days=3 + 29), 2),
        _stay("b", "b1", t0, 3),
        _stay("b", "b2", t0 + timedelta(days=3 + 31), 2, disposition="exp"),
        _stay("c", "c1", t0, 1),
        {**_stay("c", "c2", t0 + timedelta(days=10), 1), "status": "in-progress"},
    ]
    found, report = read_discharge_export(write_export(resources, tmp_path / "pairs"), pseudonymizer=KEY)
    label = {d.mapped.table.encounter[0]: d.readmitted for d in found}
    assert label == {
        KEY.pseudonym("Encounter", "a1"): True,
        KEY.pseudonym("Encounter", "a2"): False,
        KEY.pseudonym("Encounter", "b1"): False,
        KEY.pseudonym("Encounter", "c1"): True,
    }
    assert report.left_out == {"no-outcome": 1, "not-discharged": 1} and report.readmitted == 2
    ages = {d.mapped.table.encounter[0]: d.age for d in found}
    assert ages[KEY.pseudonym("Encounter", "a2")] == 69 and ages[KEY.pseudonym("Encounter", "b1")] == 79


def _readmission_of(stay: dict[str, Any], eid: str, days: int) -> dict[str, Any]:
    """A hand-made inpatient stay of the same patient starting `days` after `stay`'s discharge."""
    start = _when(stay["period"]["end"]) + timedelta(days=days)
    return _stay(stay["subject"]["reference"].split("/")[1], eid, start, 2)


def test_site_validate_reads_an_export(patients: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Synthea alone has no readmission within 30 days: validation refuses and says why. With three
    hand-made readmissions added it writes the go-live report on the export's discharges."""
    frame = read_diabetes130(need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US"))
    base = tmp_path / "base.csv.gz"
    frame[frame["patient_nbr"].isin(frame["patient_nbr"].drop_duplicates()[:3000])].to_csv(base, index=False)
    env = {"CDS_MODEL_DIR": str(tmp_path / "registry")}
    trained = cds("train", "readmission", "--data", str(base), "--rounds", "20", env=env)
    assert trained.returncode == 0, trained.stderr

    plain = synthea_export(_bundles(), tmp_path / "plain")
    refused = cds(
        "site", "validate", "readmission", "--data", str(plain), "--out", str(tmp_path / "p"), env=env
    )
    assert refused.returncode == 2 and "0 readmitted within 30 days" in refused.stderr, refused.stderr
    assert "needs at least one readmitted and one not readmitted discharge" in refused.stderr

    stays = [e for r in patients.values() for e in _stays(r)]
    extra = [_readmission_of(s, f"readmit-{i}", 10 + i) for i, s in enumerate(stays[:3])]
    export = synthea_export(_bundles(), tmp_path / "export", extra=extra)
    out = tmp_path / "v"
    args = ("--data", str(export), "--out", str(out), "--replicates", "20")
    validated = cds("site", "validate", "readmission", *args, env=env)
    assert validated.returncode == 0, validated.stderr
    golive = json.loads(validated.stdout)
    stored = json.loads((out / "metrics.json").read_text())
    assert golive["model"] == "readmission@1" and (out / "golive.html").is_file()
    assert stored["encounters"] == len(stays) + 3 and stored["readmitted_30d"] == 3
    assert "every finished inpatient stay" in (out / "golive.md").read_text()

    evaluated = cds("evaluate", "readmission", "--data", str(export), env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    model = RiskModel(ModelRegistry(tmp_path / "registry").load("readmission", SPEC), SPEC)
    expected = evaluate_readmission(model, load_readmission_data(export, SPEC))
    assert json.dumps(json.loads(evaluated.stdout)["auroc"]) == json.dumps(expected["auroc"])
    site = load_readmission_site(export, SPEC)
    assert len(np.unique(site.data.patient)) == len({s["subject"]["reference"] for s in stays})

    # A second command re-derives the export's ids: the gate finds recalibration's held-out half.
    recal = cds("site", "recalibrate", "readmission", *args[:2], "--out", str(tmp_path / "r"), env=env)
    assert recal.returncode == 0, recal.stderr
    recalibrated = json.loads(recal.stdout)
    candidate = RiskModel(ModelRegistry(tmp_path / "registry").load("readmission", SPEC, "2"), SPEC)
    pair = readmission_site_pair(model, candidate, export)
    assert (
        recalibrated["version"] == "2" and pair is not None and pair[2] == recalibrated["held_out_patients"]
    )
