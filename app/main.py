"""create_app(settings): routes, error handlers and the lifespan that owns the one upstream HTTP client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import endpoints
from .cache import CachedQido
from .ehr import EhrPatients, MrnRule
from .errors import HTTP_STATUS_CODES, INTERNAL_ERROR, FacadeError, outcome
from .fhir_http import FHIRResponse
from .service import Facade
from .settings import Settings
from .upstream import DicomWebUpstream

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
            app.state.facade = Facade(
                settings, CachedQido(upstream, ttl=settings.cache_ttl, max_bytes=settings.cache_max_bytes), ehr
            )
            yield

    fhir = "/fhir/R4"
    routes = [
        Route(f"{fhir}/metadata", endpoints.metadata, methods=["GET"]),
        Route(f"{fhir}/ImagingStudy", endpoints.search_imaging_study, methods=["GET"]),
        Route(f"{fhir}/ImagingStudy/_search", endpoints.search_imaging_study, methods=["POST"]),
        Route(f"{fhir}/ImagingStudy/{{id}}", endpoints.read_imaging_study, methods=["GET"]),
        Route(f"{fhir}/Patient", endpoints.search_patient, methods=["GET"]),
        Route(f"{fhir}/Patient/_search", endpoints.search_patient, methods=["POST"]),
        Route(f"{fhir}/Patient/{{id}}", endpoints.read_patient, methods=["GET"]),
        Route(f"{fhir}/Endpoint/{{id}}", endpoints.read_endpoint, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
    ]
    handlers = {FacadeError: _facade_error, HTTPException: _http_error, Exception: _internal_error}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)


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
