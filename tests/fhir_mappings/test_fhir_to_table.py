from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fhir_mappings import (
    GENERIC,
    InvalidResourceError,
    MappingError,
    MappingReport,
    PatientRecord,
    Pseudonymizer,
    age_in_years,
    icu_clock,
    measurements_from_observation,
    parse_datetime,
    to_canonical,
)

PSEUDO = Pseudonymizer(b"k" * 32)
ICU_START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def obs(
    code: str,
    value: float,
    at: datetime,
    unit: str,
    *,
    status: str = "final",
    oid: str | None = None,
    **extra: object,
) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid or f"o-{code}-{at.timestamp()}-{value}",
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": at.isoformat(),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        **extra,
    }


def encounter(**extra: object) -> dict:
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"code": "IMP"},
        "period": {"start": (ICU_START - timedelta(hours=5)).isoformat()},
        "location": [
            {
                "location": {"display": "Ward 4"},
                "period": {
                    "start": (ICU_START - timedelta(hours=5)).isoformat(),
                    "end": ICU_START.isoformat(),
                },
            },
            {"location": {"display": "MICU bed 3"}, "period": {"start": ICU_START.isoformat()}},
        ],
        **extra,
    }


def test_datetimes_with_offsets_are_normalised_to_utc() -> None:
    assert parse_datetime("2026-03-01T10:30:00+02:00", "t") == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    assert parse_datetime("2026-03-01T08:30:00.250Z", "t") == datetime(
        2026, 3, 1, 8, 30, 0, 250000, tzinfo=UTC
    )
    assert parse_datetime("2026-03", "t") == datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(InvalidResourceError):
        parse_datetime("2026-03-01T08:30:00", "t")  # a time needs a zone
    with pytest.raises(InvalidResourceError):
        parse_datetime("2026-02-30", "t")


def test_icu_clock_starts_at_the_icu_location_entry() -> None:
    clock = icu_clock(encounter(), {}, ICU_START + timedelta(hours=3), GENERIC)
    assert clock.icu_start == ICU_START
    assert clock.unit == "medical"
    assert clock.hosp_adm_hours == -5.0
    assert clock.hour_of(ICU_START + timedelta(minutes=1)) == 1
    assert clock.hour_of(ICU_START + timedelta(hours=1)) == 1
    assert clock.hour_of(ICU_START + timedelta(hours=1, seconds=1)) == 2
    assert clock.hour_of(ICU_START - timedelta(hours=3)) == 1  # before the ICU: hour 1 at least


def test_icu_clock_falls_back_to_the_encounter_start() -> None:
    enc = encounter(location=[])
    clock = icu_clock(enc, {}, ICU_START, GENERIC)
    assert clock.icu_start == ICU_START - timedelta(hours=5)
    assert clock.unit is None and clock.hosp_adm_hours == 0.0


def test_icu_location_recognised_by_location_type_code() -> None:
    enc = encounter(
        location=[{"location": {"reference": "Location/x"}, "period": {"start": ICU_START.isoformat()}}]
    )
    loc = {
        "resourceType": "Location",
        "id": "x",
        "name": "Surgical ICU",
        "type": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "ICU"}]}
        ],
    }
    clock = icu_clock(enc, {"x": loc}, ICU_START + timedelta(hours=1), GENERIC)
    assert clock.from_location and clock.unit == "surgical"


def test_words_match_whole_words_only() -> None:
    enc = encounter(
        location=[
            {"location": {"display": "Articular surgery ward"}, "period": {"start": ICU_START.isoformat()}}
        ]
    )
    clock = icu_clock(enc, {}, ICU_START, GENERIC)
    assert not clock.from_location


def test_blood_pressure_panel_gives_sbp_and_dbp() -> None:
    panel = obs("85354-9", 0, ICU_START, "mm[Hg]")
    del panel["valueQuantity"]
    panel["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 70, "unit": "mm[Hg]"},
        },
    ]
    report = MappingReport()
    got = {m.variable: m.value for m in measurements_from_observation(panel, GENERIC, report)}
    assert got == {"SBP": 120.0, "DBP": 70.0}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": "entered-in-error"}, "status:entered-in-error"),
        ({"status": "preliminary"}, "status:preliminary"),
        ({"valueQuantity": None, "dataAbsentReason": {"text": "unable"}}, "data-absent"),
        ({"valueQuantity": {"value": "high"}}, "non-numeric"),
    ],
)
def test_invalid_values_are_skipped_and_counted(change: dict, reason: str) -> None:
    o = obs("8867-4", 80, ICU_START, "/min")
    o.update(change)
    if o.get("valueQuantity") is None:
        o.pop("valueQuantity")
    report = MappingReport()
    assert measurements_from_observation(o, GENERIC, report) == []
    assert report.skipped[reason] == 1


def test_unconvertible_unit_is_reported_not_used() -> None:
    report = MappingReport()
    assert measurements_from_observation(obs("8867-4", 80, ICU_START, "mg/dL"), GENERIC, report) == []
    assert report.unit_errors["HR|mg/dL"] == 1


def test_canonical_table_places_values_in_icu_hours() -> None:
    now = ICU_START + timedelta(hours=3, minutes=10)  # ICU hour 4
    observations = [
        obs("8867-4", 90, ICU_START + timedelta(minutes=20), "/min"),
        obs("8867-4", 95, ICU_START + timedelta(minutes=50), "/min"),  # later in hour 1: wins
        obs("8310-5", 100.4, ICU_START + timedelta(hours=2, minutes=5), "[degF]"),
        obs("8867-4", 200, ICU_START + timedelta(hours=5), "/min"),  # after now
        obs("8867-4", 70, ICU_START - timedelta(days=30), "/min"),  # an earlier stay
        {
            **obs("8867-4", 60, ICU_START + timedelta(hours=1), "/min"),
            "subject": {"reference": "Patient/other"},
        },
    ]
    record = PatientRecord(
        patient_id="p1",
        patient={"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-06-15"},
        encounter=encounter(),
        observations=observations,
    )
    stay = to_canonical(record, as_of=now, pseudonymizer=PSEUDO)
    table = stay.table
    assert stay.current_hour == 4 and len(table) == 4
    assert list(table.iculos) == [1, 2, 3, 4]
    hr = table.column("HR")
    assert hr[0] == 95.0 and np.isnan(hr[1:]).all()
    assert table.column("Temp")[2] == pytest.approx(38.0)
    assert set(table.column("Age")) == {75.0} and set(table.column("Gender")) == {0.0}
    assert set(table.column("Unit1")) == {1.0} and set(table.column("Unit2")) == {0.0}
    assert set(table.column("HospAdmTime")) == {-5.0}
    assert stay.report.skipped["after-now"] == 1
    assert stay.report.skipped["before-stay"] == 1
    assert stay.report.skipped["other-patient"] == 1
    assert stay.pseudonym == PSEUDO.pseudonym("Patient", "p1") and "p1" not in stay.pseudonym


def test_no_encounter_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        to_canonical(PatientRecord("p1", None, None), as_of=ICU_START, pseudonymizer=PSEUDO)


def test_age_is_capped_at_90_and_pseudonyms_are_keyed() -> None:
    from datetime import date

    assert age_in_years(date(1920, 1, 1), date(2026, 1, 1)) == 90
    assert age_in_years(date(2000, 6, 2), date(2026, 6, 1)) == 25
    other = Pseudonymizer(b"z" * 32)
    assert PSEUDO.pseudonym("Patient", "1") != other.pseudonym("Patient", "1")
    assert PSEUDO.pseudonym("Patient", "1", source="https://a") != PSEUDO.pseudonym(
        "Patient", "1", source="https://b"
    )
    assert "k" * 32 not in repr(PSEUDO)
