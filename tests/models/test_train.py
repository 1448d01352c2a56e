from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel, evaluate_sepsis, load_sepsis_data, train_sepsis

pytestmark = pytest.mark.data


def test_training_is_reproducible_and_registers_a_full_manifest(
    set_a_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    manifests = []
    for name in ("a", "b"):
        registry = ModelRegistry(tmp_path / name)
        manifests.append(train_sepsis(set_a_path, registry, patients=600, num_boost_round=40, seed=7))
    first, second = manifests
    assert first.model_sha256 == second.model_sha256  # same data + seed -> same bytes
    assert "sepsis" in capfd.readouterr().err  # the progress bar
    assert first.version == "1" and first.xgboost_version and first.device in ("cpu", "cuda")
    # The fingerprint is the file's own sha256, and the same file the committed models were trained on.
    assert first.training_data["sha256"] == hashlib.sha256(set_a_path.read_bytes()).hexdigest()
    assert (
        first.training_data["sha256"]
        == ModelRegistry().load("sepsis", sepsis_feature_spec()).manifest.training_data["sha256"]
    )
    assert first.feature_spec_hash == sepsis_feature_spec().spec_hash
    assert [f.name for f in first.features] == list(sepsis_feature_spec().names)
    assert all(f.unit for f in first.features if f.name.endswith("__last"))
    test = first.metrics["test"]
    assert 0.5 < test["auroc"] <= 1 and test["patients"] == 120
    assert first.risk_bands["high"] == first.threshold
    # The drift reference: the held-out test patients' rows, every feature, shares that sum to 1.
    assert first.reference is not None and first.reference.rows == test["rows"]
    assert [f.name for f in first.reference.features] == list(sepsis_feature_spec().names)
    assert abs(sum(first.reference.score.fractions) - 1) < 1e-3

    spec = sepsis_feature_spec()
    model = RiskModel(ModelRegistry(tmp_path / "a").load("sepsis", spec), spec)
    data = load_sepsis_data(set_a_path, spec, patients=600)
    assert data.features.shape == (len(data.frame), len(spec))
    metrics = evaluate_sepsis(model, data)
    assert {"auroc", "auprc", "utility"} <= metrics.keys() and metrics["patients"] == 600
    assert np.isfinite(metrics["utility"])
