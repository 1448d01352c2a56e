"""Property: whatever JSON an EHR puts in a prefetch, a service answers a card, no card, or a
CDSError (a 4xx) — never another exception (a 500), and never a card it cannot serialise.

Each example takes a valid prefetch of one service, replaces, deletes or adds a few random nodes
(Patient, Encounter, Location, Observation, Condition, MedicationRequest, Procedure fields) with
hostile JSON values (wrong types, 10**400, 1e308, CR/LF strings, nested objects, references of
every form), turns the prefetch into fetched resources as the pipeline does, and scores it.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo_ehr import discharge_hook_request, discharge_to_fhir, patient_view_request, searchset
from fhir_mappings import CDSError, FhirQuery, Pseudonymizer, read_search_page
from hooks import READMISSION, SEPSIS, NoCard, ScoredCard, ScoringInput, Service, followup_needs
from models import ModelRegistry, RiskModel, model_task
from testkit.helpers import synthetic_stay
from testkit.readmission_rows import row

PSEUDO = Pseudonymizer(b"hostile-input-key-0123456789")
DISCHARGED = datetime(2026, 3, 1, 12, tzinfo=UTC)

_NUMBERS = st.one_of(
    st.sampled_from([10**400, -(10**400), 2**64, 1e308, -1e308, 5e-324, -0.0, -1, -50, 1e6, 99999, True]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _NUMBERS,
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\r\n",
            "line\r\nbreak",
            "Patient/other",
            "Patient/x\r\n",
            "#icu",
            "#",
            "/",
            "Location/",
            "Location/abc/_history/3",
            "https://ehr.example.org/fhir/Location/abc",
            "urn:uuid:1234",
            "Patient?x=1",
            "2026-01-01T00:00:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "2026-02-30",
            "2026-03-01T10:00:00.1234567Z",
            "male",
            "final",
            "in-progress",
            "entered-in-error",
            "IMP",
            "ICU",
            "vital-signs",
            "laboratory",
            "http://loinc.org",
            "8867-4",
            "mm[Hg]",
            "Cel",
            "%",
            "1e308",
            "NaN",
        ]
    ),
)
_KEYS = st.sampled_from(
    [
        "reference",
        "coding",
        "code",
        "system",
        "value",
        "unit",
        "start",
        "end",
        "id",
        "resourceType",
        "display",
        "text",
        "location",
        "period",
        "valueQuantity",
        "contained",
        "status",
    ]
)
HOSTILE = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_KEYS | st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
# Fields worth adding where they were absent (contained resources, references, times, values).
_ADDED = st.sampled_from(
    [
        "contained",
        "subject",
        "encounter",
        "location",
        "diagnosis",
        "period",
        "valueQuantity",
        "component",
        "category",
        "status",
        "id",
        "effectiveDateTime",
        "issued",
        "birthDate",
        "gender",
        "class",
        "rank",
        "priorPrescription",
        "medicationReference",
        "medicationCodeableConcept",
        "dosageInstruction",
        "ingredient",
        "type",
        "name",
        "hospitalization",
        "priority",
        "condition",
        "code",
        "entry",
        "resource",
    ]
)


# Fields the mapping reads: half of the replacements aim at one of these.
_READ = frozenset(
    {
        "value",
        "id",
        "reference",
        "start",
        "end",
        "effectiveDateTime",
        "effectivePeriod",
        "issued",
        "birthDate",
        "gender",
        "status",
        "code",
        "unit",
        "system",
        "coding",
        "category",
        "component",
        "valueQuantity",
        "subject",
        "encounter",
        "location",
        "period",
        "class",
        "type",
        "name",
        "contained",
        "diagnosis",
        "condition",
        "rank",
        "medicationReference",
        "medicationCodeableConcept",
        "dosageInstruction",
        "doseAndRate",
        "doseQuantity",
        "priorPrescription",
        "ingredient",
        "itemCodeableConcept",
        "hospitalization",
        "resourceType",
        "entry",
    }
)


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every node under `node`, as a path of keys and indices (the root excluded)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*path, key))
        found += _paths(child, (*path, key))
    return found


def _containers(node: Any, path: tuple = ()) -> list[tuple]:
    found = [path] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found += _containers(child, (*path, key))
    return found


def _at(root: Any, path: tuple) -> Any:
    for key in path:
        root = root[key]
    return root


@cache
def _model(name: str) -> RiskModel:
    spec = model_task(name).feature_spec()
    return RiskModel(ModelRegistry().load(name, spec), spec, nthread=1)


@cache
def _base(service_id: str) -> tuple[dict[str, Any], datetime]:
    """(a valid hook request, the time to score it at)."""
    if service_id == SEPSIS.id:
        stay = synthetic_stay(hours=8)
        now = datetime.now(UTC)
        body = patient_view_request(stay)
        body["prefetch"]["encounters"] = searchset([stay.encounter, stay.location])  # Location `_include`d
        return body, now
    res = discharge_to_fhir(row(), discharged_at=DISCHARGED)
    return discharge_hook_request(res), DISCHARGED


def _fetched(service: Service, prefetch: dict[str, Any]) -> dict[str, Any]:
    """Prefetch -> fetched resources, as cds/pipeline.py reads them (search Bundles become lists)."""
    fetched: dict[str, Any] = {}
    for key, template in service.prefetch.items():
        if key not in prefetch:
            continue
        value = prefetch[key]
        if "?" in template:
            fetched[key] = [] if value is None else read_search_page(value, f"prefetch.{key}").resources
        else:
            ok = isinstance(value, dict) and isinstance(value.get("resourceType"), str)
            fetched[key] = (
                value if ok and value["resourceType"] not in ("OperationOutcome", "Bundle") else None
            )
    return fetched


def _answer(service: Service, body: dict[str, Any], now: datetime) -> ScoredCard | NoCard | None:
    fetched = _fetched(service, body["prefetch"])
    for need in followup_needs(service, body["context"], fetched):  # second-round reads: validated queries
        assert isinstance(need.query, FhirQuery) and need.query.relative_url().count("/") <= 1
    inp = ScoringInput(
        context=body["context"],
        fetched=fetched,
        model=_model(service.model_name),
        now=now,
        pseudonymizer=PSEUDO,
        card_uuid=str(uuid.uuid4()),
        source="https://ehr.example.org/fhir",
    )
    return service.score(inp)


def _check(result: ScoredCard | NoCard | None) -> None:
    assert result is None or isinstance(result, ScoredCard | NoCard), type(result)
    if isinstance(result, ScoredCard):
        assert 0.0 <= result.probability <= 1.0 and math.isfinite(result.probability)
        json.dumps(result.card, allow_nan=False)
        json.dumps(result.risk_assessment, allow_nan=False)
        json.dumps(result.log, allow_nan=False)
    elif isinstance(result, NoCard):
        assert result.reason and isinstance(result.reason, str)
        json.dumps(result.log, allow_nan=False)


class Mutated:
    """A mutated hook request; its repr lists the changes only (the request is tens of kB)."""

    def __init__(self, body: dict[str, Any], changes: list[str]) -> None:
        self.body, self.changes = body, changes

    def __repr__(self) -> str:
        return f"Mutated({self.changes!r})"


@st.composite
def _mutated(draw: st.DrawFn, service_id: str) -> Mutated:
    base, _ = _base(service_id)
    body = copy.deepcopy(base)
    prefetch = body["prefetch"]
    changes: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(prefetch)))  # each resource kind equally likely
        action = draw(st.integers(0, 3))
        numbers = [p for p in _paths(prefetch[key]) if isinstance(_at(prefetch[key], p), int | float)]
        if action == 1 and numbers:  # a hostile number where a number was (a value, a dose, a rank)
            path = draw(st.sampled_from(numbers))
            _at(prefetch[key], path[:-1])[path[-1]] = value = draw(_NUMBERS)
            changes.append(f"{key}{list(path)} = {value!r:.80}")
            continue
        if action == 0:  # add a field to some object
            where = draw(st.sampled_from(_containers(prefetch[key])))
            name, value = draw(_ADDED), draw(HOSTILE)
            _at(prefetch[key], where)[name] = value
            changes.append(f"{key}{list(where)} + {name}={value!r:.80}")
            continue
        paths = _paths(prefetch[key])
        if not paths:
            prefetch[key] = value = draw(HOSTILE)
            changes.append(f"{key} = {value!r:.80}")
            continue
        read = [p for p in paths if p[-1] in _READ]
        path = draw(st.sampled_from(read if read and draw(st.booleans()) else paths))
        parent = _at(prefetch[key], path[:-1])
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
            changes.append(f"{key}{list(path)} deleted")
        else:
            parent[path[-1]] = value = draw(HOSTILE)
            changes.append(f"{key}{list(path)} = {value!r:.80}")
    return Mutated(body, changes)


@pytest.mark.parametrize("service", [SEPSIS, READMISSION], ids=lambda s: s.id)
def test_the_unmutated_prefetch_gets_a_card(service: Service) -> None:
    body, now = _base(service.id)
    assert isinstance(_answer(service, copy.deepcopy(body), now), ScoredCard)


@pytest.mark.parametrize("service", [SEPSIS, READMISSION], ids=lambda s: s.id)
def test_hostile_prefetch_gives_a_card_no_card_or_a_cds_error(service: Service) -> None:
    _, now = _base(service.id)

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated=_mutated(service.id))
    def check(mutated: Mutated) -> None:
        try:
            result = _answer(service, mutated.body, now)
        except CDSError:
            return
        _check(result)

    check()
