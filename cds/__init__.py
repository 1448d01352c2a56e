"""The HTTP service: CDS Hooks discovery, service calls and feedback; settings; stores.

The names below load on first use (PEP 562), so `import cds.cli` (and `cds --help`) does not pay
for the web app, the models and XGBoost; `from cds import X` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
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
    from .state import AppState
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

_WHERE = {
    "AppState": "state",
    "AuditEvent": "stores",
    "AuthFailure": "auth",
    "BadRequest": "errors",
    "CDSError": "errors",
    "Caller": "auth",
    "CallerVerifier": "auth",
    "CardRecord": "stores",
    "FHIRServerError": "errors",
    "FHIRUnavailable": "errors",
    "FeedbackRecord": "stores",
    "FhirClient": "fhir_client",
    "HookDeps": "pipeline",
    "HookOutcome": "pipeline",
    "JwksCache": "jwks",
    "MemoryJwksBackend": "jwks",
    "PostgresStore": "stores",
    "PreconditionFailed": "errors",
    "RecordStore": "stores",
    "RedisJwksBackend": "jwks",
    "RedisReplayStore": "replay",
    "ReplayStore": "replay",
    "SQLiteReplayStore": "replay",
    "SQLiteStore": "stores",
    "ServiceNotFound": "errors",
    "Settings": "settings",
    "StoreError": "errors",
    "StoreHealth": "stores",
    "StoreUnavailable": "errors",
    "TrustedIssuer": "settings",
    "Unauthorized": "errors",
    "UnknownCard": "errors",
    "create_app": "app",
    "get_settings": "settings",
    "open_store": "stores",
    "replay_key": "replay",
    "run_hook": "pipeline",
    "status_for": "errors",
}

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


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'cds' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
