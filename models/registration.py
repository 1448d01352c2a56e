"""One registration path for every trained model: the manifest fields every version carries (the
feature spec and its hash, the training file's fingerprint, the library and device, the parent
version), filled in one place, then the registry write. A task passes only what is its own:
title, outcome, the split, its parameters, threshold, bands, calibration and metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import xgboost as xgb

from fhir_mappings import FeatureSpec

from .bands import BandReport
from .datasets import data_fingerprint
from .drift_reference import DriftReference
from .errors import ModelNotFound
from .manifest import Calibration, FeatureEntry, ModelManifest
from .registry import ModelRegistry

__all__ = ["active_or_none", "register_version"]


def active_or_none(registry: ModelRegistry, name: str) -> str | None:
    try:
        return registry.active_version(name)
    except ModelNotFound:
        return None


def register_version(
    registry: ModelRegistry,
    *,
    name: str,
    title: str,
    outcome: str,
    horizon_hours: float | None,
    spec: FeatureSpec,
    model_bytes: bytes,
    data_path: Path | str,
    data_label: str,
    rows: int,
    patients: int,
    split: str,
    params: dict[str, Any],
    num_boost_round: int,
    threshold: float,
    risk_bands: dict[str, float],
    calibration: Calibration,
    band_report: BandReport | None = None,
    metrics: dict[str, Any],
    device: str,
    seed: int,
    activate: bool,
    reference: DriftReference | None = None,
    parent_version: str | None = None,
    created_by: str = "cds train",
    data_sha256: str | None = None,
    lineage: dict[str, Any] | None = None,
) -> tuple[ModelManifest, Path]:
    """Write one new version of `name` (the next number) and return its manifest and folder.
    `parent_version`: the version this one derives from (default: the active one); `data_sha256`:
    the data's fingerprint when it is not one file (a site's table); `lineage`: where a derived
    version came from (parent, data fingerprints, counts, split seed), kept in `training_data`."""
    manifest = ModelManifest(
        name=name,
        version=registry.next_version(name),
        title=title,
        outcome=outcome,
        horizon_hours=horizon_hours,
        features=[FeatureEntry(name=f.name, label=f.label, unit=f.unit) for f in spec.features],
        feature_spec_hash=spec.spec_hash,
        feature_code_version=spec.code_version,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        training_data={
            "path": data_label,
            "sha256": data_sha256 or data_fingerprint(data_path),
            "rows": rows,
            "patients": patients,
            "split": split,
            **({"lineage": lineage} if lineage else {}),
        },
        params={k: v for k, v in params.items() if k != "device"},
        num_boost_round=num_boost_round,
        threshold=threshold,
        risk_bands=risk_bands,
        band_report=band_report,
        calibration=calibration,
        metrics=metrics,
        xgboost_version=xgb.__version__,
        device=device,
        seed=seed,
        parent_version=parent_version or active_or_none(registry, name),
        created_by=created_by,
        reference=reference,
    )
    return manifest, registry.register(manifest, model_bytes, activate=activate)
