"""The CDS Hooks prefetch rules, one by one, on the pure planner (no HTTP)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fhir_mappings import EPIC, GENERIC, InvalidIdError, MappingError
from hooks import READMISSION, SEPSIS, followup_needs, plan_fetch

CONTEXT = {"userId": "Practitioner/u1", "patientId": "p1", "encounterId": "e1"}
PATIENT = {"resourceType": "Patient", "id": "p1"}
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}


def bundle(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    return b


def obs(oid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final"}


FULL = {
    "patient": PATIENT,
    "encounters": bundle({"resourceType": "Encounter", "id": "e1"}),
    "vitals": bundle(obs("v1")),
    "labs": bundle(obs("l1")),
    "consent": bundle(),
}


def keys(plan: Any) -> list[str]:
    return sorted(n.key for n in plan.needs)


def test_a_complete_prefetch_needs_nothing() -> None:
    plan = plan_fetch(SEPSIS, CONTEXT, FULL, profile=GENERIC, has_fhir_server=True)
    assert plan.needs == [] and plan.counts["prefetched"] == 5
    assert plan.fetched["patient"] == PATIENT and [o["id"] for o in plan.fetched["vitals"]] == ["v1"]


def test_an_absent_key_is_fetched() -> None:
    plan = plan_fetch(
        SEPSIS,
        CONTEXT,
        {k: v for k, v in FULL.items() if k != "patient"},
        profile=GENERIC,
        has_fhir_server=True,
    )
    assert keys(plan) == ["patient"] and str(plan.needs[0].query).endswith("Patient/p1")


def test_null_means_nothing_found_and_nothing_is_fetched() -> None:
    plan = plan_fetch(
        SEPSIS, CONTEXT, {**FULL, "patient": None, "labs": None}, profile=GENERIC, has_fhir_server=True
    )
    assert plan.needs == [] and plan.fetched["patient"] is None and plan.fetched["labs"] == []


@pytest.mark.parametrize("failed", [OUTCOME, "<html>502</html>", {"no": "type"}, 42])
def test_an_operation_outcome_or_non_fhir_value_is_fetched(failed: Any) -> None:
    plan = plan_fetch(
        SEPSIS, CONTEXT, {**FULL, "patient": failed, "vitals": failed}, profile=GENERIC, has_fhir_server=True
    )
    assert keys(plan) == ["patient", "vitals"] and "vitals" not in plan.partial


def test_a_read_sent_as_a_bundle_of_one_is_that_resource() -> None:
    plan = plan_fetch(
        SEPSIS, CONTEXT, {**FULL, "patient": bundle(PATIENT)}, profile=GENERIC, has_fhir_server=True
    )
    assert plan.fetched["patient"] == PATIENT and plan.needs == []
    two = plan_fetch(
        SEPSIS, CONTEXT, {**FULL, "patient": bundle(PATIENT, PATIENT)}, profile=GENERIC, has_fhir_server=True
    )
    assert keys(two) == ["patient"]


def test_a_partial_search_is_completed_from_its_next_link_and_outcomes_are_counted() -> None:
    first = bundle(obs("v1"), OUTCOME, next_url="https://ehr.example.org/fhir/Observation?page=2")
    plan = plan_fetch(SEPSIS, CONTEXT, {**FULL, "vitals": first}, profile=GENERIC, has_fhir_server=True)
    assert keys(plan) == ["vitals"] and plan.partial["vitals"].next_url.endswith("page=2")
    assert [o["id"] for o in plan.partial["vitals"].resources] == ["v1"]
    done = plan_fetch(
        SEPSIS, CONTEXT, {**FULL, "labs": bundle(obs("l1"), OUTCOME)}, profile=GENERIC, has_fhir_server=True
    )
    assert done.counts["ehr_outcomes"] == 1 and done.needs == []


def test_observation_searches_follow_the_vendor_profiles_categories() -> None:
    wider = replace(GENERIC, observation_categories=("vital-signs", "laboratory", "exam"))
    plan = plan_fetch(
        SEPSIS,
        CONTEXT,
        {"patient": PATIENT, "encounters": FULL["encounters"], "vitals": FULL["vitals"]},
        profile=wider,
        has_fhir_server=True,
    )
    # vital-signs was prefetched: only the other two categories are asked, one search each.
    assert keys(plan) == ["consent", "labs", "observations:exam"]
    assert all("category=" in str(n.query) for n in plan.needs if n.key != "consent")


def test_a_partly_prefetched_category_is_completed_not_asked_again() -> None:
    first = bundle(obs("v1"), next_url="https://ehr.example.org/fhir/Observation?page=2")
    plan = plan_fetch(
        SEPSIS, CONTEXT, {**FULL, "vitals": first, "labs": OUTCOME}, profile=GENERIC, has_fhir_server=True
    )
    assert keys(plan) == ["labs", "vitals"] and set(plan.partial) == {"vitals"}


def test_consent_is_asked_only_when_there_is_a_server_to_ask() -> None:
    without = {k: v for k, v in FULL.items() if k != "consent"}
    assert keys(plan_fetch(SEPSIS, CONTEXT, without, profile=GENERIC, has_fhir_server=True)) == ["consent"]
    assert plan_fetch(SEPSIS, CONTEXT, without, profile=GENERIC, has_fhir_server=False).needs == []


def test_a_template_the_context_cannot_fill_is_skipped() -> None:
    context = {k: v for k, v in CONTEXT.items() if k != "encounterId"}
    plan = plan_fetch(READMISSION, context, {}, profile=GENERIC, has_fhir_server=True)
    assert "encounter" not in keys(plan) and "encounters" in keys(plan)


def test_a_context_id_that_is_not_a_fhir_id_never_reaches_a_query() -> None:
    with pytest.raises(InvalidIdError):
        plan_fetch(SEPSIS, {**CONTEXT, "patientId": "../admin"}, {}, profile=GENERIC, has_fhir_server=True)


def test_a_prefetch_bundle_that_is_not_one_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        plan_fetch(
            SEPSIS,
            CONTEXT,
            {**FULL, "vitals": {"resourceType": "Bundle", "entry": "nope"}},
            profile=GENERIC,
            has_fhir_server=True,
        )


def test_follow_ups_read_the_icu_location_the_first_round_revealed() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "location": [{"location": {"reference": "Location/icu-7"}}],
    }
    needs = followup_needs(SEPSIS, CONTEXT, {"encounters": [encounter]})
    assert [(n.key, str(n.query)) for n in needs] == [("location:icu-7", "Location/icu-7")]
    known = {"encounters": [encounter], "locations": [{"resourceType": "Location", "id": "icu-7"}]}
    assert followup_needs(SEPSIS, CONTEXT, known) == [] and followup_needs(READMISSION, CONTEXT, known) == []


def test_follow_ups_choose_the_stay_with_the_vendor_profile() -> None:
    """Without an encounterId the stay is chosen as the scoring chooses it: an Epic outpatient
    class is no stay under the Epic profile (nothing to follow up), only an unrecognised class
    (a fallback stay) under the generic one."""
    clinic = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "subject": {"reference": "Patient/p1"},
        "class": {
            "system": "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260",
            "code": "4",
            "display": "HOV",
        },
        "location": [{"location": {"reference": "Location/clinic-2"}}],
    }
    context = {"userId": "Practitioner/u1", "patientId": "p1"}
    fetched = {"encounters": [clinic]}
    assert [n.key for n in followup_needs(SEPSIS, context, fetched, profile=GENERIC)] == ["location:clinic-2"]
    assert followup_needs(SEPSIS, context, fetched, profile=EPIC) == []
