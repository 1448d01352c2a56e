"""The ASGI application: lifespan-owned resources, routes, and the one CDSError -> HTTP handler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fhir_mappings import CDSError, Pseudonymizer, readmission_feature_spec, sepsis_feature_spec
from hooks import SERVICES
from models import ModelRegistry, RiskModel, serving_device

from .errors import status_for
from .fhir_client import FhirClient
from .metrics import Metrics
from .pipeline import HookDeps
from .routes import discovery, feedback, health, services
from .settings import Settings, get_settings
from .stores import RecordStore, open_store

__all__ = ["AppState", "create_app", "operation_outcome"]

log = logging.getLogger("cds.app")

# Which feature spec each model name is served with.
FEATURE_SPECS = {"sepsis": sepsis_feature_spec, "readmission": readmission_feature_spec}


@dataclass
class AppState:
    settings: Settings
    deps: HookDeps
    store: RecordStore
    metrics: Metrics


def operation_outcome(status: int, code: str, message: str) -> JSONResponse:
    issue_code = {400: "invalid", 401: "login", 404: "not-found", 412: "incomplete", 422: "processing"}.get(status, "exception")
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue_code, "details": {"text": code}, "diagnostics": message}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")


def load_models(settings: Settings) -> dict[str, RiskModel]:
    registry = ModelRegistry(settings.model_dir)
    loaded = {}
    for name in {s.model_name for s in SERVICES.values()}:
        spec = FEATURE_SPECS[name]()
        loaded[name] = RiskModel(registry.load(name, spec), spec, device=serving_device(), nthread=1)
    return loaded


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = load_models(settings)
        store = open_store(redis_url=settings.redis_url, sqlite_path=settings.sqlite_path, redis_prefix=settings.redis_prefix)
        timeout = httpx.Timeout(settings.fhir_timeout_s, connect=min(1.0, settings.fhir_timeout_s))
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            deps = HookDeps(
                fhir=FhirClient(http, max_pages=settings.fhir_max_pages),
                store=store,
                models=models,
                pseudonymizer=Pseudonymizer(settings.pseudonym_key_bytes()),
                budget_s=settings.hook_timeout_s,
            )
            app.state.cds = AppState(settings, deps, store, Metrics())
            log.info(
                "cds ready",
                extra={
                    "event": {
                        "models": {n: m.version for n, m in models.items()},
                        "store": "redis" if settings.redis_url else "sqlite",
                    }
                },
            )
            try:
                yield
            finally:
                await store.close()

    app = FastAPI(title="CDS ML service", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(CDSError)
    async def cds_error(request: Request, exc: CDSError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("request failed", extra={"event": {"code": exc.code, "path": request.url.path}})
        return operation_outcome(status, exc.code, "" if status == 401 else str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return operation_outcome(400, "bad-request", "invalid request")

    app.include_router(discovery.router)
    app.include_router(services.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    return app

