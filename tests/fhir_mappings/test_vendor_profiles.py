"""Vendor profiles against hand-written Epic, Oracle Health and MEDITECH payloads (vendor_payloads.py):
every value read as a reader expects, the standard code winning over a disagreeing local code,
code sets matched across tenants, each local-code and encounter-class row one by one, the stays
that give no usable ICU clock, bundles without a Patient, and `cds map` never printing a traceback."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import pytest

from fhir_mappings import (
    GENERIC,
    PROFILES,
    CodeRow,
    MappingReport,
    Pseudonymizer,
    encounter_classes,
    map_bundle,
    measurements_from_observation,
    select_encounter,
)
from hooks import SEPSIS, NoCard, ScoredCard, ScoringInput
from models import TRAINED_MAX_ICU_HOURS, ModelRegistry, RiskModel, model_task
from testkit.vendor_payloads import Refused, all_fixtures, check_value, oracle_health_icu

PSEUDO = Pseudonymizer(b"v" * 32)
FIXTURES = {f.name: f for f in all_fixtures()}


def _table(name: str) -> list[dict[str, str]]:
    text = resources.files("fhir_mappings").joinpath(f"tables/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.parametrize(
    ("fixture", "index"),
    [(f.name, i) for f in FIXTURES.values() for i in range(len(f.cases))],
)
def test_every_vendor_value_is_read_as_expected(fixture: str, index: int) -> None:
    assert check_value(FIXTURES[fixture], index) in ("right", "refused-right")


def test_no_vendor_value_maps_in_the_wrong_variable_and_refusals_are_counted() -> None:
    results = [check_value(f, i) for f in FIXTURES.values() for i in range(len(f.cases))]
    refusals = sum(isinstance(c.expected, Refused) for f in FIXTURES.values() for c in f.cases)
    assert refusals >= 10 and results.count("refused-right") == refusals
    assert results.count("right") == len(results) - refusals


def test_cerner_systolic_with_its_event_code_first_is_sbp_not_hr() -> None:
    """The real-payload finding: 703501 (Systolic Blood Pressure) was mapped to HR and lost."""
    obs = oracle_health_icu().cases[0].resource
    assert obs["code"]["coding"][0]["code"] == "703501" and obs["code"]["coding"][1]["code"] == "8480-6"
    for profile in (PROFILES["oracle-health"], GENERIC):
        report = MappingReport()
        (m,) = measurements_from_observation(obs, profile, report)
        assert (
            (m.variable, m.value) == ("SBP", 128.0) and not report.unit_errors and not report.code_conflicts
        )


def test_the_standard_code_wins_and_the_disagreement_is_counted() -> None:
    """A site table that still says 703501 is HR: LOINC 8480-6 beside it decides, and the
    disagreement is counted; alone (no LOINC), the local row is the fallback."""
    wrong = CodeRow(
        "HR", "https://fhir.cerner.com/*/codeSet/72", "703501", None, 1, "wrong row", standard=False
    )
    base = PROFILES["generic"]
    site = type(base)(name="site", codes=base.codes.extended([wrong]), units=base.units)
    obs = oracle_health_icu().cases[0].resource
    report = MappingReport()
    (m,) = measurements_from_observation(obs, site, report)
    assert (m.variable, m.value) == ("SBP", 128.0)
    assert report.code_conflicts == {
        "https://fhir.cerner.com/*/codeSet/72|703501=HR vs http://loinc.org|8480-6=SBP": 1
    }
    alone = {**obs, "code": {"coding": [obs["code"]["coding"][0]]}}
    report = MappingReport()
    assert measurements_from_observation(alone, site, report) == []
    # Nothing to disagree with: the (wrong) local row decides, and only the unit check catches it.
    assert report.unit_errors == {"HR|mm[Hg]": 1} and not report.code_conflicts
    # Components too: the BP panel's systolic component with the wrong local row.
    panel = oracle_health_icu().cases[2].resource
    report = MappingReport()
    got = {m.variable: m.value for m in measurements_from_observation(panel, site, report)}
    assert got == {"SBP": 142.0, "DBP": 88.0} and sum(report.code_conflicts.values()) == 1


LOCAL_ROWS = _table("local_codes.csv")


@pytest.mark.parametrize("row", LOCAL_ROWS, ids=lambda r: f"{r['profile']}:{r['code']}")
def test_each_local_code_row_alone(row: dict[str, str]) -> None:
    """Each row of local_codes.csv: a verified row maps its code alone (no LOINC beside it) in its
    profile, in any tenant or customer its system's `*` stands for, and never in the generic
    profile; an unverified row is never applied. Each row names where it comes from."""
    assert row["source"].strip(), row
    assert row["status"] in ("verified", "site-confirmed", "unverified")
    system = row["system"].replace(
        "*", "3f1c9a7e-5b2d-4e8f-9a61-0c2b7d4e8f15" if "cerner" in row["system"] else "812"
    )
    unit = {
        "SBP": "mm[Hg]",
        "DBP": "mm[Hg]",
        "MAP": "mm[Hg]",
        "HR": "/min",
        "Resp": "/min",
        "O2Sat": "%",
        "Temp": "Cel",
        "FiO2": "1",
        "Potassium": "mmol/L",
    }[row["variable"]]
    value = {"FiO2": 0.3, "Temp": 37.1, "Potassium": 4.2}.get(row["variable"], 90.0)
    obs = {
        "resourceType": "Observation",
        "id": "x",
        "status": "final",
        "effectiveDateTime": "2026-03-01T08:00:00Z",
        "code": {"coding": [{"system": system, "code": row["code"]}]},
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit},
    }
    in_profile = measurements_from_observation(obs, PROFILES[row["profile"]], MappingReport())
    assert measurements_from_observation(obs, GENERIC, MappingReport()) == []
    if row["status"] == "unverified":
        assert in_profile == []
    else:
        assert [(m.variable, m.value) for m in in_profile] == [(row["variable"], value)]


CLASS_ROWS = _table("encounter_classes.csv")


@pytest.mark.parametrize("row", CLASS_ROWS, ids=lambda r: f"{r['profile']}:{r['code']}:{r['display']}")
def test_each_encounter_class_row(row: dict[str, str]) -> None:
    profiles = list(PROFILES) if row["profile"] == "*" else [row["profile"]]
    coding = {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode"
        if row["system"] == "*"
        else row["system"],
        "code": "site-code-77" if row["code"] == "*" else row["code"],
        "display": row["display"],
    }
    assert row["source"].strip()
    for name in profiles:
        kind = encounter_classes(name).kind(coding)
        assert kind == (row["kind"] if row["status"] != "unverified" else None), (name, row)


def test_epic_classes_are_read_only_in_the_epic_profile() -> None:
    hov = {"system": "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260", "code": "4", "display": "HOV"}
    assert encounter_classes("epic").kind(hov) == "outpatient"
    assert encounter_classes("generic").kind(hov) is None  # unrecognised elsewhere: a fallback only


def test_planned_cancelled_and_outpatient_encounters_are_never_the_stay() -> None:
    fixture = FIXTURES["epic-icu"]
    encounters = [r for r in fixture.others if r["resourceType"] == "Encounter"]
    epic = PROFILES["epic"]
    assert select_encounter(encounters, None, profile=epic)["id"] == "eIcuStay3"
    assert select_encounter(encounters, None, profile=epic, in_progress=False)["id"] == "eIcuStay3"
    assert select_encounter(encounters, "ePreAdmit7", profile=epic) is None  # planned: not even by id
    cancelled = [{**encounters[0], "status": "cancelled"}, encounters[2]]
    assert select_encounter(cancelled, None, profile=epic, in_progress=False) is None  # the HOV is outpatient
    only = FIXTURES["epic-preadmission-only"]
    assert (
        select_encounter([r for r in only.others if r["resourceType"] == "Encounter"], None, profile=epic)
        is None
    )


@pytest.mark.parametrize("name", list(FIXTURES))
def test_map_bundle_on_each_vendor_fixture(name: str) -> None:
    fixture = FIXTURES[name]
    mapped = map_bundle(
        fixture.bundle(),
        pseudonymizer=PSEUDO,
        profile=PROFILES[fixture.profile],
        max_icu_hours=TRAINED_MAX_ICU_HOURS,
    )
    assert mapped.validation == [], mapped.validation
    assert mapped.patient_from == fixture.patient_from
    if fixture.stay.startswith("table:"):
        assert mapped.stay is not None, mapped.stay_problem
        assert mapped.stay.current_hour == int(fixture.stay.split(":")[1])
        assert mapped.stay.pseudonym and mapped.stay.pseudonym.startswith("p")
    else:
        assert mapped.stay is None and mapped.stay_reason == fixture.stay and mapped.stay_problem
    # Counts are the truth: every value a case expects is counted as a measurement.
    expected = sum(len(c.expected) for c in fixture.cases if not isinstance(c.expected, Refused))
    assert mapped.report.measurements == expected
    strangers = sum(1 for r in fixture.others if r["resourceType"] == "Observation")
    assert mapped.report.skipped.get("other-patient", 0) == strangers


def test_a_bundle_naming_no_patient_is_never_pseudonymised() -> None:
    fixture = FIXTURES["meditech-icu-no-patient"]
    bundle = fixture.bundle()
    for entry in bundle["entry"]:
        entry["resource"].pop("subject", None)
    mapped = map_bundle(bundle, pseudonymizer=PSEUDO, profile=PROFILES["meditech"])
    assert mapped.patient_from == "none" and mapped.stay is not None and mapped.stay.pseudonym is None
    assert set(mapped.stay.table.patient) == {"<no-patient-id>"}
    # Two such bundles never share a pseudonym: there is none (formerly both were "unknown"'s).
    assert (
        mapped.report.measurements == sum(len(c.expected) for c in fixture.cases) + 1
    )  # + the stranger's HR


def _model() -> RiskModel:
    spec = model_task("sepsis").feature_spec()
    return RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_sepsis_hook_on_each_vendor_fixture(name: str) -> None:
    fixture = FIXTURES[name]
    resources_ = [e["resource"] for e in fixture.bundle()["entry"]]
    patient = next((r for r in resources_ if r["resourceType"] == "Patient"), None)
    subject = next(r for r in resources_ if r["resourceType"] == "Encounter")["subject"]["reference"]
    fetched = {
        "patient": patient,
        "encounters": [r for r in resources_ if r["resourceType"] == "Encounter"],
        "vitals": [r for r in resources_ if r["resourceType"] == "Observation"],
        "locations": [r for r in resources_ if r["resourceType"] == "Location"],
    }
    result = SEPSIS.score(
        ScoringInput(
            context={"patientId": subject.split("/")[1], "userId": "Practitioner/p1"},
            fetched=fetched,
            model=_model(),
            now=fixture.now,
            pseudonymizer=PSEUDO,
            card_uuid=str(uuid.uuid4()),
            source="https://ehr.example.org/fhir",
            profile=PROFILES[fixture.profile],
        )
    )
    if fixture.hook == "scored":
        assert isinstance(result, ScoredCard), result
    elif fixture.hook == "not-applicable":
        assert result is None  # no stay in context: the service does not apply
    else:
        reason, stay = fixture.hook.split(":")
        assert isinstance(result, NoCard) and (result.reason, result.log) == (reason, {"stay": stay})


def test_value_strings() -> None:
    def read(text: str, loinc: str) -> tuple[list[tuple[str, float]], dict]:
        obs = {
            "resourceType": "Observation",
            "id": "s",
            "status": "final",
            "effectiveDateTime": "2026-03-01T08:00:00Z",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "valueString": text,
        }
        report = MappingReport()
        got = measurements_from_observation(obs, GENERIC, report)
        return [(m.variable, round(m.value, 6)) for m in got], report.as_dict()

    assert read(" 7.31 ", "2744-1")[0] == [("pH", 7.31)]
    assert read("1.2e1 K/uL", "6690-2")[0] == [("WBC", 12.0)]
    assert read("135 mmol/l", "2823-3")[1]["implausible"] == {"Potassium": 1}
    assert read(">500 mg/dL", "2345-7")[1]["skipped"] == {"comparator": 1}
    assert read("4.0 Smith", "2823-3")[1]["unit_errors"] == {"Potassium|<unrecognised>": 1}  # never echoed
    assert read("see note", "2823-3")[1]["skipped"] == {"string-not-a-number": 1}
    assert read("4" * 200, "2823-3")[1]["skipped"] == {"string-not-a-number": 1}


def _cds_map(path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CDS_VAR_DIR": str(tmp_path / "var"), "CDS_PSEUDONYM_KEY": "k" * 32, "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "cds.cli", "map", "--bundle", str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cds_map_never_prints_a_traceback(tmp_path: Path) -> None:
    for name, profile, words in (
        (
            "oracle-health-outpatient",
            "oracle-health",
            "no canonical table: Encounter.period: has neither an ICU location",
        ),
        ("epic-preadmission-only", "epic", "no canonical table: no hospital stay among 2 Encounter(s)"),
        ("meditech-long-stay", "meditech", f"beyond the {TRAINED_MAX_ICU_HOURS} hours allowed"),
    ):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(FIXTURES[name].bundle()))
        done = _cds_map(path, tmp_path, "--profile", profile)
        assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr
        assert words in done.stdout and "unmapped codes:" in done.stdout and "Observations:" in done.stdout
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "obs.json").write_text(json.dumps({"resourceType": "Observation", "status": "final"}))
    (tmp_path / "two.json").write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {"resource": {"resourceType": "Patient", "id": "a"}},
                    {"resource": {"resourceType": "Patient", "id": "b"}},
                ],
            }
        )
    )
    for bad, words in (
        ("bad.json", "is not JSON"),
        ("obs.json", "error: "),
        ("two.json", "holds 2 patients"),
        ("missing.json", "cannot read"),
    ):
        done = _cds_map(tmp_path / bad, tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr and words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_cds_map_shows_the_patient_source_and_the_stay(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(FIXTURES["meditech-icu-no-patient"].bundle()))
    done = _cds_map(path, tmp_path, "--profile", "meditech")
    assert done.returncode == 0, done.stderr
    assert "patient id from: Encounter.subject" in done.stdout
    assert '"other-patient": 1' in done.stdout and "canonical table: 3 ICU hours, pseudonym p" in done.stdout


REVIEWED = _table("loinc_review.csv")


@pytest.mark.parametrize("row", REVIEWED, ids=lambda r: r["code"])
def test_each_reviewed_loinc_code_maps_as_the_review_says(row: dict[str, str]) -> None:
    """tables/loinc_review.csv: the LOINC codes checked against what the vendors document and send.
    A code reviewed as a variable maps to it; one reviewed as not used maps to nothing and has its
    reason in unmapped_codes.csv (what `cds map` prints)."""
    from fhir_mappings import NO_ROW, unmapped_reason, variable

    expected = row["expected"]
    unit, value = "1", 1.0
    if expected != "-":
        var = variable(expected)
        unit, value = var.unit, ((var.low or 0.0) + (var.high or 2.0)) / 2
    obs = {
        "resourceType": "Observation",
        "id": "r",
        "status": "final",
        "effectiveDateTime": "2026-03-01T08:00:00Z",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": row["category"],
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": row["code"]}]},
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit},
    }
    got = measurements_from_observation(obs, GENERIC, MappingReport())
    if expected == "-":
        assert got == [] and unmapped_reason(f"http://loinc.org|{row['code']}") != NO_ROW
    else:
        assert [m.variable for m in got] == [expected]
