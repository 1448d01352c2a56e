"""The bulk export reader on small hand-written exports, one untidy case per test: ICU stays as
their own Encounter with the unit only in Location.name, hospital classes other than IMP,
site-local code systems with a site code map, dataAbsentReason, contained resources, gzip and
split files, stays without an ICU clock, sepsis Conditions as labels."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import GENERIC, Pseudonymizer, read_export, site_code_rows

PSEUDO = Pseudonymizer(b"bulk-test-key-0123456789")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SITE = "http://hospital.example.org/CodeSystem/flowsheet"
ICU_START = "2025-03-01T10:00:00Z"


def _write(directory: Path, resources: list[dict[str, Any]], *, gz: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for kind, items in by_type.items():
        text = "".join(json.dumps(r) + "\n" for r in items).encode()
        if gz:
            (directory / f"{kind}.ndjson.gz").write_bytes(gzip.compress(text))
        else:
            (directory / f"{kind}.ndjson").write_bytes(text)
    return directory


def _patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1950-06-01"}


def _hospital(
    eid: str = "h1", pid: str = "p1", cls: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": cls or {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": "2025-03-01T06:00:00Z", "end": "2025-03-03T12:00:00Z"},
        **extra,
    }


def _icu_child(eid: str = "icu1", parent: str = "h1", pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE"},
        "subject": {"reference": f"Patient/{pid}"},
        "partOf": {"reference": f"Encounter/{parent}"},
        "period": {"start": ICU_START, "end": "2025-03-02T09:40:00Z"},  # 24 ICU hours
        **extra,
    }


def _obs(
    oid: str,
    when: str,
    value: float | None,
    *,
    code: tuple[str, str] = (LOINC, "8867-4"),
    unit: str | None = "/min",
    pid: str | None = "p1",
    **extra: Any,
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "effectiveDateTime": when,
        **extra,
    }
    if pid is not None:
        obs["subject"] = {"reference": f"Patient/{pid}"}
    if value is not None:
        obs["valueQuantity"] = {
            "value": value,
            **({"unit": unit, "system": UCUM, "code": unit} if unit else {}),
        }
    return obs


MICU = {"resourceType": "Location", "id": "loc-micu", "name": "Medical Intensive Care Unit (MICU)"}


def _frame(directory: Path, **options: Any) -> tuple[pd.DataFrame, Any]:
    return read_export(directory, pseudonymizer=PSEUDO, **options)


def test_icu_stay_as_its_own_encounter_with_the_unit_only_in_the_location_name(tmp_path: Path) -> None:
    child = _icu_child(location=[{"location": {"reference": "Location/loc-micu"}}])
    export = _write(
        tmp_path / "x",
        [
            _patient(),
            _hospital(),
            child,
            MICU,
            _obs("o1", "2025-03-01T10:30:00Z", 90),  # ICU hour 1
            _obs("o2", "2025-03-01T14:10:00Z", 110),  # ICU hour 5
            _obs("o3", "2025-03-01T08:00:00Z", 80),  # on the ward before the ICU: hour 1, but earlier
        ],
    )
    frame, report = _frame(export)
    assert report.stays == 1 and len(frame) == 24
    assert frame["ICULOS"].tolist() == list(range(1, 25))
    assert frame["HR"].iloc[0] == 90 and frame["HR"].iloc[4] == 110 and np.isnan(frame["HR"].iloc[1])
    assert (frame["Unit1"] == 1).all() and (frame["Unit2"] == 0).all()
    assert (
        frame["HospAdmTime"].iloc[0] == -4.0 and frame["Age"].iloc[0] == 74 and frame["Gender"].iloc[0] == 0
    )
    assert (frame["SepsisLabel"] == 0).all()
    assert frame["person"].iloc[0] == PSEUDO.pseudonym("Patient", "p1") and frame["patient"].iloc[0] != "p1"


def test_contained_location_in_the_icu_encounter(tmp_path: Path) -> None:
    child = _icu_child(
        contained=[{"resourceType": "Location", "id": "u", "name": "Surgical Intensive Care Unit (SICU)"}],
        location=[{"location": {"reference": "#u"}}],
    )
    # The hospital encounter has a contained Location of the same id: the child's must not be
    # confused with it.
    hospital = _hospital(
        contained=[{"resourceType": "Location", "id": "u", "name": "Ward 4"}],
        location=[
            {"location": {"reference": "#u"}, "period": {"start": "2025-03-01T06:00:00Z", "end": ICU_START}}
        ],
    )
    export = _write(tmp_path / "x", [_patient(), hospital, child, _obs("o1", "2025-03-01T11:30:00Z", 70)])
    frame, report = _frame(export)
    assert report.stays == 1 and len(frame) == 24
    assert (frame["Unit2"] == 1).all() and frame["HR"].iloc[1] == 70


def test_hospital_classes_other_than_imp_and_visits_that_are_not_stays(tmp_path: Path) -> None:
    icu = [{"location": {"display": "MICU"}, "period": {"start": ICU_START, "end": "2025-03-01T15:30:00Z"}}]
    resources = [
        _patient(),
        _hospital(
            "h1",
            cls={"system": "http://hospital.example.org/patient-class", "code": "IP-LOCAL"},
            location=icu,
        ),
        _hospital(
            "h2",
            cls={"code": "ACUTE"},
            location=[{**icu[0], "period": {"start": "2025-04-01T10:00:00Z", "end": "2025-04-01T12:30:00Z"}}],
        ),
        _hospital("v1", cls={"code": "AMB"}, location=icu),  # an outpatient visit: never a stay
        _hospital("v2", status="cancelled", location=icu),
    ]
    frame, report = _frame(_write(tmp_path / "x", resources))
    assert report.stays == 2 and frame.groupby("patient").size().sort_values().tolist() == [3, 6]
    assert report.encounters_ignored == {"class:outpatient": 1, "status:cancelled": 1}


def test_site_local_codes_need_the_site_map_and_the_standard_code_wins(tmp_path: Path) -> None:
    icu = [{"location": {"display": "ICU"}, "period": {"start": ICU_START, "end": "2025-03-01T13:30:00Z"}}]
    resources = [
        _patient(),
        _hospital(location=icu),
        _obs(
            "a", "2025-03-01T10:30:00Z", 98.6, code=(SITE, "TEMP-F"), unit=None
        ),  # hour 1, no unit: the map's
        _obs("b", "2025-03-01T11:30:00Z", 22, code=(SITE, "RR"), unit="/min"),
        {
            **_obs("c", "2025-03-01T12:30:00Z", 88, unit="/min"),
            "code": {"coding": [{"system": SITE, "code": "RR"}, {"system": LOINC, "code": "8867-4"}]},
        },
        _obs("d", "2025-03-01T12:40:00Z", 5, code=(SITE, "NOT-MAPPED"), unit="mg"),
    ]
    export = _write(tmp_path / "x", resources)
    frame, report = _frame(export)
    assert report.observations.unmapped_codes == {
        f"{SITE}|TEMP-F": 1,
        f"{SITE}|RR": 1,
        f"{SITE}|NOT-MAPPED": 1,
    }
    assert np.isnan(frame["Temp"]).all() and frame["HR"].iloc[2] == 88

    site_map = tmp_path / "site_map.csv"
    site_map.write_text(
        f"system,code,variable,unit\n# a comment\n{SITE},TEMP-F,Temp,[degF]\n{SITE},RR,Resp,/min\n"
    )
    frame, report = _frame(export, site_map=site_map)
    assert report.observations.unmapped_codes == {f"{SITE}|NOT-MAPPED": 1}
    assert math.isclose(frame["Temp"].iloc[0], 37.0) and frame["Resp"].iloc[1] == 22
    # LOINC heart rate beside the local respiratory-rate code: the standard code decides, the
    # conflict is counted.
    assert frame["HR"].iloc[2] == 88 and np.isnan(frame["Resp"].iloc[2])
    assert sum(report.observations.code_conflicts.values()) == 1


def test_site_map_rows_are_checked() -> None:
    with pytest.raises(ValueError, match="canonical variables"):
        site_code_rows(f"system,code,variable,unit\n{SITE},X,Pulse,/min\n")
    with pytest.raises(ValueError, match="missing column"):
        site_code_rows("system,code\nx,y\n")
    with pytest.raises(ValueError, match="cannot be converted"):
        GENERIC.with_site_codes(site_code_rows(f"system,code,variable,unit\n{SITE},X,HR,mg/dL\n"))
    rows = site_code_rows(f"system,code,variable,unit\n{SITE},X,HR,\n")
    assert rows[0].status == "site-confirmed" and not rows[0].standard and rows[0].implied_unit is None


def test_absent_values_bad_lines_and_observations_named_by_encounter_only(tmp_path: Path) -> None:
    icu = [{"location": {"display": "ICU"}, "period": {"start": ICU_START, "end": "2025-03-01T13:30:00Z"}}]
    absent = _obs("a", "2025-03-01T10:30:00Z", None, dataAbsentReason={"coding": [{"code": "not-performed"}]})
    by_encounter = _obs("b", "2025-03-01T11:30:00Z", 101, pid=None, encounter={"reference": "Encounter/h1"})
    orphan = _obs("c", "2025-03-01T11:30:00Z", 55, pid=None)
    export = _write(tmp_path / "x", [_patient(), _hospital(location=icu), absent, by_encounter, orphan])
    with open(export / "Observation.ndjson", "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"resourceType": "Patient", "id": "wrong-file"}) + "\n")
    frame, report = _frame(export)
    assert report.observations.skipped["data-absent"] == 1
    assert report.bad_lines == {"Observation": 2}
    assert report.observations_unassigned == {"no-patient": 1}
    assert frame["HR"].tolist()[:3] == [
        pytest.approx(np.nan, nan_ok=True),
        101,
        pytest.approx(np.nan, nan_ok=True),
    ]


def test_stays_without_an_icu_clock_are_reported_by_reason(tmp_path: Path) -> None:
    resources = [
        _patient("p1"),
        _hospital("h1", "p1"),  # a ward stay: no ICU location
        _patient("p2"),
        _hospital("h2", "p2", location=[{"location": {"display": "MICU"}}]),  # an ICU entry without a start
        _patient("p3"),
        {
            **_hospital(
                "h3", "p3", location=[{"location": {"display": "SICU"}, "period": {"start": ICU_START}}]
            ),
            "period": {"start": "2025-03-01T06:00:00Z"},
        },
        _patient("p4"),
        _hospital(
            "h4",
            "p4",
            location=[
                {
                    "location": {"display": "ICU"},
                    "period": {"start": "2023-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
                }
            ],
        ),
    ]
    frame, report = _frame(_write(tmp_path / "x", resources), max_icu_hours=24 * 30)
    assert report.stays == 0 and len(frame) == 0
    assert report.stays_skipped == {"no-icu-location": 2, "no-icu-end": 1, "icu-clock-too-long": 1}
    assert report.patients_without_stay == 4


def test_sepsis_conditions_label_the_hours_from_six_before_onset(tmp_path: Path) -> None:
    child = _icu_child(location=[{"location": {"reference": "Location/loc-micu"}}])
    onset = "2025-03-01T19:20:00Z"  # ICU hour 10 (9 h 20 min after the ICU start)
    conditions = [
        {
            "resourceType": "Condition",
            "id": "c1",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "A41.9"}]},
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/icu1"},
            "onsetDateTime": onset,
        },
        {  # refuted: not an outcome
            "resourceType": "Condition",
            "id": "c2",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008"}]},
            "verificationStatus": {"coding": [{"code": "refuted"}]},
            "subject": {"reference": "Patient/p1"},
            "onsetDateTime": "2025-03-01T11:00:00Z",
        },
    ]
    export = _write(tmp_path / "x", [_patient(), _hospital(), child, MICU, *conditions], gz=True)
    frame, report = _frame(export)
    assert frame["SepsisLabel"].tolist() == [0] * 3 + [1] * 21
    assert report.septic_stays == 1 and report.conditions == {"sepsis": 1}

    # A sepsis Condition without an onset time: the labels cannot be built, the stay is left out.
    del conditions[0]["onsetDateTime"]
    export = _write(tmp_path / "y", [_patient(), _hospital(), child, MICU, conditions[0]])
    frame, report = _frame(export)
    assert len(frame) == 0 and report.stays_skipped == {"sepsis-onset-unknown": 1}


def test_split_and_compressed_files_and_partitions_give_the_same_table(tmp_path: Path) -> None:
    icu = [{"location": {"display": "ICU"}, "period": {"start": ICU_START, "end": "2025-03-01T20:30:00Z"}}]
    resources: list[dict[str, Any]] = []
    observations = []
    for n in range(12):
        pid = f"p{n}"
        resources += [_patient(pid), _hospital(f"h{n}", pid, location=icu)]
        observations += [
            _obs(f"o{n}-{h}", f"2025-03-01T{10 + h:02d}:30:00Z", 60 + n + h, pid=pid) for h in range(10)
        ]
    one = _write(tmp_path / "one", [*resources, *observations])
    split = _write(tmp_path / "split", resources)
    (split / "Observation.000.ndjson").write_text("".join(json.dumps(o) + "\n" for o in observations[::2]))
    (split / "Observation.001.ndjson.gz").write_bytes(
        gzip.compress("".join(json.dumps(o) + "\n" for o in observations[1::2]).encode())
    )
    (split / "manifest.json").write_text("{}")
    expected, _ = _frame(one)
    for directory, partitions in ((one, 1), (split, 64), (split, 3)):
        got, report = _frame(directory, partitions=partitions)
        got = got.sort_values(["person", "ICULOS"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected.sort_values(["person", "ICULOS"]).reset_index(drop=True))
    assert report.files_ignored == ["manifest.json"] and report.stays == 12


def test_each_stay_carries_its_thirty_day_readmission(tmp_path: Path) -> None:
    from fhir_mappings import iter_export

    def stay(eid: str, start: str, end: str) -> dict[str, Any]:
        icu = [{"location": {"display": "ICU"}, "period": {"start": start, "end": end}}]
        return {**_hospital(eid, location=icu), "period": {"start": start, "end": end}}

    resources = [
        _patient(),
        stay("h1", "2025-03-01T10:00:00Z", "2025-03-02T10:00:00Z"),
        stay("h2", "2025-03-20T10:00:00Z", "2025-03-21T10:00:00Z"),  # 18 days later
        stay("h3", "2025-06-20T10:00:00Z", "2025-06-21T10:00:00Z"),
    ]
    reader = iter_export(_write(tmp_path / "x", resources), pseudonymizer=PSEUDO)
    got = {s.hospital_key: s.readmitted for s in reader.stays()}
    assert got == {
        PSEUDO.pseudonym("Encounter", "h1"): True,
        PSEUDO.pseudonym("Encounter", "h2"): False,
        PSEUDO.pseudonym("Encounter", "h3"): False,
    }


def test_two_icu_episodes_of_one_hospital_stay_are_two_tables(tmp_path: Path) -> None:
    def entry(name: str, start: str, end: str) -> dict[str, Any]:
        return {"location": {"display": name}, "period": {"start": start, "end": end}}

    hospital = _hospital(
        location=[
            entry("MICU", "2025-03-01T10:00:00Z", "2025-03-01T14:30:00Z"),
            entry(
                "MICU bed 2", "2025-03-01T15:00:00Z", "2025-03-01T17:30:00Z"
            ),  # 30 min later: the same stay
            entry("Ward 5", "2025-03-01T17:30:00Z", "2025-03-02T08:00:00Z"),
            entry("SICU", "2025-03-02T08:00:00Z", "2025-03-02T10:30:00Z"),  # back to an ICU: a second stay
        ]
    )
    observations = [_obs("o1", "2025-03-01T16:10:00Z", 91), _obs("o2", "2025-03-02T09:10:00Z", 120)]
    frame, report = _frame(_write(tmp_path / "x", [_patient(), hospital, *observations]))
    assert report.stays == 2
    first, second = (rows.reset_index(drop=True) for _, rows in frame.groupby("patient", sort=False))
    first, second = sorted((first, second), key=len, reverse=True)
    assert len(first) == 8 and first["HR"].iloc[6] == 91 and (first["Unit1"] == 1).all()
    # The second stay's clock starts at its own ICU entry; the first stay's value falls before it (hour 1).
    assert len(second) == 3 and (second["Unit2"] == 1).all()
    assert second["HR"].tolist()[:2] == [91, 120]
