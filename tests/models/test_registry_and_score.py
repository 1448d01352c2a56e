from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from fhir_mappings import Feature, FeatureSpec, hourly_spec, sepsis_feature_spec
from models import (
    FeatureEntry,
    FeatureSchemaMismatch,
    ModelError,
    ModelManifest,
    ModelNotFound,
    ModelRegistry,
    RiskModel,
    choose_device,
)

SPEC = sepsis_feature_spec()


def small_model(spec: FeatureSpec, seed: int = 0) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(spec))).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=400) > 0.5).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": seed}, xgb.DMatrix(x, y), 20)
    return bytes(booster.save_raw("ubj")), x


def manifest_for(spec: FeatureSpec, raw: bytes, version: str, **extra: object) -> ModelManifest:
    return ModelManifest(
        name="sepsis",
        version=version,
        title="t",
        outcome="o",
        features=[FeatureEntry(name=f.name, label=f.label, unit=f.unit) for f in spec.features],
        feature_spec_hash=spec.spec_hash,
        feature_code_version="1",
        model_sha256=hashlib.sha256(raw).hexdigest(),
        training_data={},
        params={},
        num_boost_round=20,
        threshold=0.3,
        risk_bands={"low": 0.0, "moderate": 0.15, "high": 0.3},
        xgboost_version=xgb.__version__,
        device="cpu",
        seed=0,
        **extra,
    )


def test_register_load_and_score(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    raw, x = small_model(SPEC)
    registry.register(manifest_for(SPEC, raw, registry.next_version("sepsis")), raw)
    assert registry.versions("sepsis") == ["1"] and registry.active_version("sepsis") == "1"
    model = RiskModel(registry.load("sepsis", SPEC), SPEC, nthread=1)
    p = model.predict(x)
    assert p.shape == (400,) and ((p > 0) & (p < 1)).all()
    explanation = model.explain(x[7])
    # TreeSHAP: contributions plus the base value equal the raw margin.
    assert explanation.margin == pytest.approx(float(model.margin(x[7:8])[0]), abs=1e-4)
    assert sum(c.shap for c in explanation.contributions) + explanation.base_value == pytest.approx(
        explanation.margin, abs=1e-4
    )
    top = explanation.top(3)
    assert len(top) == 3 and abs(top[0].shap) >= abs(top[1].shap) >= abs(top[2].shap)
    assert model.band(0.05) == "low" and model.band(0.2) == "moderate" and model.band(0.9) == "high"


def test_refuses_a_model_trained_on_other_features(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    other = hourly_spec("other", SPEC.features[:-1] + (Feature("ICULOS_x", "iculos", "ICULOS"),))
    raw, _ = small_model(other)
    registry.register(manifest_for(other, raw, "1"), raw)
    with pytest.raises(FeatureSchemaMismatch):
        registry.load("sepsis", SPEC)


def test_refuses_a_tampered_model_file(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    raw, _ = small_model(SPEC)
    path = registry.register(manifest_for(SPEC, raw, "1"), raw)
    raw2, _ = small_model(SPEC, seed=1)
    (path / "model.ubj").write_bytes(raw2)
    with pytest.raises(ModelError):
        registry.load("sepsis", SPEC)


def test_versions_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelNotFound):
        registry.active_version("sepsis")
    for seed in (0, 1):
        raw, _ = small_model(SPEC, seed)
        registry.register(manifest_for(SPEC, raw, registry.next_version("sepsis")), raw)
    assert registry.active_version("sepsis") == "2"
    registry.activate("sepsis", "1")
    assert registry.manifest("sepsis").version == "1"
    with pytest.raises(ModelNotFound):
        registry.activate("sepsis", "9")


def test_committed_model_loads_with_this_code() -> None:
    registry = ModelRegistry()
    manifest = registry.manifest("sepsis")
    assert manifest.feature_spec_hash == SPEC.spec_hash
    model = RiskModel(registry.load("sepsis", SPEC), SPEC)
    assert 0 < model.threshold < 1
    assert (registry.root / "sepsis" / manifest.version / "model.ubj").stat().st_size < 5_000_000


def test_the_device_comes_from_settings_and_is_cpu_without_a_gpu() -> None:
    from cds import Settings

    assert choose_device("cuda") == "cuda" and choose_device("CPU") == "cpu"
    assert choose_device(Settings(_env_file=None, device="cuda").device) == "cuda"
    with pytest.raises(ValueError):
        choose_device("tpu")
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        assert choose_device() == "cpu" and choose_device(Settings(_env_file=None).device) == "cpu"
