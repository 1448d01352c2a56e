"""The `cds` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel, evaluate_sepsis, load_sepsis_data


def cds(
    *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_commands() -> None:
    out = cds("--help").stdout
    for command in ("serve", "train", "score", "evaluate", "feedback"):
        assert command in out


@pytest.mark.data
def test_evaluate_prints_the_challenge_metrics(set_a: pd.DataFrame, tmp_path: Path) -> None:
    subset = set_a[set_a["patient"].isin(set_a["patient"].unique()[-400:])]
    path = tmp_path / "subset.parquet"
    subset.to_parquet(path)
    done = cds("evaluate", "sepsis", "--data", str(path))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    spec = sepsis_feature_spec()
    expected = evaluate_sepsis(
        RiskModel(ModelRegistry().load("sepsis", spec), spec), load_sepsis_data(path, spec, baselines=True)
    )
    assert json.loads(json.dumps(expected)) == metrics
    assert metrics["rows"] == len(subset) and 0.5 < metrics["auroc"] <= 1 and -1 < metrics["utility"] <= 1


@pytest.mark.data
def test_train_registers_a_new_version(set_a_path: Path, tmp_path: Path) -> None:
    done = cds(
        "train",
        "sepsis",
        "--data",
        str(set_a_path),
        "--patients",
        "300",
        "--rounds",
        "15",
        env={"CDS_MODEL_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["version"] == "1" and "auroc" in report["test"]
    assert (tmp_path / "sepsis" / "1" / "model.ubj").is_file() and (
        tmp_path / "sepsis" / "ACTIVE"
    ).read_text().strip() == "1"


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    done = cds("score", "sepsis", "--data", str(tmp_path / "nope.parquet"))
    assert done.returncode != 0
    assert "dataset not found" in done.stderr


def test_bad_settings_stop_the_server_with_a_clear_message(tmp_path: Path) -> None:
    """A bad value is found at start, each named by its variable, without a traceback and without
    echoing the value (a setting may be a secret)."""
    env = {
        "CDS_VAR_DIR": str(tmp_path),
        "CDS_EHR_PROFILES": '{"https://ehr.example.org": "cernr"}',
        "CDS_DEVICE": "tpu-secret-value",
    }
    done = cds("serve", env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "CDS_EHR_PROFILES: Value error, unknown EHR profile(s) ['cernr']" in done.stderr
    assert "CDS_DEVICE: Input should be 'auto', 'cpu' or 'cuda'" in done.stderr
    assert "tpu-secret-value" not in done.stderr + done.stdout
