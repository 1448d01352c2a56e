"""`cds site validate|recalibrate|adapt` and `cds evaluate --model`, run as a site runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel, evaluate_sepsis, load_sepsis_data
from tests.test_cli import cds

pytestmark = pytest.mark.data


def test_site_go_live_end_to_end(set_a_path: Path, set_a: pd.DataFrame, tmp_path: Path) -> None:
    env = {"CDS_MODEL_DIR": str(tmp_path / "registry")}
    trained = cds(
        "train", "sepsis", "--data", str(set_a_path), "--patients", "300", "--rounds", "15", env=env
    )
    assert trained.returncode == 0, trained.stderr
    site = tmp_path / "site.parquet"
    set_a[set_a["patient"].isin(set_a["patient"].unique()[1000:1300])].to_parquet(site)

    validated = cds(
        "site",
        "validate",
        "sepsis",
        "--data",
        str(site),
        "--out",
        str(tmp_path / "v"),
        "--replicates",
        "20",
        env=env,
    )
    assert validated.returncode == 0, validated.stderr
    golive = json.loads(validated.stdout)
    assert golive["model"] == "sepsis@1" and (tmp_path / "v" / "golive.html").is_file()

    recal = cds(
        "site",
        "recalibrate",
        "sepsis",
        "--data",
        str(site),
        "--out",
        str(tmp_path / "r"),
        "--replicates",
        "20",
        "--target-alerts",
        "20",
        env=env,
    )
    assert recal.returncode == 0, recal.stderr
    assert json.loads(recal.stdout)["version"] == "2"

    adapt = cds(
        "site",
        "adapt",
        "sepsis",
        "--data",
        str(site),
        "--out",
        str(tmp_path / "a"),
        "--replicates",
        "20",
        "--base-patients",
        "80",
        "--rounds",
        "3,6",
        env=env,
    )
    assert adapt.returncode == 0, adapt.stderr
    adapted = json.loads(adapt.stdout)
    assert adapted["version"] == "3" and adapted["parent_version"] == "1" and adapted["status"] == "candidate"
    assert set(adapted) >= {"base", "recalibrated", "adapted"}
    assert "| adapted |" in (tmp_path / "a" / "comparison.md").read_text()
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.active_version("sepsis") == "1"  # candidates are not served
    assert registry.manifest("sepsis", "3").training_data["lineage"]["kind"] == "adapted"

    evaluated = cds("evaluate", "sepsis", "--data", str(site), "--model", "3", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    spec = sepsis_feature_spec()
    expected = evaluate_sepsis(
        RiskModel(registry.load("sepsis", spec, "3"), spec), load_sepsis_data(site, spec, baselines=True)
    )
    assert metrics["model"] == "sepsis@3" and metrics["auroc"] == expected["auroc"]


def test_site_commands_refuse_the_readmission_model(tmp_path: Path) -> None:
    done = cds("site", "validate", "readmission", "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path))
    assert done.returncode == 2 and "sepsis model only" in done.stderr
