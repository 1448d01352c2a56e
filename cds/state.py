"""What one running server holds, built once in the app's lifespan and handed to the routes as a
FastAPI dependency (`routes/_state.py`), never read as ambient state."""

from __future__ import annotations

from dataclasses import dataclass

from .admission import Gate
from .auth import CallerVerifier
from .drift import DriftMonitor
from .metrics import Metrics
from .pipeline import HookDeps
from .settings import Settings
from .stores import RecordStore

__all__ = ["AppState"]


@dataclass
class AppState:
    settings: Settings
    deps: HookDeps
    store: RecordStore
    metrics: Metrics
    hook_gate: Gate
    feedback_gate: Gate
    verifier: CallerVerifier | None = None  # None only with auth_disabled_for_local_demo
    drift: DriftMonitor | None = None  # None with CDS_DRIFT_ENABLED=false
