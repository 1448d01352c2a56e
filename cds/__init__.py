"""The HTTP service: CDS Hooks discovery, service calls and feedback; settings; stores."""

from __future__ import annotations

from .app import AppState, create_app
from .auth import AuthFailure, Caller, CallerVerifier
from .errors import (
    BadRequest,
    CDSError,
    FHIRServerError,
    FHIRUnavailable,
    PreconditionFailed,
    ServiceNotFound,
    StoreError,
    StoreUnavailable,
    Unauthorized,
    UnknownCard,
    status_for,
)
from .fhir_client import FhirClient
from .jwks import JwksCache, MemoryJwksBackend, RedisJwksBackend
from .pipeline import HookDeps, HookOutcome, run_hook
from .replay import RedisReplayStore, ReplayStore, SQLiteReplayStore, replay_key
from .settings import Settings, TrustedIssuer, get_settings
from .stores import (
    AuditEvent,
    CardRecord,
    FeedbackRecord,
    PostgresStore,
    RecordStore,
    SQLiteStore,
    StoreHealth,
    open_store,
)

__all__ = [
    "AppState",
    "AuditEvent",
    "AuthFailure",
    "BadRequest",
    "CDSError",
    "Caller",
    "CallerVerifier",
    "CardRecord",
    "FHIRServerError",
    "FHIRUnavailable",
    "FeedbackRecord",
    "FhirClient",
    "HookDeps",
    "HookOutcome",
    "JwksCache",
    "MemoryJwksBackend",
    "PostgresStore",
    "PreconditionFailed",
    "RecordStore",
    "RedisJwksBackend",
    "RedisReplayStore",
    "ReplayStore",
    "SQLiteReplayStore",
    "SQLiteStore",
    "ServiceNotFound",
    "Settings",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
    "TrustedIssuer",
    "Unauthorized",
    "UnknownCard",
    "create_app",
    "get_settings",
    "open_store",
    "replay_key",
    "run_hook",
    "status_for",
]
