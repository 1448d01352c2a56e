"""The promotion gate: the golden set is reproducible and catches a broken version; on held-out
PhysioNet patients (a directory of .psv files, as `--data` takes them) a quickly trained, weaker
version is refused with the reasons in the table, and an equal one is promoted with its gate
recorded in the audit trail."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cds.stores import SQLiteStore
from fhir_mappings import PHYSIONET_COLUMNS
from models import (
    GOLDEN_DIR,
    SEPSIS_TASK,
    ModelRegistry,
    RiskModel,
    build_golden_set,
    check_golden,
    train_sepsis,
)
from testkit.lifecycle import copy_version, tmp_registry


def cds(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


def test_the_committed_golden_set_is_what_its_generator_writes(tmp_path: Path) -> None:
    committed = (GOLDEN_DIR / "sepsis.json").read_text()
    assert json.loads(committed) == build_golden_set("sepsis")
    done = cds({}, "golden", "build", "sepsis", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sepsis.json").read_text() == committed  # byte for byte
    cases = json.loads(committed)["cases"]
    kinds = {c["id"].split("-")[0]: c["expected_bands"] for c in cases}
    assert kinds == {"normal": ["low"], "shock": ["high"], "sepsis": ["moderate", "high"]}


def test_the_served_version_passes_the_golden_set_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    spec = SEPSIS_TASK.feature_spec()
    served = RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)
    results = check_golden(served, SEPSIS_TASK, build_golden_set("sepsis"))
    assert [r.case for r in results if not r.ok] == []

    registry = tmp_registry(tmp_path / "models")
    # Bands set far above the threshold: septic shock would read "low".
    copy_version(registry, "sepsis", "2", "5", risk_bands={"low": 0.0, "moderate": 0.5, "high": 0.9})
    env = {"CDS_MODEL_DIR": str(registry), "CDS_VAR_DIR": str(tmp_path / "var")}
    done = cds(env, "models", "promote", "sepsis", "5", "--to", "shadow", "--reason", "r", "--actor", "ci")
    assert done.returncode == 3
    golden = next(line for line in done.stdout.splitlines() if line.startswith("golden set"))
    assert "8/20" in golden and golden.endswith("FAIL")  # only the 8 normal cases still right
    assert "shock-01 got moderate" in done.stderr or "shock-01 got low" in done.stderr


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, set_a: pd.DataFrame) -> Path:
    """The first 1,500 set-A patients as PhysioNet .psv files (one per patient)."""
    folder = tmp_path_factory.mktemp("psv")
    keep = sorted(set_a["patient"].unique())[:1500]
    part = set_a[set_a["patient"].isin(keep)]
    for patient, rows in part.groupby("patient"):
        rows[[*PHYSIONET_COLUMNS, "SepsisLabel"]].to_csv(
            folder / f"p{int(patient):06d}.psv", sep="|", index=False, na_rep="NaN"
        )
    return folder


def test_a_weaker_candidate_is_refused_and_an_equal_one_promoted(
    tmp_path: Path, set_a_path: Path, held_out: Path
) -> None:
    registry = tmp_registry(tmp_path / "models")
    copy_version(registry, "sepsis", "2", "3")
    weak = train_sepsis(
        set_a_path,
        ModelRegistry(registry),
        patients=300,
        num_boost_round=4,
        folds=2,
        progress=False,
        activate=False,
    )
    assert weak.version == "4" and ModelRegistry(registry).active_version("sepsis") == "2"
    env = {"CDS_MODEL_DIR": str(registry), "CDS_VAR_DIR": str(tmp_path / "var")}

    refused = cds(
        env, "models", "promote", "sepsis", "4", "--to", "canary", "--data", str(held_out), "--reason", "r"
    )
    assert refused.returncode == 3, refused.stderr
    table = refused.stdout.splitlines()
    auroc = next(line for line in table if line.startswith("AUROC (hour)"))
    assert auroc.endswith("FAIL")
    assert "AUROC (hour)" in refused.stderr and "not promoted to canary" in refused.stderr

    passed = cds(
        env, "models", "promote", "sepsis", "3", "--to", "active", "--data", str(held_out), "--reason", "same"
    )
    assert passed.returncode == 0, passed.stderr
    assert "gate PASSED" in passed.stdout
    held = next(line for line in passed.stdout.splitlines() if line.startswith("held-out patients"))
    assert held.split()[2] == held.split()[3] and int(held.split()[2]) > 200  # both on the same patients

    async def audit() -> tuple[dict[str, str], list[dict]]:
        store = SQLiteStore(tmp_path / "var" / "cds.sqlite3")
        try:
            return await store.active_versions(), [e.details async for e in store.iter_audit()]
        finally:
            await store.close()

    active, entries = asyncio.run(audit())
    assert active == {"sepsis": "3"}
    assert len(entries) == 2 and entries[0]["gate"]["passed"] and entries[0]["action"] == "promote"
    # v2 was active by the registry's ACTIVE file only: the promotion records it as retired.
    assert (entries[1]["version"], entries[1]["status"], entries[1]["action"], entries[1]["by"]) == (
        "2",
        "retired",
        "displaced",
        "3",
    )
    assert set(entries[0]["gate"]["checks"]) >= {
        "AUROC (hour)",
        "utility",
        "golden set",
        "largest subgroup AUROC gap",
    }


def test_readmission_versions_are_compared_on_the_same_held_out_patients(tmp_path: Path) -> None:
    from tests.conftest import DATA_DIR, need

    data = need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US")
    registry = tmp_registry(tmp_path / "models")
    copy_version(registry, "readmission", "1", "2")
    copy_version(registry, "readmission", "1", "3", seed=7)
    env = {"CDS_MODEL_DIR": str(registry), "CDS_VAR_DIR": str(tmp_path / "var")}
    done = cds(
        env, "models", "promote", "readmission", "2", "--to", "canary", "--data", str(data), "--reason", "r"
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("  ")[0].strip(): line for line in done.stdout.splitlines()}
    assert rows["utility"].endswith("not defined for this model") and "gate PASSED" in done.stdout
    assert int(rows["held-out patients"].split()[2]) > 5000
    other = cds(
        env, "models", "promote", "readmission", "3", "--to", "active", "--data", str(data), "--reason", "r"
    )
    assert other.returncode == 2 and "hold out different patients" in other.stderr
