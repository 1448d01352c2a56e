"""Valid FHIR references in every form an EHR may write them, read the same way: relative
(`Location/abc`), absolute (`https://ehr.example.org/fhir/Location/abc`), versioned
(`Location/abc/_history/3`) and contained (`#icu`).

The resources here are written out by hand, as an EHR's JSON would look, not produced by our
demo converters, so a test passes only if the mapping reads that shape itself.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest

from fhir_mappings import (
    DIAGNOSIS_GROUPS,
    DISCHARGE_COLUMNS,
    GENERIC,
    DischargeRecord,
    PatientRecord,
    Pseudonymizer,
    discharge_to_table,
    icu_clock,
    parse_reference,
    reference_id,
    resolve_reference,
    to_canonical,
)
from hooks import READMISSION, SEPSIS, ScoredCard, ScoringInput
from models import ModelRegistry, RiskModel, model_task
from tests.handmade import vital_sign

PSEUDO = Pseudonymizer(b"reference-forms-key-0123456789")
NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
ADMITTED = datetime(2026, 5, 3, 6, 0, tzinfo=UTC)  # hospital admission, 30 h before NOW
ICU_START = datetime(2026, 5, 4, 4, 30, tzinfo=UTC)  # 7.5 h before NOW: NOW is in ICU hour 8
BASE = "https://ehr.example.org/fhir"

ICU_LOCATION = {
    "resourceType": "Location",
    "id": "loc-micu-4",
    "status": "active",
    "name": "4 West Medical Intensive Care",
    "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "ICU"}]}],
}
WARD = {"resourceType": "Location", "id": "loc-ward-2", "status": "active", "name": "2 North"}


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encounter(icu_reference: str, *, contained: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A hospital stay: ward from admission, then the ICU bed (named only by its reference)."""
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "enc-5521",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/pat-5521"},
        "period": {"start": _iso(ADMITTED)},
        "location": [
            {
                "location": {"reference": "Location/loc-ward-2"},
                "status": "completed",
                "period": {"start": _iso(ADMITTED), "end": _iso(ICU_START)},
            },
            {
                "location": {"reference": icu_reference},
                "status": "active",
                "period": {"start": _iso(ICU_START)},
            },
        ],
    }
    if contained:
        encounter["contained"] = contained
    return encounter


def _vital(
    oid: str, loinc: str, value: float, unit: str, at: datetime, subject: str = "Patient/pat-5521"
) -> dict[str, Any]:
    return vital_sign(oid, loinc, value, unit, _iso(at), subject=subject)


def _vitals() -> list[dict[str, Any]]:
    """Heart rate and respiratory rate every hour from admission (ward hours included)."""
    out = []
    t = ADMITTED + timedelta(minutes=20)
    i = 0
    while t < NOW:
        out.append(_vital(f"hr-{i}", "8867-4", 88 + i % 7, "/min", t))
        out.append(_vital(f"rr-{i}", "9279-1", 18 + i % 3, "/min", t))
        t += timedelta(hours=1)
        i += 1
    return out


PATIENT = {"resourceType": "Patient", "id": "pat-5521", "gender": "female", "birthDate": "1958-09-14"}

# How the ICU bed is referenced -> (the Encounter, the Locations fetched alongside it).
ICU_FORMS: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {
    "contained": (_encounter("#icu", contained=[{**ICU_LOCATION, "id": "icu"}]), {"loc-ward-2": WARD}),
    "absolute": (_encounter(f"{BASE}/Location/loc-micu-4"), {"loc-ward-2": WARD, "loc-micu-4": ICU_LOCATION}),
    "versioned": (
        _encounter("Location/loc-micu-4/_history/3"),
        {"loc-ward-2": WARD, "loc-micu-4": ICU_LOCATION},
    ),
    "relative": (_encounter("Location/loc-micu-4"), {"loc-ward-2": WARD, "loc-micu-4": ICU_LOCATION}),
}


def test_reference_forms_parse_to_type_and_id() -> None:
    assert parse_reference({"reference": "Location/abc"}) == ("Location", "abc")
    assert parse_reference({"reference": f"{BASE}/Location/abc"}) == ("Location", "abc")
    assert parse_reference({"reference": "Location/abc/_history/3"}) == ("Location", "abc")
    assert parse_reference({"reference": f"{BASE}/Location/abc/_history/3"}) == ("Location", "abc")
    assert parse_reference({"reference": "#icu"}) == ("#", "icu")
    for unreadable in (
        "urn:uuid:6e1b",
        "Patient?identifier=x|1",
        "#",
        "",
        "Location/",
        None,
        5,
        ["Location/a"],
    ):
        assert parse_reference({"reference": unreadable}) is None, unreadable
    assert reference_id({"reference": "#icu"}, "Location") is None  # contained: not a server id
    encounter = ICU_FORMS["contained"][0]
    assert resolve_reference({"reference": "#icu"}, "Location", encounter)["name"] == ICU_LOCATION["name"]
    assert resolve_reference({"reference": "#icu"}, "Condition", encounter) is None  # wrong type
    assert resolve_reference({"reference": "#other"}, "Location", encounter) is None


@pytest.mark.parametrize("form", sorted(ICU_FORMS))
def test_the_icu_clock_starts_at_the_icu_bed_however_it_is_referenced(form: str) -> None:
    encounter, locations = ICU_FORMS[form]
    clock = icu_clock(encounter, locations, NOW, GENERIC)
    assert clock.from_location and clock.icu_start == ICU_START
    assert clock.unit == "medical" and clock.hosp_adm_hours == -22.5

    record = PatientRecord("pat-5521", PATIENT, encounter, _vitals(), locations)
    stay = to_canonical(record, as_of=NOW, pseudonymizer=PSEUDO)
    assert stay.current_hour == 8
    frame = stay.table.to_frame()
    assert frame["Unit1"].eq(1).all() and frame["HospAdmTime"].eq(-22.5).all()
    # Values every hour at :20: 05:20 is 50 min into the ICU (hour 1, which also holds the ward hours
    # before it, the latest winning), 11:20 is hour 7, and nothing yet in hour 8 (11:30-12:00).
    hr = frame.set_index("ICULOS")["HR"]
    assert hr[1] == 88 + 23 % 7 and hr[2] == 88 + 24 % 7 and hr[7] == 88 + 29 % 7 and math.isnan(hr[8])


def test_an_unresolvable_icu_reference_falls_back_to_admission() -> None:
    """The control: without the Location the bed is not known to be an ICU bed."""
    encounter, _ = ICU_FORMS["absolute"]
    clock = icu_clock(encounter, {"loc-ward-2": WARD}, NOW, GENERIC)
    assert not clock.from_location and clock.icu_start == ADMITTED


@cache
def _model(name: str) -> RiskModel:
    spec = model_task(name).feature_spec()
    return RiskModel(ModelRegistry().load(name, spec), spec, nthread=1)


def _score(service: Any, fetched: dict[str, Any], context: dict[str, Any], now: datetime) -> Any:
    return service.score(
        ScoringInput(
            context=context,
            fetched=fetched,
            model=_model(service.model_name),
            now=now,
            pseudonymizer=PSEUDO,
            card_uuid=str(uuid.uuid4()),
            source=BASE,
        )
    )


@pytest.mark.parametrize("form", sorted(ICU_FORMS))
def test_the_sepsis_card_names_the_right_icu_hour_for_every_reference_form(form: str) -> None:
    encounter, locations = ICU_FORMS[form]
    fetched = {
        "patient": PATIENT,
        "encounters": [encounter, *locations.values()],
        "vitals": _vitals(),
        "labs": [],
    }
    context = {"userId": "Practitioner/dr-1", "patientId": "pat-5521", "encounterId": "enc-5521"}
    scored = _score(SEPSIS, fetched, context, NOW)
    assert isinstance(scored, ScoredCard)
    assert scored.card["extension"]["org.cds-ml.risk"]["icuHour"] == 8
    assert scored.log["icu_hour"] == 8


@pytest.mark.parametrize(
    ("subject", "kept"),
    [
        ({"reference": "Patient/pat-5521"}, True),
        ({"reference": f"{BASE}/Patient/pat-5521"}, True),
        ({"reference": "Patient/pat-5521/_history/7"}, True),
        (
            {"identifier": {"system": "urn:mrn", "value": "5521"}},
            True,
        ),  # a logical reference: the search vouches
        ({"reference": "Patient/pat-0042"}, False),
        ({"reference": f"{BASE}/Patient/pat-0042/_history/1"}, False),
        ({"reference": "Group/icu-cohort"}, False),
        ({"reference": ["Patient/pat-5521"]}, False),
        ("Patient/pat-5521", False),
    ],
)
def test_observation_subject_in_every_form(subject: Any, kept: bool) -> None:
    encounter, locations = ICU_FORMS["relative"]
    obs = {**_vital("hr-x", "8867-4", 131, "/min", NOW - timedelta(minutes=5)), "subject": subject}
    stay = to_canonical(
        PatientRecord("pat-5521", PATIENT, encounter, [obs], locations), as_of=NOW, pseudonymizer=PSEUDO
    )
    hr = float(stay.table.to_frame()["HR"].iloc[-1])
    assert hr == 131 if kept else math.isnan(hr)
    if not kept:
        assert sum(stay.report.skipped.values()) == 1


# --- readmission: diagnoses, medications, procedures and labs of one discharge --------------

ENCOUNTER_ID = "enc-77"
DISCHARGE_AT = datetime(2026, 4, 20, 15, 0, tzinfo=UTC)
ADMIT_77 = datetime(2026, 4, 14, 9, 0, tzinfo=UTC)
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LAB = [
    {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
        ]
    }
]


def _condition(cid: str, code: str, subject: str = "Patient/pat-77") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": subject},
    }


def _discharge() -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": ENCOUNTER_ID,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"{BASE}/Patient/pat-77"},
        "period": {"start": _iso(ADMIT_77), "end": _iso(DISCHARGE_AT)},
        "contained": [
            {
                "resourceType": "Condition",
                "id": "dx-main",
                "code": {"coding": [{"system": ICD10, "code": "I50.9"}]},
            }
        ],
        "diagnosis": [
            {"condition": {"reference": "Condition/cond-89/_history/2"}, "rank": 3},
            {"condition": {"reference": "#dx-main"}, "rank": 1},
            {"condition": {"reference": f"{BASE}/Condition/cond-88"}, "rank": 2},
        ],
    }


def _request(
    rid: str, encounter_ref: str, medicine: dict[str, Any], subject: str = "Patient/pat-77"
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": subject},
        "encounter": {"reference": encounter_ref},
        **medicine,
    }


def _procedure(pid: str, encounter_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": pid,
        "status": "completed",
        "code": {"text": "Central line"},
        "subject": {"reference": "Patient/pat-77"},
        "encounter": {"reference": encounter_ref},
        "performedDateTime": _iso(ADMIT_77 + timedelta(days=1)),
    }


def _lab(
    oid: str,
    loinc: str,
    value: float,
    unit: str,
    *,
    encounter_ref: str | None,
    subject: str = "Patient/pat-77",
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": LAB,
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": subject},
        "effectiveDateTime": _iso(ADMIT_77 + timedelta(days=2)),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    if encounter_ref:
        obs["encounter"] = {"reference": encounter_ref}
    return obs


INSULIN = {
    "resourceType": "Medication",
    "id": "med-ins",
    "code": {"coding": [{"system": RXNORM, "code": "5856"}]},
}
FETCHED_77: dict[str, Any] = {
    "patient": {"resourceType": "Patient", "id": "pat-77", "gender": "male", "birthDate": "1949-02-11"},
    "encounter": _discharge(),
    "encounters": [_discharge()],
    "conditions": [
        _condition("cond-88", "E11.22"),
        _condition("cond-89", "N18.4"),
        _condition("cond-90", "J44.1", "Patient/pat-3"),
    ],
    "medications": [
        _request(
            "mr-1",
            f"{BASE}/Encounter/{ENCOUNTER_ID}",
            {"medicationReference": {"reference": f"{BASE}/Medication/med-ins"}},
        ),
        _request(
            "mr-2",
            f"Encounter/{ENCOUNTER_ID}/_history/4",
            {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "6809"}]}},
        ),
        _request(
            "mr-3",
            f"Encounter/{ENCOUNTER_ID}",
            {
                "contained": [
                    {
                        "resourceType": "Medication",
                        "id": "m",
                        "ingredient": [
                            {"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "4821"}]}}
                        ],
                    }
                ],
                "medicationReference": {"reference": "#m"},
            },
        ),
        _request(
            "mr-4",
            f"Encounter/{ENCOUNTER_ID}",
            {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "6809"}]}},
            subject="Patient/pat-3",
        ),  # another patient's: never counted
        INSULIN,  # `_include`d with the requests
    ],
    "procedures": [
        _procedure("p-1", f"{BASE}/Encounter/{ENCOUNTER_ID}"),
        _procedure("p-2", f"Encounter/{ENCOUNTER_ID}/_history/1"),
        _procedure("p-3", "Encounter/enc-other"),
    ],
    "labs": [
        _lab("o-1", "4548-4", 8.6, "%", encounter_ref=f"Encounter/{ENCOUNTER_ID}/_history/2"),
        _lab("o-2", "2345-7", 250, "mg/dL", encounter_ref=f"{BASE}/Encounter/{ENCOUNTER_ID}"),
        _lab(
            "o-3", "2345-7", 420, "mg/dL", encounter_ref=None, subject="Patient/pat-3"
        ),  # in the stay's dates
    ],
}


def test_discharge_references_in_every_form_are_read() -> None:
    f = FETCHED_77
    record = DischargeRecord(
        "pat-77",
        f["patient"],
        f["encounter"],
        f["encounters"],
        f["conditions"],
        f["labs"],
        [r for r in f["medications"] if r["resourceType"] == "MedicationRequest"],
        f["procedures"],
        medications=[r for r in f["medications"] if r["resourceType"] == "Medication"],
    )
    mapped = discharge_to_table(record, as_of=DISCHARGE_AT, pseudonymizer=PSEUDO)
    row = dict(zip(DISCHARGE_COLUMNS, mapped.table.values[0].tolist(), strict=True))
    groups = (
        "heart_failure",
        "diabetes_complicated",
        "renal_failure",
    )  # rank 1 (contained), 2 (absolute), 3 (_history)
    assert [row["dx1"], row["dx2"], row["dx3"]] == [float(DIAGNOSIS_GROUPS.index(g)) for g in groups]
    assert row["charlson:heart_failure"] == 1 and row["charlson:renal"] == 1
    assert row["drug:insulin"] == 1 and row["drug:metformin"] == 1 and row["drug:glipizide"] == 1  # Steady
    assert row["n_medications"] == 3 and row["n_procedures"] == 2
    assert row["n_lab_tests"] == 2 and row["a1c"] == 2 and row["glucose"] == 1  # not the other patient's 420
    assert mapped.skipped == {
        "Condition:other-patient": 1,
        "MedicationRequest:other-patient": 1,
        "Observation:other-patient": 1,
    }


def test_the_readmission_service_reads_included_medications_and_contained_diagnoses() -> None:
    context = {"userId": "Practitioner/dr-1", "patientId": "pat-77", "encounterId": ENCOUNTER_ID}
    scored = _score(READMISSION, FETCHED_77, context, DISCHARGE_AT)
    assert isinstance(scored, ScoredCard)
    assert (
        scored.log["conditions"] == 3
        and scored.log["medication_requests"] == 3
        and scored.log["procedures"] == 2
    )
