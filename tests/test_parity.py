"""The one-mapping check: the same patient-hour scored from the training table (`cds score`) and
from FHIR resources through the live hook gives the same probability, for many set-A patients;
and the hook withholds its card (too little recent data) exactly on the hours where the same rule
read on the training table says so."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from demo_ehr import icu_start_for_hour, patient_view_request, stay_to_fhir
from fhir_mappings import CANONICAL_COLUMNS, physionet_to_table
from hooks import SEPSIS

pytestmark = pytest.mark.data


def _pick_patients(set_a: pd.DataFrame, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    by_patient = set_a.groupby("patient")
    septic = by_patient["SepsisLabel"].max()
    late_start = by_patient["ICULOS"].min() > 1
    no_unit = by_patient["Unit1"].first().isna()
    picks = set(rng.choice(septic[septic == 1].index, n // 2, replace=False).tolist())
    picks |= set(rng.choice(septic[septic == 0].index, n // 4, replace=False).tolist())
    picks |= set(rng.choice(late_start[late_start].index, n // 8, replace=False).tolist())
    picks |= set(rng.choice(no_unit[no_unit].index, n // 8, replace=False).tolist())
    return sorted(picks)


def _write_psv(rows: pd.DataFrame, directory: Path) -> None:
    pid = int(rows["patient"].iloc[0])
    columns = [*CANONICAL_COLUMNS, "ICULOS", "SepsisLabel"]
    rows[columns].to_csv(directory / f"p{pid:06d}.psv", sep="|", index=False, na_rep="NaN")


def test_hook_gives_the_probability_cds_score_gives(set_a: pd.DataFrame, cds_server, tmp_path: Path) -> None:
    patients = _pick_patients(set_a, 48, seed=11)
    psv_dir = tmp_path / "psv"
    psv_dir.mkdir()
    stays = {pid: set_a[set_a["patient"] == pid].reset_index(drop=True) for pid in patients}
    for rows in stays.values():
        _write_psv(rows, psv_dir)

    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "score", "sepsis", "--data", str(psv_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    scored = map(json.loads, done.stdout.splitlines())
    table_scores = {(r["patient"], r["hour"]): r["probability"] for r in scored}
    assert len(table_scores) == sum(len(r) for r in stays.values())

    rng = np.random.default_rng(5)
    minimum = SEPSIS.minimum_data
    assert minimum is not None
    compared = withheld = 0
    with httpx.Client(base_url=cds_server.url, timeout=10) as client:
        for pid, rows in stays.items():
            tab = physionet_to_table(rows)
            met = minimum.met(CANONICAL_COLUMNS, tab.table.values)
            enough = dict(zip(tab.table.iculos.tolist(), met.tolist(), strict=True))
            positions = sorted({0, len(rows) - 1, *rng.integers(len(rows), size=2).tolist()})
            for pos in positions:
                hour = int(rows["ICULOS"].iloc[pos])
                now = datetime.now(UTC)
                stay = stay_to_fhir(rows, icu_start=icu_start_for_hour(now, hour), up_to_hour=hour)
                response = client.post("/cds-services/sepsis-risk", json=patient_view_request(stay))
                assert response.status_code == 200, response.text
                cards = response.json()["cards"]
                if not enough[hour]:
                    assert cards == [], (pid, hour)
                    withheld += 1
                    continue
                data = cards[0]["extension"]["org.cds-ml.risk"]
                assert data["icuHour"] == hour
                assert data["probability"] == table_scores[(pid, pos)], (pid, hour)
                compared += 1
    assert compared >= 100 and withheld >= 5
