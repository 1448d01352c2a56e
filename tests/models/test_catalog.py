"""The model catalog: every served model is one entry, and `--holdout` re-derives the training split."""

from __future__ import annotations

import json

import pytest

from hooks import SERVICES
from models import MODELS, EvaluateOptions, ModelError, ModelRegistry, RiskModel, TrainOptions, model_task
from tests.conftest import DATA_DIR, need


def test_every_served_model_is_in_the_catalog_and_loads_with_its_spec() -> None:
    registry = ModelRegistry()
    for name in {s.model_name for s in SERVICES.values()}:
        task = model_task(name)
        spec = task.feature_spec()
        model = RiskModel(registry.load(name, spec), spec)
        assert model.name == name
    assert set(MODELS) == {s.model_name for s in SERVICES.values()}


def test_unknown_model_and_options_it_does_not_take_are_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="unknown model"):
        model_task("sepsis2")
    with pytest.raises(ModelError, match="sepsis only"):
        model_task("readmission").train(
            tmp_path / "x.csv", ModelRegistry(tmp_path), TrainOptions(patients=10)
        )


@pytest.mark.data
def test_readmission_holdout_reproduces_the_test_metrics_in_the_manifest() -> None:
    path = need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US")
    task = model_task("readmission")
    spec = task.feature_spec()
    model = RiskModel(ModelRegistry().load("readmission", spec), spec)
    metrics = task.evaluate(model, path, EvaluateOptions(holdout=True, replicates=20))
    recorded = model.manifest.metrics["test"]
    assert metrics["patients"] == recorded["patients"]
    assert metrics["auroc"]["estimate"] == pytest.approx(recorded["auroc"]["estimate"], abs=1e-9)
    json.dumps(metrics)  # printable by `cds evaluate`
