"""What travels with a model file: enough to load it safely and to say where it came from.

No PHI: feature names, units, hashes, parameters and aggregate metrics only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .bands import BandReport
from .drift_reference import DriftReference

__all__ = ["Calibration", "FeatureEntry", "ModelManifest"]


class FeatureEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    label: str
    unit: str


class Calibration(BaseModel):
    """Maps the booster's raw probability to a calibrated one by linear interpolation."""

    model_config = ConfigDict(frozen=True)

    method: str = "none"  # none | isotonic | platt
    x: list[float] = Field(default_factory=list)
    y: list[float] = Field(default_factory=list)


class ModelManifest(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str  # e.g. "sepsis"
    version: str  # registry version, e.g. "3"
    title: str
    outcome: str  # what the probability is about, in words
    horizon_hours: float | None = None
    features: list[FeatureEntry]
    feature_spec_hash: str
    feature_code_version: str
    model_file: str = "model.ubj"
    model_sha256: str
    training_data: dict[str, Any]  # path (as given), sha256, rows, patients
    params: dict[str, Any]
    num_boost_round: int
    threshold: float  # the alert threshold on the calibrated probability
    risk_bands: dict[str, float] = Field(default_factory=dict)  # band -> lower bound
    # Each band's PPV and sensitivity on validation data (models/bands.py); None in older manifests.
    band_report: BandReport | None = None
    calibration: Calibration = Field(default_factory=Calibration)
    metrics: dict[str, Any] = Field(default_factory=dict)
    xgboost_version: str
    device: str
    seed: int
    parent_version: str | None = None
    created_by: str = "cds train"
    # Training-time distributions live traffic is compared with (models/drift_reference.py).
    reference: DriftReference | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]
