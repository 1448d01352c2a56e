"""The HTTP service: CDS Hooks discovery, service calls and feedback; settings; stores."""

from __future__ import annotations

from .app import AppState, create_app
from .errors import (
    BadRequest,
    CDSError,
    FHIRServerError,
    FHIRTimeout,
    PreconditionFailed,
    ServiceNotFound,
    StoreError,
    Unauthorized,
    UnknownCard,
    status_for,
)
from .fhir_client import FhirClient
from .pipeline import HookDeps, HookOutcome, run_hook
from .settings import Settings, get_settings
from .stores import CardRecord, FeedbackRecord, RecordStore, RedisStore, SQLiteStore, open_store

__all__ = [
    "AppState",
    "BadRequest",
    "CDSError",
    "CardRecord",
    "FHIRServerError",
    "FHIRTimeout",
    "FeedbackRecord",
    "FhirClient",
    "HookDeps",
    "HookOutcome",
    "PreconditionFailed",
    "RecordStore",
    "RedisStore",
    "SQLiteStore",
    "ServiceNotFound",
    "Settings",
    "StoreError",
    "Unauthorized",
    "UnknownCard",
    "create_app",
    "get_settings",
    "open_store",
    "run_hook",
    "status_for",
]
