"""`scan_observation` reads the usual Observation shape inline (plain dicts: effectiveDateTime, one
coding, a quantity with a float) and every other shape through its general helpers. The same
Observations given as read-only mappings that are not dicts take only the general path: both must
give the same measurements and the same report, on US Core, varied real-EHR shapes with decoys,
the vendor fixtures and seeded random corruptions of them (wrong JSON types, missing parts)."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pandas as pd
import pytest

from demo_ehr import icu_start_for_hour, stay_to_fhir
from fhir_mappings import PROFILES, MappingReport, scan_observation
from testkit.vendor_payloads import all_fixtures

_ODD = [
    None,
    1,
    1.5,
    True,
    "x",
    "",
    [],
    {},
    [1],
    {"a": 1},
    10**400,
    float("nan"),
    float("inf"),
    "2026-01-01T00:00:00Z",
    "2026-13-01",
    {"coding": []},
    {"coding": [{}]},
    {"coding": "x"},
    [{"coding": [{"code": 1}]}],
    {"value": "1"},
    {"value": None},
    {"value": 3.0, "comparator": "<"},
    {"value": 2.0, "unit": None},
    {"value": 2.5, "system": "x", "code": "mg"},
    {"value": True},
    {"value": 7},
    {"value": float("inf")},
    {"start": "2026-01-01T00:00:00Z"},
    "45.0 %",
    "<3",
]
_KEYS = [
    "status",
    "code",
    "category",
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "issued",
    "valueQuantity",
    "component",
    "dataAbsentReason",
    "valueString",
    "id",
]


def _stay_rows(hours: int) -> pd.DataFrame:
    rows = []
    for h in range(1, hours + 1):
        rows.append(
            {
                "patient": 7,
                "ICULOS": h,
                "HR": 90.0 + h,
                "O2Sat": 95.0,
                "SBP": 110.0 - h,
                "DBP": 60.0,
                "MAP": 75.0,
                "Resp": 22.0,
                "Temp": 38.1 if h % 3 == 0 else float("nan"),
                "FiO2": 0.4 if h % 4 == 0 else float("nan"),
                "Lactate": 2.5 if h % 5 == 0 else float("nan"),
                "Glucose": 140.0 if h % 6 == 0 else float("nan"),
                "Potassium": 4.2 if h % 6 == 0 else float("nan"),
                "Creatinine": 1.3 if h % 8 == 0 else float("nan"),
                "Age": 60.0,
                "Gender": 0,
                "Unit1": 0,
                "Unit2": 1,
                "HospAdmTime": -3.0,
            }
        )
    return pd.DataFrame(rows)


def _corpus() -> list[Any]:
    start = icu_start_for_hour(datetime(2026, 6, 1, tzinfo=UTC), 24)
    rows = _stay_rows(24)
    found: list[Any] = list(stay_to_fhir(rows, icu_start=start).observations)
    for seed in range(4):
        found += stay_to_fhir(
            rows, icu_start=start, shapes=seed, significant_digits=3 if seed % 2 else None
        ).observations
    for fixture in all_fixtures():
        found += [copy.deepcopy(case.resource) for case in fixture.cases]
    rng = random.Random(18)
    plain = list(found)
    for _ in range(3000):
        obs = copy.deepcopy(rng.choice(plain))
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(_KEYS)
            inner = obs.get(key)
            if rng.random() < 0.25:
                obs.pop(key, None)
            elif isinstance(inner, dict) and inner and rng.random() < 0.5:
                inner[rng.choice(list(inner))] = copy.deepcopy(rng.choice(_ODD))
            elif isinstance(inner, list) and inner and rng.random() < 0.5:
                inner[rng.randrange(len(inner))] = copy.deepcopy(rng.choice(_ODD))
            else:
                obs[key] = copy.deepcopy(rng.choice(_ODD))
        found.append(obs)
    return found


def _not_a_dict(value: Any) -> Any:
    """The same JSON value with every object a read-only mapping that is not a dict."""
    if isinstance(value, dict):
        return MappingProxyType({k: _not_a_dict(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_not_a_dict(v) for v in value]
    return value


def _scan(observations: list[Any], profile: Any) -> tuple[list[tuple[Any, ...]], MappingReport]:
    report = MappingReport()
    out: list[tuple[Any, ...]] = []
    per: list[tuple[Any, ...]] = []
    for obs in observations:
        before = len(out)
        scan_observation(obs, profile, report, out)
        per.append(tuple(out[before:]))
    return per, report


CORPUS = _corpus()


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("preliminary", [False, True])
def test_inline_path_equals_the_general_path(name: str, preliminary: bool) -> None:
    profile = PROFILES[name].with_preliminary() if preliminary else PROFILES[name]
    inline, inline_report = _scan(CORPUS, profile)
    general, general_report = _scan([_not_a_dict(o) for o in CORPUS], profile)
    assert repr(inline) == repr(general)  # repr: NaN values compare equal to themselves
    assert inline_report == general_report
    # The corpus reaches the branches: values mapped, and each kind of refusal.
    assert inline_report.measurements > 1000
    for reason in ("malformed", "bad-time", "no-time", "non-numeric", "comparator", "data-absent"):
        assert inline_report.skipped[reason] > 0, reason
    assert inline_report.unit_errors and inline_report.unmapped_codes
