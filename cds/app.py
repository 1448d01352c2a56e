"""The ASGI application: lifespan-owned resources, routes, and the one CDSError -> HTTP handler."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from fhir_mappings import CDSError, Pseudonymizer
from hooks import SERVICES
from models import ModelRegistry, RiskModel, model_task, serving_device

from .auth import CallerVerifier
from .errors import status_for
from .fhir_client import FhirClient
from .jwks import JwksBackend, JwksCache, MemoryJwksBackend, RedisJwksBackend
from .metrics import Metrics
from .model_versions import stored_versions
from .pipeline import HookDeps
from .replay import open_replay_store
from .routes import discovery, feedback, health, services
from .routes._auth import authenticate
from .settings import Settings, get_settings
from .stores import RecordStore, open_store

__all__ = ["AppState", "UNAUTHORIZED_BODY", "create_app", "make_verifier", "operation_outcome", "unauthorized"]

log = logging.getLogger("cds.app")


@dataclass
class AppState:
    settings: Settings
    deps: HookDeps
    store: RecordStore
    metrics: Metrics
    verifier: CallerVerifier | None = None  # None only with auth_disabled_for_local_demo


# The one answer to every authentication failure: no detail (CDS Hooks best practices).
UNAUTHORIZED_BODY = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}


def unauthorized() -> JSONResponse:
    return JSONResponse(
        UNAUTHORIZED_BODY, status_code=401, media_type="application/fhir+json", headers={"WWW-Authenticate": "Bearer"}
    )


def operation_outcome(status: int, code: str, message: str) -> JSONResponse:
    issue_code = {400: "invalid", 401: "login", 404: "not-found", 412: "incomplete", 422: "processing"}.get(status, "exception")
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue_code, "details": {"text": code}, "diagnostics": message}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")


def load_models(settings: Settings, versions: Mapping[str, str] | None = None) -> dict[str, RiskModel]:
    """`versions`: the record store's served versions, which win over the registry's ACTIVE files."""
    registry = ModelRegistry(settings.model_dir)
    loaded = {}
    for name in {s.model_name for s in SERVICES.values()}:
        spec = model_task(name).feature_spec()
        artifact = registry.load(name, spec, (versions or {}).get(name))
        loaded[name] = RiskModel(artifact, spec, device=serving_device(), nthread=1)
    return loaded


def make_verifier(settings: Settings, http: httpx.AsyncClient) -> CallerVerifier:
    backend: JwksBackend = (
        RedisJwksBackend(settings.redis_url, prefix=settings.redis_prefix) if settings.redis_url else MemoryJwksBackend()
    )
    jwks = JwksCache(
        http,
        settings.jwks_allowlist(),
        backend=backend,
        ttl_s=settings.jwks_cache_s,
        min_refresh_s=settings.jwks_min_refresh_s,
        timeout_s=settings.jwks_timeout_s,
    )
    replay = open_replay_store(redis_url=settings.redis_url, sqlite_path=settings.sqlite_path, redis_prefix=settings.redis_prefix)
    return CallerVerifier(
        settings.auth_issuers,
        jwks,
        replay,
        algorithms=settings.auth_algorithms,
        leeway_s=settings.auth_leeway_s,
        max_lifetime_s=settings.auth_max_token_lifetime_s,
    )


def _announce_auth(settings: Settings) -> None:
    if settings.auth_disabled_for_local_demo:
        banner = "!" * 78
        for line in (
            banner,
            "CALLER AUTHENTICATION IS OFF (CDS_AUTH_DISABLED_FOR_LOCAL_DEMO=true).",
            "Anyone who can reach this port can call the CDS services. For local demos only.",
            banner,
        ):
            log.warning(line)
    elif not settings.auth_issuers:
        log.warning(
            "no trusted EHR configured (CDS_AUTH_ISSUERS): every CDS Hooks call will be refused with 401. "
            "See docs/conformance.md; for a local demo set CDS_AUTH_DISABLED_FOR_LOCAL_DEMO=true."
        )


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Move everything loaded at start (libraries, models, tables) out of the collector's reach.

    Otherwise each full collection walks that whole heap: measured with scripts/bench_hook.py, one
    call in ~50 then took ~110 ms more (p99 137 ms against p50 23 ms); frozen, p99 ~38 ms. Once per
    process: later apps in the same process (tests) gain nothing from freezing again."""
    global _heap_frozen
    if not _heap_frozen:
        gc.collect()
        gc.freeze()
        _heap_frozen = True


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database_url = settings.database_url.get_secret_value() if settings.database_url else None
        store = await open_store(
            database_url=database_url, sqlite_path=settings.sqlite_path, spool_path=settings.spool_path,
            timeout_s=settings.database_timeout_s,
        )
        try:
            models = load_models(settings, await stored_versions(store))
        except BaseException:
            await store.close()
            raise
        timeout = httpx.Timeout(settings.fhir_timeout_s, connect=min(1.0, settings.fhir_timeout_s))
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            deps = HookDeps(
                fhir=FhirClient(http, max_pages=settings.fhir_max_pages, allow_http=settings.allow_http_fhir_server),
                store=store,
                models=models,
                pseudonymizer=Pseudonymizer(settings.pseudonym_key_bytes()),
                budget_s=settings.hook_timeout_s,
                profiles=settings.vendor_profile,
            )
            _announce_auth(settings)
            verifier = None if settings.auth_disabled_for_local_demo else make_verifier(settings, http)
            app.state.cds = AppState(settings, deps, store, Metrics(), verifier)
            _freeze_startup_heap()
            log.info(
                "cds ready",
                extra={
                    "event": {
                        "models": {n: m.version for n, m in models.items()},
                        "store": store.health().backend,
                        "issuers": [i.iss for i in settings.auth_issuers],
                        "auth": "off-local-demo" if verifier is None else "jwt",
                    }
                },
            )
            try:
                yield
            finally:
                if verifier is not None:
                    await verifier.close()
                await store.close()

    app = FastAPI(title="CDS ML service", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(CDSError)
    async def cds_error(request: Request, exc: CDSError) -> JSONResponse:
        status = status_for(exc)
        if status == 401:
            return unauthorized()
        if status >= 500:
            log.error("request failed", extra={"event": {"code": exc.code, "path": request.url.path}})
        return operation_outcome(status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return operation_outcome(400, "bad-request", "invalid request")

    guarded = [Depends(authenticate)]
    app.include_router(discovery.router, dependencies=guarded)
    app.include_router(services.router, dependencies=guarded)
    app.include_router(feedback.router, dependencies=guarded)
    app.include_router(health.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    return app

