"""`cds site validate|recalibrate|adapt` and `cds evaluate --model`, run as a site runs them, for the
sepsis and the readmission model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fhir_mappings import readmission_cohort, readmission_feature_spec, sepsis_feature_spec
from models import (
    ModelRegistry,
    RiskModel,
    evaluate_readmission,
    evaluate_sepsis,
    load_readmission_data,
    load_sepsis_data,
    read_diabetes130,
)
from tests.conftest import DATA_DIR, need
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


def test_readmission_site_go_live_end_to_end(tmp_path: Path) -> None:
    """A base trained on some Diabetes 130 patients; a site of others as parquet: validate, recalibrate,
    adapt, then score the adapted candidate with `cds evaluate --model`."""
    frame = read_diabetes130(need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US"))
    ids = frame["patient_nbr"].drop_duplicates().to_numpy()
    base_path, site = tmp_path / "base.csv.gz", tmp_path / "site.parquet"
    frame[frame["patient_nbr"].isin(ids[:6000])].to_csv(base_path, index=False)
    frame[frame["patient_nbr"].isin(ids[8000:12000])].to_parquet(site)
    env = {"CDS_MODEL_DIR": str(tmp_path / "registry")}
    trained = cds("train", "readmission", "--data", str(base_path), "--rounds", "40", env=env)
    assert trained.returncode == 0, trained.stderr

    validated = cds(
        "site",
        "validate",
        "readmission",
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
    assert golive["model"] == "readmission@1" and (tmp_path / "v" / "golive.html").is_file()
    stored = json.loads((tmp_path / "v" / "metrics.json").read_text())
    site_rows = frame[frame["patient_nbr"].isin(ids[8000:12000])]
    assert stored["golive"]["checks"] == golive["checks"]
    assert stored["encounters"] == len(readmission_cohort(site_rows)) == stored["patients"]
    assert any("LACE" in c["check"] for c in golive["checks"])

    recal = cds(
        "site",
        "recalibrate",
        "readmission",
        "--data",
        str(site),
        "--out",
        str(tmp_path / "r"),
        "--replicates",
        "20",
        "--target-alerts",
        "15",
        env=env,
    )
    assert recal.returncode == 0, recal.stderr
    recalibrated = json.loads(recal.stdout)
    assert recalibrated["version"] == "2" and set(recalibrated) >= {"base", "recalibrated"}
    assert "flagged / 100 discharges" in (tmp_path / "r" / "comparison.md").read_text()

    adapt = cds(
        "site",
        "adapt",
        "readmission",
        "--data",
        str(site),
        "--out",
        str(tmp_path / "a"),
        "--replicates",
        "20",
        "--rounds",
        "5,10",
        env=env,
    )
    assert adapt.returncode == 0, adapt.stderr
    adapted = json.loads(adapt.stdout)
    assert adapted["version"] == "3" and adapted["parent_version"] == "1" and adapted["status"] == "candidate"
    assert set(adapted) >= {"base", "recalibrated", "adapted"}
    assert "| adapted |" in (tmp_path / "a" / "comparison.md").read_text()
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.active_version("readmission") == "1"  # candidates are not served
    lineage = registry.manifest("readmission", "3").training_data["lineage"]
    assert lineage["kind"] == "adapted" and lineage["site_split_seed"] == 2019
    assert lineage["holdout_patients"] == adapted["held_out_patients"]

    evaluated = cds("evaluate", "readmission", "--data", str(site), "--model", "3", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    spec = readmission_feature_spec()
    expected = evaluate_readmission(
        RiskModel(registry.load("readmission", spec, "3"), spec), load_readmission_data(site, spec)
    )
    # Compared as JSON text: a subgroup with too few readmissions has NaN figures, and NaN != NaN.
    assert json.dumps(json.loads(evaluated.stdout), sort_keys=True) == json.dumps(expected, sort_keys=True)

    # The gate judges the site version on the site's held-out half, where `adapt` compared it.
    store = {**env, "CDS_VAR_DIR": str(tmp_path / "var")}  # the promotion's record store, not ./var
    gated = cds("models", "promote", "readmission", "3", "--to", "active", "--reason", "go-live", env=store)
    assert gated.returncode in (0, 3), gated.stderr
    lines = {line.split("  ")[0].strip(): line.split() for line in gated.stdout.splitlines()[2:]}
    assert "site held-out half, seed 2019" in " ".join(lines["held-out patients"])
    assert int(lines["held-out patients"][2]) == adapted["held_out_patients"]
    assert float(lines["AUROC"][1]) == adapted["base"]["auroc"]["estimate"]
    assert float(lines["AUROC"][2]) == adapted["adapted"]["auroc"]["estimate"]
    assert (gated.returncode == 0) == ("gate PASSED" in gated.stdout)


def test_readmission_site_refusals_say_why(tmp_path: Path) -> None:
    retrain = cds(
        "site",
        "retrain",
        "readmission",
        "--export",
        str(tmp_path),
        "--outcomes",
        str(tmp_path / "o.csv"),
    )
    assert retrain.returncode == 2 and "sepsis model only" in retrain.stderr
    assert "cds site adapt readmission" in retrain.stderr
    missing = cds(
        "site", "validate", "readmission", "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path)
    )
    assert missing.returncode == 2 and "dataset not found" in missing.stderr
