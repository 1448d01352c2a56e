"""The models layer's branch of the error tree (root: fhir_mappings.errors.CDSError)."""

from __future__ import annotations

from fhir_mappings.errors import CDSError

__all__ = ["DatasetError", "FeatureSchemaMismatch", "ModelError", "ModelNotFound", "PromotionRefused"]


class ModelError(CDSError):
    code = "model-error"


class ModelNotFound(ModelError):
    """No such model or version in the registry."""

    code = "model-not-found"


class FeatureSchemaMismatch(ModelError):
    """The artifact was trained on features this code no longer computes the same way."""

    code = "feature-schema-mismatch"


class DatasetError(ModelError):
    """A training or evaluation file that is missing or not in the expected layout."""

    code = "dataset-error"


class PromotionRefused(ModelError):
    """The promotion gate refused a version (models/gate.py says which checks failed)."""

    code = "promotion-refused"
