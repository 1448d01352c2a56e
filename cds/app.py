"""The ASGI application: lifespan-owned resources, routes, and the one CDSError -> HTTP handler."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fhir_mappings import CDSError, Pseudonymizer
from hooks import SERVICES
from models import ModelRegistry, RiskBands, RiskModel, manifest_bands, model_task, serving_device

from .admission import Gate, Lane
from .auth import CallerVerifier
from .degraded import Breaker
from .drift import DriftMonitor, open_drift_backend
from .errors import StoreError, status_for
from .fhir_client import FhirClient
from .jwks import FallbackJwksBackend, JwksBackend, JwksCache, MemoryJwksBackend, RedisJwksBackend
from .keys import pseudonym_key
from .lifecycle import GuardrailPolicy, Lifecycle, open_counters
from .metrics import Metrics, multiprocess_dir
from .middleware import GuardMiddleware
from .model_versions import stored_versions
from .pipeline import HookDeps
from .replay import open_replay_store
from .responses import operation_outcome, unauthorized
from .routes import discovery, drift_routes, feedback, health, services
from .routes._auth import authenticate
from .routes._openapi import body_schemas
from .settings import Settings, get_settings
from .smart import SmartApp, SmartError, error_page
from .smart import router as smart_router
from .state import AppState
from .stores import AnchorLog, open_store

__all__ = ["AppState", "create_app", "load_models", "make_verifier", "site_bands"]

log = logging.getLogger("cds.app")


def load_model(settings: Settings, name: str, version: str | None = None) -> RiskModel:
    """One version as the server serves it: this code's feature spec, the serving device, the
    site's bands. Used at start and by the lifecycle when a version is promoted or rolled back."""
    spec = model_task(name).feature_spec()
    artifact = ModelRegistry(settings.model_dir).load(name, spec, version)
    model = RiskModel(artifact, spec, device=serving_device(), nthread=1)
    model.with_site_bands(site_bands(settings, model))
    return model


def load_models(settings: Settings, versions: Mapping[str, str] | None = None) -> dict[str, RiskModel]:
    """`versions`: the record store's served versions, which win over the registry's ACTIVE files."""
    loaded = {}
    for name in {s.model_name for s in SERVICES.values()}:
        loaded[name] = load_model(settings, name, (versions or {}).get(name))
    unknown = sorted(set(settings.risk_bands) - set(loaded))
    if unknown:
        raise ValueError(f"CDS_RISK_BANDS names models this server does not serve: {unknown}")
    return loaded


def site_bands(settings: Settings, model: RiskModel) -> RiskBands:
    """The bands `model` serves with: the site's (CDS_RISK_BANDS) or its manifest's, each band's
    level judged against CDS_CRITICAL_PPV."""
    site = settings.risk_bands.get(model.name)
    if site is None:
        return manifest_bands(model.manifest, settings.critical_ppv)
    return RiskBands.build(
        [(b.name, b.lower, b.ppv, b.sensitivity) for b in site.bands],
        threshold=model.threshold,
        measured_on=f"this site: {site.measured_on}",
        critical_ppv=settings.critical_ppv,
    )


def make_verifier(settings: Settings, http: httpx.AsyncClient, metrics: Metrics) -> CallerVerifier:
    backend: JwksBackend = MemoryJwksBackend()
    replay_breaker = Breaker("replay-store", retry_s=settings.degraded_retry_s)
    if settings.redis_url:
        jwks_breaker = Breaker("jwks-cache", retry_s=settings.degraded_retry_s)
        redis_jwks = RedisJwksBackend(
            settings.redis_url, prefix=settings.redis_prefix, timeout_s=settings.redis_timeout_s
        )
        backend = FallbackJwksBackend(redis_jwks, jwks_breaker)
        metrics.degraded_source(
            lambda: {"replay-store": replay_breaker.degraded, "jwks-cache": jwks_breaker.degraded}
        )
    jwks = JwksCache(
        http,
        settings.jwks_allowlist(),
        backend=backend,
        ttl_s=settings.jwks_cache_s,
        min_refresh_s=settings.jwks_min_refresh_s,
        timeout_s=settings.jwks_timeout_s,
    )
    replay = open_replay_store(
        redis_url=settings.redis_url,
        sqlite_path=settings.sqlite_path,
        redis_prefix=settings.redis_prefix,
        redis_timeout_s=settings.redis_timeout_s,
        breaker=replay_breaker,
    )
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

    Otherwise each full collection walks that whole heap: measured with benchmarks/bench_hook.py, one
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
            database_url=database_url,
            sqlite_path=settings.sqlite_path,
            spool_path=settings.spool_path,
            timeout_s=settings.database_timeout_s,
            anchors=AnchorLog(settings.anchor_path, every=settings.audit_anchor_every),
        )
        try:
            models = load_models(settings, await stored_versions(store))
        except BaseException:
            await store.close()
            raise
        metrics = Metrics(issuers=[i.iss for i in settings.auth_issuers])
        lifecycle = Lifecycle(
            store,
            ModelRegistry(settings.model_dir),
            models,
            counters=open_counters(
                settings.redis_url, prefix=settings.redis_prefix, timeout_s=settings.redis_timeout_s
            ),
            policy=GuardrailPolicy.from_settings(settings),
            shadow_queue=settings.shadow_queue,
            on_event=metrics.model_event,
            load=lambda name, version: load_model(settings, name, version),
        )
        await lifecycle.refresh()  # the shadow and canary versions, if any
        poller = asyncio.create_task(lifecycle.run(settings.model_poll_s), name="cds-model-poll")
        timeout = httpx.Timeout(settings.fhir_timeout_s, connect=min(1.0, settings.fhir_timeout_s))
        lane = Lane(
            settings.hook_workers, max_waiting=settings.hook_queue, max_wait_s=settings.hook_queue_wait_s
        )
        for model in models.values():
            metrics.model_serving(model.name, model.version)
        drift = (
            DriftMonitor(
                models,
                open_drift_backend(settings),
                issuers=[i.iss for i in settings.auth_issuers],
                bucket_s=settings.drift_bucket_s,
            )
            if settings.drift_enabled
            else None
        )
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as http:
            fhir = FhirClient(
                http,
                max_pages=settings.fhir_max_pages,
                max_response_bytes=settings.fhir_max_response_bytes,
                max_json_depth=settings.max_json_depth,
                allow_http=settings.allow_http_fhir_server,
            )
            deps = HookDeps(
                fhir=fhir,
                store=store,
                models=models,
                pseudonymizer=Pseudonymizer(pseudonym_key(settings)),
                budget_s=settings.hook_timeout_s,
                lane=lane,
                max_json_depth=settings.max_json_depth,
                max_resources=settings.max_resources,
                profiles=settings.vendor_profile,
                fhir_allowed=settings.fhir_server_allowed,
                keep_identity_hashes=settings.feedback_comments == "scrubbed",
                consent_refused_card=settings.consent_refused_card,
                metrics=metrics,
                drift=drift,
                lifecycle=lifecycle,
            )
            smart_timeout = httpx.Timeout(
                settings.smart_timeout_s, connect=min(2.0, settings.smart_timeout_s)
            )
            smart_http = httpx.AsyncClient(timeout=smart_timeout, follow_redirects=False, trust_env=False)
            smart_fhir = FhirClient(
                smart_http,
                max_pages=settings.fhir_max_pages,
                max_response_bytes=settings.fhir_max_response_bytes,
                max_json_depth=settings.max_json_depth,
                allow_http=settings.allow_http_fhir_server,
            )
            app.state.smart = SmartApp(settings, smart_http, smart_fhir, store, models, deps.pseudonymizer)
            _announce_auth(settings)
            metrics.watch(lifecycle=lifecycle)
            verifier = (
                None if settings.auth_disabled_for_local_demo else make_verifier(settings, http, metrics)
            )
            app.state.cds = AppState(
                settings,
                deps,
                store,
                metrics,
                Gate(settings.max_in_flight_hooks, max_bytes=settings.max_in_flight_bytes),
                Gate(settings.max_in_flight_feedback),
                verifier,
                drift,
            )
            metrics.watch(
                lane=lane,
                hook_gate=app.state.cds.hook_gate,
                feedback_gate=app.state.cds.feedback_gate,
                store=store,
            )
            _freeze_startup_heap()
            log.info(
                "cds ready",
                extra={
                    "event": {
                        "models": {n: m.version for n, m in models.items()},
                        "challengers": {
                            n: {
                                "canary": lu.canary.model.version if lu.canary else None,
                                "shadow": lu.shadow.model.version if lu.shadow else None,
                            }
                            for n, lu in lifecycle.lineups.items()
                            if lu.challenged
                        },
                        "store": store.health().backend,
                        "issuers": [i.iss for i in settings.auth_issuers],
                        "auth": "off-local-demo" if verifier is None else "jwt",
                    }
                },
            )
            background = [asyncio.create_task(_refresh_gauges(metrics))] if multiprocess_dir() else []
            if drift is not None:
                background.append(
                    asyncio.create_task(
                        drift.run(
                            metrics,
                            settings.drift_thresholds(),
                            flush_s=settings.drift_flush_s,
                            evaluate_s=settings.drift_evaluate_s,
                            window_s=settings.drift_window_s,
                        )
                    )
                )
            try:
                yield
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                await lifecycle.close()
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if drift is not None:
                    await drift.flush()
                    await drift.backend.close()
                metrics.close()
                if verifier is not None:
                    await verifier.close()
                await app.state.smart.close()
                await smart_http.aclose()
                await store.close()
                lane.close()

    docs = "/openapi.json" if settings.api_docs else None
    app = FastAPI(
        title="CDS ML service",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=docs,
    )

    @app.exception_handler(CDSError)
    async def cds_error(request: Request, exc: CDSError) -> Response:
        if isinstance(exc, SmartError):  # the SMART app's pages (cds/smart/errors.py)
            smart = getattr(request.app.state, "smart", None)
            return error_page(exc, smart.frame_origins() if smart else ())
        status = status_for(exc)
        if isinstance(exc, StoreError):
            state = getattr(request.app.state, "cds", None)
            if state is not None:
                state.metrics.store_error("request")
        if status == 401:
            return unauthorized()
        if status >= 500:
            log.error(
                "request failed",
                extra={"event": {"code": exc.code, "route": getattr(request.scope.get("route"), "path", "")}},
            )
        retry = getattr(exc, "retry_after_s", None) or settings.retry_after_s
        headers = {"Retry-After": str(max(1, round(retry)))} if status == 503 else None
        return operation_outcome(status, exc.code, str(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return operation_outcome(400, "bad-request", "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return operation_outcome(exc.status_code, code, "no such endpoint or method", headers=exc.headers)

    guarded = [Depends(authenticate)]
    app.include_router(discovery.router, dependencies=guarded)
    app.include_router(services.router, dependencies=guarded)
    app.include_router(feedback.router, dependencies=guarded)
    app.include_router(health.router)
    app.include_router(drift_routes.router)
    app.include_router(smart_router)  # authenticated by SMART (OAuth with the EHR), not by CDS Hooks JWTs
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(GuardMiddleware)  # outermost: stamps, gates, headers, last-resort 500
    return app


async def _refresh_gauges(metrics: Metrics, every_s: float = 2.0) -> None:
    """Several workers: keep this worker's read gauges current for scrapes answered by another."""
    while True:
        await asyncio.sleep(every_s)
        metrics.refresh()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request bodies our handlers read themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(body_schemas())
        app.openapi_schema = schema
    return app.openapi_schema
