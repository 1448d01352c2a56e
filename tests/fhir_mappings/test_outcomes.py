"""Outcomes as FHIR: which Conditions are sepsis, PhysioNet's hourly label rule, and 30-day
readmission from the export's own later inpatient Encounters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fhir_mappings import (
    HospitalStay,
    hospital_stay,
    is_sepsis_condition,
    readmissions,
    sepsis_labels,
    sepsis_onset,
)

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("system", "code", "sepsis"),
    [
        (SCT, "91302008", True),
        (ICD, "A41.9", True),
        (ICD, "A419", True),
        (ICD, "A40.0", True),
        (ICD, "R65.21", True),
        (ICD, "R65.10", False),  # SIRS of non-infectious origin
        (ICD, "J18.9", False),
        (SCT, "233604007", False),  # pneumonia
        ("http://hl7.org/fhir/sid/icd-9-cm", "A41.9", False),  # the code of another system
    ],
)
def test_which_conditions_are_sepsis(system: str, code: str, sepsis: bool) -> None:
    assert (
        is_sepsis_condition(
            {"resourceType": "Condition", "code": {"coding": [{"system": system, "code": code}]}}
        )
        is sepsis
    )


def test_entered_in_error_and_refuted_conditions_are_not_outcomes() -> None:
    base = {"resourceType": "Condition", "code": {"coding": [{"system": SCT, "code": "91302008"}]}}
    for status in ("entered-in-error", "refuted"):
        assert not is_sepsis_condition({**base, "verificationStatus": {"coding": [{"code": status}]}})
    assert is_sepsis_condition({**base, "verificationStatus": {"coding": [{"code": "confirmed"}]}})


def test_onset_from_datetime_or_period_and_the_stay_it_names() -> None:
    got = sepsis_onset(
        {
            "onsetDateTime": "2025-01-01T05:30:00-05:00",
            "encounter": {"reference": "Encounter/e1"},
            "subject": {"reference": "Patient/p"},
        }
    )
    assert (
        got.onset == datetime(2025, 1, 1, 10, 30, tzinfo=UTC)
        and got.encounter_id == "e1"
        and got.patient_id == "p"
    )
    assert sepsis_onset({"onsetPeriod": {"start": "2025-01-02"}}).onset == datetime(2025, 1, 2, tzinfo=UTC)
    assert sepsis_onset({"onsetString": "last week"}).onset is None


def test_labels_are_one_from_six_hours_before_onset() -> None:
    assert sepsis_labels(12, 10).tolist() == [0, 0, 0] + [1] * 9
    assert sepsis_labels(5, 3).tolist() == [1] * 5  # onset within six hours of the ICU start
    assert sepsis_labels(4, None).tolist() == [0] * 4
    assert sepsis_labels(3, 40).tolist() == [0] * 3  # onset after the stay


def test_readmission_within_thirty_days_of_discharge() -> None:
    day = timedelta(days=1)
    stays = [
        HospitalStay("a1", "p1", T0, T0 + 5 * day),
        HospitalStay("a2", "p1", T0 + 20 * day, T0 + 22 * day),  # 15 days after a1: a readmission
        HospitalStay("a3", "p1", T0 + 60 * day, T0 + 61 * day),  # 38 days after a2: not one
        HospitalStay("b1", "p2", T0, T0 + 2 * day),
        HospitalStay("b2", "p2", T0 + 32 * day, T0 + 33 * day),  # exactly 30 days after: counts
        HospitalStay("c1", "p3", T0, None),  # no discharge: no outcome
        HospitalStay("d1", "p4", T0, T0 + day, died=True),
        HospitalStay("e1", "p5", T0, T0 + 2 * day),
        HospitalStay("x1", "p9", T0 + 10 * day, T0 + 11 * day),  # someone else's stay never counts
    ]
    assert readmissions(stays) == {
        "a1": True,
        "a2": False,
        "a3": False,
        "b1": True,
        "b2": False,
        "c1": None,
        "d1": None,
        "e1": False,
        "x1": False,
    }
    assert readmissions(stays, days=7)["a1"] is False


def test_hospital_stay_reads_period_and_death_at_discharge() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "period": {"start": "2025-01-01T00:00:00Z", "end": "2025-01-03"},
        "hospitalization": {"dischargeDisposition": {"coding": [{"code": "exp"}]}},
    }
    stay = hospital_stay(encounter, "p1")
    assert stay is not None and stay.died and stay.end == datetime(2025, 1, 3, tzinfo=UTC)
    assert hospital_stay({"resourceType": "Encounter"}, "p1") is None
