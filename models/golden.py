"""The golden set: a frozen, versioned set of synthetic, de-identified ICU stays with the risk band
each must get, which every version must pass before it is promoted (models/gate.py).

No patient's data: each case is generated from physiological ranges by a seeded generator, so the
committed file (models/golden/sepsis.json) is reproduced byte for byte by `cds golden build
sepsis`. The cases are the obvious ones a clinician would not argue about: normal vital signs and
labs -> low; septic shock physiology (hypotension, tachycardia, fever, high lactate, organ
dysfunction) -> high; sepsis without shock -> moderate or high. A version that misses one of
them is broken (a wrong calibration map, swapped bands, a feature spec fed the wrong columns).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhir_mappings import physionet_to_table

from .errors import ModelError
from .score import RiskModel
from .task import RiskTask

__all__ = [
    "GOLDEN_DIR",
    "GOLDEN_VERSION",
    "GoldenResult",
    "build_golden_set",
    "check_golden",
    "golden_path",
    "load_golden",
    "write_golden",
]

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_VERSION = 1  # bump when the cases change; the file records it
SEED = 2026

Ranges = Mapping[str, tuple[float, float]]

NORMAL_VITALS: Ranges = {
    "HR": (64, 84),
    "O2Sat": (96, 99),
    "Temp": (36.5, 37.2),
    "SBP": (112, 132),
    "DBP": (68, 80),
    "MAP": (84, 96),
    "Resp": (12, 17),
}
NORMAL_LABS: Ranges = {
    "WBC": (5.5, 9.0),
    "Lactate": (0.7, 1.3),
    "Creatinine": (0.7, 1.0),
    "Platelets": (190, 300),
    "BUN": (10, 18),
    "Glucose": (90, 120),
    "Potassium": (3.8, 4.4),
    "Hgb": (12.5, 14.5),
}
SHOCK_VITALS: Ranges = {
    "HR": (122, 140),
    "O2Sat": (86, 91),
    "Temp": (39.0, 39.8),
    "SBP": (70, 84),
    "DBP": (36, 46),
    "MAP": (48, 58),
    "Resp": (28, 36),
}
SHOCK_LABS: Ranges = {
    "WBC": (19, 26),
    "Lactate": (4.5, 7.0),
    "Creatinine": (2.4, 3.4),
    "Platelets": (50, 90),
    "BUN": (38, 55),
    "Bilirubin_total": (2.5, 4.0),
    "FiO2": (0.5, 0.7),
    "Glucose": (160, 220),
}
SEPSIS_VITALS: Ranges = {
    "HR": (108, 120),
    "O2Sat": (91, 94),
    "Temp": (38.6, 39.2),
    "SBP": (92, 102),
    "DBP": (52, 60),
    "MAP": (64, 72),
    "Resp": (23, 28),
}
SEPSIS_LABS: Ranges = {
    "WBC": (15, 19),
    "Lactate": (2.4, 3.4),
    "Creatinine": (1.5, 2.0),
    "Platelets": (110, 150),
    "BUN": (26, 34),
}

# (kind, description, expected bands, vitals, labs, how many cases)
KINDS: tuple[tuple[str, str, tuple[str, ...], Ranges, Ranges, int], ...] = (
    ("normal", "normal vital signs and labs", ("low",), NORMAL_VITALS, NORMAL_LABS, 8),
    (
        "shock",
        "septic shock physiology developing over the last 6-12 hours",
        ("high",),
        SHOCK_VITALS,
        SHOCK_LABS,
        8,
    ),
    (
        "sepsis",
        "sepsis without shock developing over the last 6-12 hours",
        ("moderate", "high"),
        SEPSIS_VITALS,
        SEPSIS_LABS,
        4,
    ),
)


def _draw(rng: np.random.Generator, ranges: Ranges) -> dict[str, float]:
    return {k: round(float(rng.uniform(lo, hi)), 1 if hi > 5 else 2) for k, (lo, hi) in ranges.items()}


def _blend(rng: np.random.Generator, normal: Ranges, worse: Ranges, share: float) -> dict[str, float]:
    """Values `share` of the way from normal physiology to `worse` (a variable only `worse` has
    appears once the deterioration has begun)."""
    drawn_worse = _draw(rng, worse)
    if share >= 1.0:
        return drawn_worse
    drawn_normal = _draw(rng, normal)
    out = {}
    for name in {**drawn_normal, **drawn_worse}:
        if name not in drawn_normal:
            if share > 0:
                out[name] = drawn_worse[name]
        elif name not in drawn_worse:
            out[name] = drawn_normal[name]
        else:
            value = drawn_normal[name] + share * (drawn_worse[name] - drawn_normal[name])
            out[name] = round(value, 1 if abs(value) > 5 else 2)
    return dict(sorted(out.items()))


def _case(
    rng: np.random.Generator, kind: str, index: int, ranges: tuple[Ranges, Ranges], onset: bool
) -> dict[str, Any]:
    """One stay; `onset`: normal physiology first, the kind's physiology over its last 6-12 hours
    (the deterioration the model is for), else the kind's physiology all along."""
    hours = int(rng.integers(16, 49))
    lab_every = int(rng.integers(4, 9))
    changed_at = hours - int(rng.integers(6, 13)) if onset else 0
    static = {
        "Age": float(rng.integers(25, 86)),
        "Gender": int(rng.integers(0, 2)),
        "Unit1": int(index % 2 == 0),
        "Unit2": int(index % 2 == 1),
        "HospAdmTime": round(-float(rng.uniform(0.5, 48.0)), 2),
    }
    rows = []
    for hour in range(1, hours + 1):
        worse = max(0.0, (hour - changed_at) / (hours - changed_at)) if onset else 1.0
        row: dict[str, float] = {"ICULOS": float(hour), **_blend(rng, NORMAL_VITALS, ranges[0], worse)}
        if hour % lab_every == 0 or hour == hours:
            row.update(_blend(rng, NORMAL_LABS, ranges[1], worse))
        rows.append(row)
    return {"id": f"{kind}-{index + 1:02d}", "static": static, "rows": rows}


def build_golden_set(name: str = "sepsis") -> dict[str, Any]:
    """The golden set of `name`, generated: the same bytes every time (seeded)."""
    if name != "sepsis":
        raise ModelError(f"no golden set is defined for {name!r} (only sepsis)")
    rng = np.random.default_rng(SEED)
    cases = []
    for kind, description, expected, vitals, labs, count in KINDS:
        for i in range(count):
            case = _case(rng, kind, i, (vitals, labs), onset=kind != "normal")
            cases.append(
                {
                    "id": case["id"],
                    "description": description,
                    "expected_bands": list(expected),
                    "static": case["static"],
                    "rows": case["rows"],
                }
            )
    return {
        "name": name,
        "version": GOLDEN_VERSION,
        "generator": f"models/golden.py, seed {SEED} (cds golden build {name})",
        "note": "synthetic stays from physiological ranges: no patient's data",
        "cases": cases,
    }


def golden_path(name: str, root: Path = GOLDEN_DIR) -> Path:
    return root / f"{name}.json"


def write_golden(name: str, root: Path = GOLDEN_DIR) -> Path:
    path = golden_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build_golden_set(name), indent=1, sort_keys=True) + "\n")
    return path


def load_golden(name: str, root: Path = GOLDEN_DIR) -> dict[str, Any] | None:
    """The committed golden set of `name`, or None when it has none."""
    path = golden_path(name, root)
    if not path.is_file():
        return None
    found: dict[str, Any] = json.loads(path.read_text())
    return found


@dataclass(frozen=True)
class GoldenResult:
    case: str
    expected: tuple[str, ...]
    band: str
    probability: float

    @property
    def ok(self) -> bool:
        return self.band in self.expected


def _frame(case: Mapping[str, Any]) -> pd.DataFrame:
    rows = [{"patient": 1, **case["static"], **row} for row in case["rows"]]
    return pd.DataFrame(rows)


def check_golden(
    model: RiskModel, task: RiskTask, golden: Mapping[str, Any], *, explain: bool = True
) -> list[GoldenResult]:
    """Score each case as the hook does (canonical table -> the task's serving row -> calibrated
    probability -> band, and SHAP when `explain`), and compare the band with the expected ones."""
    results = []
    scorer: Callable[[np.ndarray], np.ndarray] = model.predict
    for case in golden["cases"]:
        table = physionet_to_table(_frame(case)).table
        row = task.serving_row(table, model.spec)
        probability = float(scorer(row)[0])
        if explain:
            model.explain(row[0])
        results.append(
            GoldenResult(case["id"], tuple(case["expected_bands"]), model.band(probability), probability)
        )
    return results
