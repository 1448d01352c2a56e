"""A filesystem model registry: `<root>/<name>/<version>/{model.ubj, manifest.json}`.

`<root>/<name>/ACTIVE` names the served version (promote and roll back by rewriting it).
Loading checks the model file's sha256 and refuses a model whose feature spec differs from
the one this code computes (FeatureSchemaMismatch): a silent mismatch would score garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import xgboost as xgb

from fhir_mappings import FeatureSpec

from .bands import BandReport
from .errors import FeatureSchemaMismatch, ModelError, ModelNotFound
from .manifest import ModelManifest

__all__ = ["DEFAULT_REGISTRY", "LoadedArtifact", "ModelRegistry"]

DEFAULT_REGISTRY = Path(__file__).resolve().parent / "artifacts"


@dataclass(frozen=True)
class LoadedArtifact:
    manifest: ModelManifest
    booster: xgb.Booster
    path: Path


class ModelRegistry:
    def __init__(self, root: Path | str = DEFAULT_REGISTRY) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if (p / "manifest.json").is_file()]
        return sorted(found, key=lambda v: (len(v), v))

    def active_version(self, name: str) -> str:
        pointer = self.root / name / "ACTIVE"
        if pointer.is_file():
            return pointer.read_text().strip()
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"no {name} model in the registry at {self.root}")
        return versions[-1]

    def next_version(self, name: str) -> str:
        numbers = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def register(self, manifest: ModelManifest, model_bytes: bytes, *, activate: bool = True) -> Path:
        target = self.root / manifest.name / manifest.version
        if target.exists():
            raise ModelError(f"{manifest.name} version {manifest.version} already exists")
        if hashlib.sha256(model_bytes).hexdigest() != manifest.model_sha256:
            raise ModelError("model bytes do not match the manifest's sha256")
        target.mkdir(parents=True)
        (target / manifest.model_file).write_bytes(model_bytes)
        (target / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
        if activate:
            self.activate(manifest.name, manifest.version)
        return target

    def record_bands(self, name: str, version: str, bands: dict[str, float], report: BandReport) -> Path:
        """Rewrite a version's manifest with measured bands; its model file is left byte for byte
        (checked against the manifest's sha256 before and after)."""
        manifest = self.manifest(name, version)
        folder = self.root / name / version
        before = hashlib.sha256((folder / manifest.model_file).read_bytes()).hexdigest()
        if before != manifest.model_sha256:
            raise ModelError(f"{name} v{version}: model file does not match its manifest sha256")
        updated = manifest.model_copy(update={"risk_bands": bands, "band_report": report})
        path = folder / "manifest.json"
        path.write_text(updated.model_dump_json(indent=2) + "\n")
        return path

    def activate(self, name: str, version: str) -> None:
        if version not in self.versions(name):
            raise ModelNotFound(f"no {name} version {version}")
        (self.root / name / "ACTIVE").write_text(version + "\n")

    def manifest(self, name: str, version: str | None = None) -> ModelManifest:
        version = version or self.active_version(name)
        path = self.root / name / version / "manifest.json"
        if not path.is_file():
            raise ModelNotFound(f"no {name} version {version}")
        return ModelManifest.model_validate(json.loads(path.read_text()))

    def load(self, name: str, spec: FeatureSpec, version: str | None = None) -> LoadedArtifact:
        manifest = self.manifest(name, version)
        if manifest.feature_spec_hash != spec.spec_hash or manifest.feature_names != list(spec.names):
            raise FeatureSchemaMismatch(
                f"{name} v{manifest.version} was trained on feature spec {manifest.feature_spec_hash[:12]}, "
                f"this code computes {spec.spec_hash[:12]}: retrain with `cds train {name}`"
            )
        path = self.root / name / manifest.version
        raw = (path / manifest.model_file).read_bytes()
        if hashlib.sha256(raw).hexdigest() != manifest.model_sha256:
            raise ModelError(f"{name} v{manifest.version}: model file does not match its manifest sha256")
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        return LoadedArtifact(manifest, booster, path)
