"""A functional training core over `xgboost.train`, with a progress bar as a callback."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb
from tqdm.auto import tqdm

from .device import choose_device

__all__ = ["ProgressBar", "TrainedBooster", "default_params", "patient_split", "train_booster"]


class ProgressBar(xgb.callback.TrainingCallback):
    """tqdm over boosting rounds, showing the latest validation metric."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled
        self.bar: Any = None

    def before_training(self, model: xgb.Booster) -> xgb.Booster:
        self.bar = tqdm(
            total=self.total, desc=self.description, unit="round", disable=not self.enabled, leave=True
        )
        return model

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict[str, Any]) -> bool:
        if self.bar is not None:
            self.bar.update(1)
            for data, metrics in evals_log.items():
                for metric, values in metrics.items():
                    self.bar.set_postfix_str(f"{data}-{metric}={values[-1]:.4f}", refresh=False)
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        if self.bar is not None:
            self.bar.close()
        return model


@dataclass(frozen=True)
class TrainedBooster:
    booster: xgb.Booster
    params: dict[str, Any]
    num_boost_round: int
    device: str

    def model_bytes(self) -> bytes:
        return bytes(self.booster.save_raw(raw_format="ubj"))

    def sha256(self) -> str:
        return hashlib.sha256(self.model_bytes()).hexdigest()


def default_params(seed: int) -> dict[str, Any]:
    return {
        "objective": "binary:logistic",
        "eval_metric": ["logloss", "aucpr"],
        "tree_method": "hist",
        "eta": 0.05,
        "max_depth": 6,
        "min_child_weight": 5.0,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "lambda": 1.0,
        "max_bin": 256,
        "seed": seed,
    }


def patient_split(patients: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Disjoint sets of patient ids in the given fractions, reproducible from the seed."""
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    shuffled = unique[rng.permutation(len(unique))]
    bounds = np.round(np.cumsum(fractions) / np.sum(fractions) * len(unique)).astype(int)
    return [np.sort(part) for part in np.split(shuffled, bounds[:-1])]


def train_booster(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    params: dict[str, Any],
    num_boost_round: int,
    x_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    early_stopping_rounds: int | None = None,
    progress: bool = True,
    description: str = "training",
    device: str | None = None,
    weight: np.ndarray | None = None,
    xgb_model: xgb.Booster | None = None,
) -> TrainedBooster:
    """`xgb_model`: continue boosting from this booster (a copy; it is left as it is); `weight`:
    one training weight per row."""
    device = device or choose_device()
    params = {**params, "device": device}
    dtrain = xgb.QuantileDMatrix(
        x_train, label=y_train, weight=weight, missing=np.nan, max_bin=int(params.get("max_bin", 256))
    )
    evals = []
    if x_valid is not None and y_valid is not None:
        evals.append((xgb.QuantileDMatrix(x_valid, label=y_valid, missing=np.nan, ref=dtrain), "valid"))
    callbacks: list[xgb.callback.TrainingCallback] = [ProgressBar(num_boost_round, description, progress)]
    if early_stopping_rounds and evals:
        callbacks.append(
            xgb.callback.EarlyStopping(rounds=early_stopping_rounds, save_best=True, data_name="valid")
        )
    start = None
    if xgb_model is not None:
        start = xgb.Booster()
        start.load_model(bytearray(xgb_model.save_raw(raw_format="ubj")))
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=num_boost_round,
        evals=evals,
        callbacks=callbacks,
        verbose_eval=False,
        xgb_model=start,
    )
    rounds = booster.num_boosted_rounds()
    # A model used for serving runs on the CPU regardless of where it was trained.
    booster.set_param({"device": "cpu"})
    return TrainedBooster(booster, params, rounds, device)
