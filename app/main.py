"""create_app(settings): routes, error handlers and the lifespan that owns the one upstream HTTP client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import endpoints
from .cache import CachedQido
from .dicomweb_write import DicomWebStore
from .ehr import EhrPatients, MrnRule
from .errors import HTTP_STATUS_CODES, INTERNAL_ERROR, FacadeError, outcome
from .fhir_http import FHIRResponse
from .observability import Metrics, ObservabilityMiddleware
from .service import Facade
from .settings import Settings
from .upstream import DicomWebUpstream
from .versions import VERSIONS

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """``transport`` replaces the network (tests inject an httpx.MockTransport / respx router)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.upstream_read_timeout, connect=settings.upstream_connect_timeout)
        # Orthanc drops idle keep-alive connections after 1 s (orthanc-qido.md): expire ours sooner.
        limits = httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
            keepalive_expiry=0.8,
        )
        async with (
            transport or httpx.AsyncHTTPTransport(limits=limits, trust_env=False) as pool,
            httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as ehr_client,
        ):
            upstream = DicomWebUpstream(pool, settings.dicomweb_url, timeout)
            app.state.upstream = upstream
            ehr = None
            if settings.ehr_fhir_url:
                rule = MrnRule(
                    settings.ehr_mrn_system,
                    settings.patient_identifier_system,
                    settings.issuer_system_prefix,
                    settings.issuer_systems,
                )
                ehr = EhrPatients(
                    ehr_client, settings.ehr_fhir_url, rule, token=settings.ehr_token, ttl=settings.cache_ttl
                )
            app.state.ehr = ehr
            facade = Facade(
                settings, CachedQido(upstream, ttl=settings.cache_ttl, max_bytes=settings.cache_max_bytes), ehr
            )
            store = DicomWebStore(pool, settings.dicomweb_url, timeout)
            app.state.store = store
            facade.attach_manifests(store)
            app.state.facade = facade
            app.state.metrics.bind(cache=facade.qido)
            yield

    metrics = Metrics()
    routes = [
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
    ]
    for version in VERSIONS:
        fhir = f"/fhir/{version.name}"
        routes.append(Route(f"{fhir}/metadata", partial(endpoints.metadata, version=version), methods=["GET"]))
        for rtype in (*version.searches, "Endpoint"):
            if rtype in version.searches:
                handler = partial(endpoints.search, version=version, resource_type=rtype)
                routes += [
                    Route(f"{fhir}/{rtype}", handler, methods=["GET"]),
                    Route(f"{fhir}/{rtype}/_search", handler, methods=["POST"]),
                ]
            read = partial(endpoints.read, version=version, resource_type=rtype)
            routes.append(Route(f"{fhir}/{rtype}/{{id}}", read, methods=["GET"]))
        if "ImagingSelection" in version.searches:
            create = partial(endpoints.create_selection, version=version)
            routes += [
                Route(f"{fhir}/ImagingSelection", create, methods=["POST"]),
                Route(fhir, partial(endpoints.transaction, version=version), methods=["POST"]),
            ]
    handlers = {FacadeError: _facade_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=handlers,
        middleware=[Middleware(ObservabilityMiddleware, metrics=metrics)],
    )
    app.state.metrics = metrics
    return app


async def _facade_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FacadeError)
    if exc.status >= 500:
        logger.warning(
            "%s %s -> %s: %s",
            request.method,
            request.url.path,
            exc.status,
            exc.message,
            exc_info=exc.__cause__ is not None and logger.isEnabledFor(logging.DEBUG),
        )
    return FHIRResponse(outcome(exc.code, exc.message), exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_STATUS_CODES.get(exc.status_code, "processing")
    message = {404: f"no route for {request.url.path[:100]}", 405: f"{request.method} is not supported here"}.get(
        exc.status_code, str(exc.detail)
    )
    return FHIRResponse(outcome(code, message), exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Logged (with traceback) by Starlette's ServerErrorMiddleware, which re-raises after this response.
    return FHIRResponse(INTERNAL_ERROR, 500)
