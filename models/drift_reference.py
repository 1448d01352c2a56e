"""The training-time reference that live traffic is compared with (cds/drift.py): per feature,
decile bin edges of its values with the share of rows in each bin and the share missing, and the
same for the calibrated score. Computed on the held-out test patients of the training file
(rows the model did not learn from, scored by the committed model), so a backfill for an existing
version reproduces what training would have stored (`cds drift reference MODEL`).

Aggregates only (bin edges are deciles over thousands of rows, rounded): no row, no identity.
PSI here is the textbook sum over bins of (live - ref) * ln(live / ref), less its expectation
without drift (see `psi`); the missing bin is one of the bins, so a feed that stops (values turn
missing) raises the PSI of its features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from fhir_mappings import FeatureSpec

__all__ = [
    "PSI_FLOOR",
    "BinnedReference",
    "DriftReference",
    "backfill_reference",
    "bin_counts",
    "binned",
    "psi",
    "reference_from",
]

PSI_FLOOR = 1e-4
DEFAULT_BINS = 10
MAX_ROWS = 200_000  # rows sampled for the edges and shares (seeded): deciles need no more


class BinnedReference(BaseModel):
    """`fractions` has len(edges) + 2 entries: the bins x <= e0, e0 < x <= e1, ..., x > e_last,
    then the missing share (NaN)."""

    model_config = ConfigDict(frozen=True)

    name: str
    edges: list[float]
    fractions: list[float]

    @property
    def missing(self) -> float:
        return self.fractions[-1]


class DriftReference(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str  # which rows, in words (e.g. "held-out test patients of setA.parquet, seed 2019")
    rows: int
    features: list[BinnedReference]
    score: BinnedReference


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in values.tolist()]


def binned(name: str, values: np.ndarray, bins: int = DEFAULT_BINS) -> BinnedReference:
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    edges: list[float] = []
    if present.size:
        inner = np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        edges = _round(np.unique(inner))
    counts = bin_counts(np.asarray(edges, dtype=np.float64), values)
    total = max(1, values.size)
    return BinnedReference(name=name, edges=edges, fractions=_round(counts / total))


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts per bin (len(edges) + 1 value bins, then missing), the binning live traffic uses."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(index, minlength=edges.size + 1).astype(np.float64)
    return np.append(counts, float(missing.sum()))


def reference_from(
    features: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    *,
    source: str,
    bins: int = DEFAULT_BINS,
    seed: int = 0,
) -> DriftReference:
    features = np.asarray(features, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if features.shape != (scores.size, len(names)):
        raise ValueError(f"features {features.shape} do not match {scores.size} scores x {len(names)} names")
    if scores.size > MAX_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(scores.size, MAX_ROWS, replace=False))
        features, scores = features[keep], scores[keep]
    return DriftReference(
        source=source,
        rows=int(scores.size),
        features=[binned(name, features[:, i], bins) for i, name in enumerate(names)],
        score=binned("score", scores, bins),
    )


def psi(reference: Sequence[float] | np.ndarray, live_counts: np.ndarray) -> float:
    """PSI of live counts (same bins) against the reference shares, less what sampling alone gives
    ((bins - 1) / n: PSI is about chi-square / n), so a quiet feed reads ~0 at any volume; 0.0
    without live data. An empty live bin counts as half a call, not as nothing."""
    counts = np.asarray(live_counts, dtype=np.float64)
    n = float(counts.sum())
    if n <= 0:
        return 0.0
    ref = np.asarray(reference, dtype=np.float64)
    expected = ref > PSI_FLOOR
    live = counts / n
    live = np.where(expected, np.maximum(live, 0.5 / n), np.maximum(live, PSI_FLOOR))
    ref = np.maximum(ref, PSI_FLOOR)
    raw = float(np.sum((live - ref) * np.log(live / ref)))
    return max(0.0, raw - (int(expected.sum()) - 1) / n)


def backfill_reference(
    registry_root: Path | str, name: str, version: str | None, data_path: Path, *, device: str = "cpu"
) -> DriftReference:
    """The reference of a registered version, recomputed from its training file and model (the
    model file is only read). Writes it into that version's manifest.json and returns it."""
    from .catalog import model_task
    from .datasets import data_fingerprint
    from .errors import ModelError
    from .registry import ModelRegistry
    from .score import RiskModel

    task = model_task(name)
    spec: FeatureSpec = task.feature_spec()
    registry = ModelRegistry(registry_root)
    artifact = registry.load(name, spec, version)
    manifest = artifact.manifest
    if data_fingerprint(data_path) != manifest.training_data.get("sha256"):
        raise ModelError(
            f"{data_path} is not the file {name} v{manifest.version} was trained on (sha256 differs)"
        )
    rows = task.holdout_rows(data_path, spec, manifest.seed)
    scores = RiskModel(artifact, spec, device=device).predict(rows)
    reference = reference_from(
        rows, scores, spec.names, source=holdout_source(data_path, manifest.seed), seed=manifest.seed
    )
    updated = manifest.model_copy(update={"reference": reference})
    (artifact.path / "manifest.json").write_text(updated.model_dump_json(indent=2) + "\n")
    return reference


def holdout_source(data_path: Path | str, seed: int) -> str:
    return f"held-out test patients of {Path(data_path).name} (seed {seed}), scored by this version"
