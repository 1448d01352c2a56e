"""Which model version each server serves: the record store's registry state, shared by every
worker and machine, wins over the file registry's `ACTIVE` pointer, which each machine has its own
copy of. `cds models activate` is the only writer, and every change is an audit event."""

from __future__ import annotations

import logging

from models import ModelNotFound, ModelRegistry, model_task

from .errors import StoreError
from .stores import RecordStore

__all__ = ["activate_model", "stored_versions"]

log = logging.getLogger("cds.models")


async def stored_versions(store: RecordStore) -> dict[str, str]:
    """The versions set in the store; none (the `ACTIVE` files decide) when it cannot be read, so a
    database outage at start does not stop the hooks."""
    try:
        return await store.active_versions()
    except StoreError:
        log.warning(
            "served model versions could not be read from the record store: using the registry's ACTIVE files"
        )
        return {}


async def activate_model(store: RecordStore, registry: ModelRegistry, model: str, version: str) -> str | None:
    """Serve `version` of `model` from the next server start on; return the version it replaces.
    The version must load with this code's features, or every server would refuse to start."""
    if version not in registry.versions(model):
        raise ModelNotFound(f"no {model} version {version} in the registry at {registry.root}")
    registry.load(model, model_task(model).feature_spec(), version)  # FeatureSchemaMismatch, bad sha256
    return await store.set_active_version(model, version)
