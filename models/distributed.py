"""Training on a Dask cluster (`xgboost.dask`) when a scheduler address is given: the same
booster settings and the same continuation from a base booster as `train.train_booster`, with the
rows spread over the cluster's workers. Needs the optional extra `cds-ml[dask]`."""

from __future__ import annotations

from typing import Any

import numpy as np
import xgboost as xgb

from .errors import ModelError
from .train import TrainedBooster, train_booster

__all__ = ["train_on"]


def _dask_booster(
    scheduler: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    params: dict[str, Any],
    num_boost_round: int,
    weight: np.ndarray | None,
    xgb_model: xgb.Booster | None,
) -> TrainedBooster:
    try:
        import dask.array as da
        from distributed import Client
        from xgboost import dask as dxgb
    except ImportError as exc:  # the optional extra is not installed
        raise ModelError(
            "a Dask scheduler was given but dask is not installed: pip install 'cds-ml[dask]'"
        ) from exc
    with Client(scheduler) as client:
        workers = max(1, len(client.scheduler_info()["workers"]))
        chunk = max(1, -(-len(x) // (2 * workers)))
        dx = da.from_array(x, chunks=(chunk, x.shape[1]))
        dy = da.from_array(y, chunks=chunk)
        dw = da.from_array(weight, chunks=chunk) if weight is not None else None
        dtrain = dxgb.DaskQuantileDMatrix(
            client, dx, dy, weight=dw, missing=np.nan, max_bin=int(params.get("max_bin", 256))
        )
        start = None
        if xgb_model is not None:
            start = xgb.Booster()
            start.load_model(bytearray(xgb_model.save_raw(raw_format="ubj")))
        out = dxgb.train(
            client, {**params, "device": "cpu"}, dtrain, num_boost_round=num_boost_round, xgb_model=start
        )
    booster: xgb.Booster = out["booster"]
    booster.set_param({"device": "cpu"})
    return TrainedBooster(booster, {**params, "device": "cpu"}, booster.num_boosted_rounds(), "dask")


def train_on(
    scheduler: str | None,
    x: np.ndarray,
    y: np.ndarray,
    *,
    params: dict[str, Any],
    num_boost_round: int,
    weight: np.ndarray | None = None,
    xgb_model: xgb.Booster | None = None,
    device: str | None = None,
    progress: bool = False,
    description: str = "training",
) -> TrainedBooster:
    """On the Dask cluster at `scheduler`, or on this machine when it is None."""
    if scheduler is None:
        return train_booster(
            x,
            y,
            params=params,
            num_boost_round=num_boost_round,
            weight=weight,
            xgb_model=xgb_model,
            device=device,
            progress=progress,
            description=description,
        )
    return _dask_booster(
        scheduler, x, y, params=params, num_boost_round=num_boost_round, weight=weight, xgb_model=xgb_model
    )
