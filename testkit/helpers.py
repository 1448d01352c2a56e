from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from cds import Settings, create_app
from cds.server import uvicorn_options
from demo_ehr import LoopbackServer, StayResources, icu_start_for_hour, serve_in_thread, stay_to_fhir


def serve_cds(settings: Settings) -> LoopbackServer:
    """The CDS app on a loopback port, served as `cds serve` serves it (protocol, limits, headers)."""
    return serve_in_thread(create_app(settings), **uvicorn_options(settings, in_process=True))


def no_empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of null, "", [] or {} anywhere in a JSON value (CDS Hooks forbids them)."""
    bad = []
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        for k, v in value.items():
            bad += no_empty_values(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad += no_empty_values(v, f"{path}[{i}]")
    return bad


def synthetic_stay(hours: int = 30, *, patient: int = 424242, septic_like: bool = True) -> StayResources:
    """A small ICU stay in set A's layout, without needing the dataset."""
    rows = []
    for h in range(1, hours + 1):
        rows.append(
            {
                "patient": patient,
                "ICULOS": h,
                "HR": 95 + (h if septic_like else 0),
                "O2Sat": 95,
                "Temp": 38.4 if h % 4 == 0 else float("nan"),
                "SBP": 105 - h / 2,
                "DBP": 60,
                "MAP": 72,
                "Resp": 24,
                "Lactate": 3.1 if h % 8 == 0 else float("nan"),
                "WBC": 14.2 if h % 12 == 0 else float("nan"),
                "Creatinine": 1.6 if h % 12 == 0 else float("nan"),
                "Age": 71.4,
                "Gender": 1,
                "Unit1": 1,
                "Unit2": 0,
                "HospAdmTime": -12.5,
            }
        )
    frame = pd.DataFrame(rows)
    return stay_to_fhir(frame, icu_start=icu_start_for_hour(datetime.now(UTC), hours), up_to_hour=hours)


def feedback(
    card: str,
    outcome: str = "overridden",
    *,
    when: str = "2026-11-20T10:00:00Z",
    reason: dict | None = None,
    comment: str | None = None,
    accepted: list[str] | None = None,
) -> dict:
    item: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": when}
    if accepted:
        item["acceptedSuggestions"] = [{"id": s} for s in accepted]
    if outcome == "overridden" and (reason or comment):
        item["overrideReason"] = {k: v for k, v in (("reason", reason), ("userComment", comment)) if v}
    return item


def new_id() -> str:
    return str(uuid.uuid4())
