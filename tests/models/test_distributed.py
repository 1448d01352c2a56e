"""Adaptation on a real local Dask cluster of 2 workers gives the same validation figures (within
noise) as on this machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import sepsis_feature_spec
from models import ModelRegistry, RiskModel, train_sepsis
from models.site import adapt_site, load_site

pytestmark = pytest.mark.data
SPEC = sepsis_feature_spec()


def test_dask_adaptation_matches_the_local_one(set_a_path: Path, set_a: pd.DataFrame, tmp_path: Path) -> None:
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    registry = ModelRegistry(tmp_path)
    train_sepsis(
        set_a_path, registry, patients=300, num_boost_round=15, folds=2, progress=False, device="cpu"
    )
    model = RiskModel(registry.load("sepsis", SPEC), SPEC)
    ids = set_a["patient"].unique()[1000:1300]
    site = load_site(set_a[set_a["patient"].isin(ids)], SPEC)
    options = {"seed": 4, "continue_rounds": (4, 8), "replicates": 20}
    local = adapt_site(model, site, **options).site
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        on_dask = adapt_site(model, site, scheduler=cluster.scheduler_address, **options).site
    assert on_dask.device == "dask" and local.device == "cpu"
    for k, v in local.selection["out_of_fold_auroc"].items():
        assert abs(on_dask.selection["out_of_fold_auroc"][k] - v) < 0.02, k
    for name in ("base", "recalibrated", "adapted"):
        a = local.comparison["models"][name]["auroc"]["estimate"]
        b = on_dask.comparison["models"][name]["auroc"]["estimate"]
        assert abs(a - b) < 0.02, name
    assert local.comparison["models"]["base"] == on_dask.comparison["models"]["base"]  # untouched by training
    assert np.isfinite(on_dask.comparison["models"]["adapted"]["utility"]["estimate"])
