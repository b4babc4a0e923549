"""create_app(settings): routes, error handlers and the lifespan that owns the one upstream HTTP client;
worker_app(): the same, built from the environment in each worker process of ``python -m app --workers N``."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.config import STARTUP_FAILURE

from .errors import HTTP_STATUS_CODES, INTERNAL_ERROR, FacadeError, outcome
from .http import endpoints, viewer, wado
from .http.answers import answer_cache
from .http.cors import CorsMiddleware
from .http.fhir_http import FHIRResponse
from .http.observability import Metrics, ObservabilityMiddleware
from .http.warm import WARM_TYPES, WarmAnswers, WarmRoute
from .mapping.versions import VERSIONS
from .pacs.breaker import CircuitBreaker
from .pacs.cache import CachedQido, QidoPort
from .pacs.cache_redis import RedisCache
from .pacs.change_clock import ChangeClock
from .pacs.changes import ChangeFollower, OrthancChanges
from .pacs.dicomweb_write import DicomWebStore
from .pacs.ehr import EhrPatients, MrnRule
from .pacs.federation import FederatedQido, FederatedStore, Source, StampedQido, StoreSource, WadoSource
from .pacs.orthanc_rest import OrthancStudies
from .pacs.pixm import PixManager
from .pacs.upstream import DicomWebUpstream, Qido, UpstreamStats
from .pacs.wado import WadoUpstream
from .planning import fanout
from .security.auth import Authorizer
from .settings import Settings, SettingsError
from .source_settings import ResolvedSource
from .usecases.last_updated import Archive, ArchiveTimes, refusal
from .usecases.retrieve import Retrieval
from .usecases.service import Facade

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
            httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as auth_client,
        ):
            # One set of clients per archive (issue 21): its own breaker, budget, credentials, cache and counters.
            archives = [_archive(settings, source, pool, app.state.metrics) for source in settings.pacs_sources]
            first = archives[0]
            app.state.upstream = first.upstream
            ehr = None
            if settings.ehr_fhir_url:
                rule = MrnRule(
                    settings.ehr_mrn_system,
                    settings.patient_identifier_system,
                    settings.issuer_system_prefix,
                    settings.issuer_systems,
                    # several archives: every identifier of the EHR's Patient in one of their domains is asked too
                    domains=frozenset(fanout.domain(s.name, s.issuer) for s in settings.pacs_sources)
                    if settings.federated
                    else frozenset(),
                )
                ehr = EhrPatients(
                    ehr_client, settings.ehr_fhir_url, rule, token=settings.ehr_token, ttl=settings.cache_ttl
                )
            app.state.ehr = ehr
            # IHE PIXm (issue 21): the person's identifiers in the other domains; the EHR client's pool, not the PACS's.
            pixm = PixManager(ehr_client, settings.pixm_url, ttl=settings.cache_ttl) if settings.pixm_url else None
            if settings.auth_mode == "open":
                logger.warning(
                    "AUTH_MODE=open: every request is served without authorization. Demo only: set "
                    "FACADE_AUTH_MODE=smart (with FACADE_JWKS_URL/FACADE_JWKS_FILE or FACADE_INTROSPECTION_URL) "
                    "before any real patient data is behind this server."
                )
            app.state.auth = Authorizer(settings.auth, auth_client)
            qido: QidoPort = (
                FederatedQido([a.source for a in archives], ttl=settings.cache_ttl, max_rows=settings.prequery_limit)
                if settings.federated
                else first.source.qido
            )
            facade = Facade(settings, qido, ehr, pixm)
            if refusal(settings) is None:  # every archive an Orthanc: it says when its studies changed (issue 22)
                rest = [
                    Archive(
                        s.name,
                        OrthancStudies(
                            pool,
                            s.orthanc_url,
                            token=s.pacs_token,
                            timeout=s.upstream_read_timeout,
                            batch=settings.prequery_limit,
                        ).last_updates,
                    )
                    for s in settings.pacs_sources
                ]
                facade.times.lookup = ArchiveTimes(rest) if settings.federated else rest[0].last_updates
            store: DicomWebStore | FederatedStore = first.store
            if isinstance(qido, FederatedQido):
                writable = [source.manifests_writable for source in settings.pacs_sources]
                store = FederatedStore(
                    [StoreSource(a.source.name, a.store, w) for a, w in zip(archives, writable, strict=True)], qido
                )
            app.state.store = store
            facade.attach_manifests(store)
            app.state.facade = facade
            # issue 14: finished answers; not over lookups cached on their own schedule (EHR links, PIXm)
            app.state.answers = answer_cache(settings, qido, ehr=ehr is not None or pixm is not None)
            # The WADO-RS gateway (issue 12): same pool, credentials, breaker, retries and budget as QIDO.
            app.state.retrieval = Retrieval(
                facade,
                [WadoSource(a.source.name, a.source.domain if settings.federated else None, a.wado) for a in archives],
            )
            app.state.metrics.bind(cache=qido, answers=app.state.answers)
            for a in archives:
                if a.breaker is not None:
                    app.state.metrics.bind_breaker(a.source.name, a.breaker)
            # Orthanc archives: their change feed clears their cached answers as they change (issue 22).
            followers = [
                ChangeFollower(
                    OrthancChanges(
                        pool,
                        source.orthanc_url,
                        token=source.pacs_token,
                        timeout=source.upstream_read_timeout,
                        name=source.name,
                    ),
                    a.source.qido,
                    interval=settings.change_poll_interval,
                    on_event=app.state.metrics.observe_change_feed,
                )
                for a, source in zip(archives, settings.pacs_sources, strict=True)
                if source.pacs_kind == "orthanc"
            ]
            app.state.followers = followers
            for follower in followers:
                follower.start()
            try:
                yield
            finally:
                for follower in followers:
                    await follower.stop()
                for a in archives:
                    if isinstance(a.source.qido.backend, RedisCache):
                        await a.source.qido.backend.aclose()

    metrics = Metrics(per_source=settings.federated)
    routes = [
        Route("/", endpoints.landing, methods=["GET"]),
        Route("/viewer", viewer.viewer, methods=["GET"]),
        Route("/viewer.js", viewer.viewer_script, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
    ]
    # The routes whose repeated GETs app.http.warm answers from the finished-answer cache.
    warm_searches: dict[str, WarmRoute] = {}
    warm_reads: dict[str, WarmRoute] = {}
    for version in VERSIONS:
        fhir = f"/fhir/{version.name}"
        routes.append(Route(f"{fhir}/metadata", partial(endpoints.metadata, version=version), methods=["GET"]))
        routes.append(Route(f"{fhir}/.well-known/smart-configuration", endpoints.smart_configuration, methods=["GET"]))
        for rtype in (*version.searches, "Endpoint", *version.reads):
            if rtype in version.searches:
                handler = partial(endpoints.search, version=version, resource_type=rtype)
                routes += [
                    Route(f"{fhir}/{rtype}", handler, methods=["GET"]),
                    Route(f"{fhir}/{rtype}/_search", handler, methods=["POST"]),
                ]
                if rtype in WARM_TYPES:
                    warm_searches[routes[-2].path] = WarmRoute(routes[-2], version, rtype, "search")
            read = partial(endpoints.read, version=version, resource_type=rtype)
            routes.append(Route(f"{fhir}/{rtype}/{{id}}", read, methods=["GET"]))
            if rtype in WARM_TYPES:
                warm_reads[f"{fhir}/{rtype}/"] = WarmRoute(routes[-1], version, rtype, "read")
        if "ImagingSelection" in version.searches:
            create = partial(endpoints.create_selection, version=version)
            routes += [
                Route(f"{fhir}/ImagingSelection", create, methods=["POST"]),
                Route(fhir, partial(endpoints.transaction, version=version), methods=["POST"]),
            ]
    if settings.wado_mode == "gateway":
        routes += wado.routes()
    handlers = {FacadeError: _facade_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=handlers,
        # CORS inside observability: preflights get a request id and are counted; none of it without cors_origins.
        middleware=[Middleware(ObservabilityMiddleware, metrics=metrics)]
        + ([Middleware(CorsMiddleware, origins=settings.cors_origins)] if settings.cors_origins else [])
        + [
            # innermost of ours: a warm hit still gets its request id, metrics, audit line and CORS headers
            Middleware(
                WarmAnswers,
                searches=warm_searches,
                reads=warm_reads,
                public_url=settings.public_url,
                forward_token=settings.pacs_auth == "forward",
            )
        ],
    )
    app.state.metrics = metrics
    return app


def worker_app() -> Starlette:
    """uvicorn's app factory in each worker of ``python -m app --workers N``: the settings from the same sources
    the parent process validated before it started the workers (FACADE_* variables and the FACADE_CONFIG file it
    passes down), so a bad configuration has already stopped the parent with one line."""
    try:
        settings = Settings.load(os.environ)
    except SettingsError as exc:  # the file changed since the parent read it
        logger.error("configuration error: %s", exc)
        # uvicorn's startup-failure status: the supervisor stops instead of starting this worker again and again.
        sys.exit(STARTUP_FAILURE)
    app = create_app(settings)
    # As app.__main__ does for one process: what lives as long as the worker leaves the cyclic GC's generations.
    gc.freeze()
    return app


@dataclass(frozen=True)
class _Archive:
    """One archive's clients: QIDO (cached), WADO-RS metadata and STOW-RS, the gateway's WADO-RS; one breaker."""

    source: Source
    upstream: DicomWebUpstream
    store: DicomWebStore
    wado: WadoUpstream
    breaker: CircuitBreaker | None


def _archive(settings: Settings, source: ResolvedSource, pool: httpx.AsyncBaseTransport, metrics: Metrics) -> _Archive:
    timeout = httpx.Timeout(source.upstream_read_timeout, connect=source.upstream_connect_timeout)
    breaker = (
        CircuitBreaker(
            failure_threshold=source.breaker_failures,
            reset_after=source.breaker_reset,
            initial_reset=settings.breaker_initial_reset,
            # No PACS call outlives its request's budget: a probe out longer than that is lost, not slow.
            probe_timeout=source.upstream_budget + 1.0,
        )
        if source.breaker_failures
        else None
    )
    resilience: dict[str, Any] = {
        "breaker": breaker,  # one per archive: QIDO, metadata and STOW share it
        "retries": settings.upstream_retries,
        "backoff": settings.upstream_backoff,
        "budget": source.upstream_budget,
        "retry_timeouts": settings.upstream_retry_timeouts,
        "stats": UpstreamStats(on_call=partial(metrics.observe_upstream, source=source.name)),
        "token": source.pacs_token,
        # several archives: each one's calls of a request share a budget of their own (one PACS: as before)
        "archive": source.name if settings.federated else None,
    }
    upstream = DicomWebUpstream(pool, source.dicomweb_url, timeout, **resilience)
    qido: Qido = upstream
    # several archives: an archive's rows carry its domain, and its local time the zone of its own pacs_timezone
    if settings.federated:
        own = source.pacs_timezone if source.pacs_timezone != settings.pacs_timezone else None
        qido = StampedQido(upstream, fanout.domain(source.name, source.issuer), ZoneInfo(own) if own else None)
    return _Archive(
        source=Source(
            source.name,
            fanout.domain(source.name, source.issuer),
            _cache(settings, qido, source.dicomweb_url, followed=source.pacs_kind == "orthanc"),
            breaker,
        ),
        upstream=upstream,
        store=DicomWebStore(pool, source.dicomweb_url, timeout, **resilience),
        wado=WadoUpstream(pool, source.dicomweb_url, timeout, **resilience),
        breaker=breaker,
    )


def _cache(settings: Settings, upstream: Qido, dicomweb_url: str, *, followed: bool) -> CachedQido:
    """In-process by default; Redis (shared by replicas) when cache_redis_url is set. Keys are prefixed with the
    PACS they came from, so two facades in front of different archives never mix answers in one Redis. An archive
    whose change feed is followed (``followed``) gets a change clock: its changes clear only what they touch."""
    clock = ChangeClock(keep=settings.cache_ttl + settings.cache_stale_ttl) if followed else None
    if settings.cache_redis_url:
        # One PACS: its address as the Endpoint names it (as before issue 21); several: each one's own root.
        where = settings.wado_base if not settings.federated else dicomweb_url.rpartition("@")[2]
        pacs = hashlib.sha256(where.encode()).hexdigest()[:12]
        backend = RedisCache.from_url(
            settings.cache_redis_url,
            ttl=settings.cache_ttl,
            stale_ttl=settings.cache_stale_ttl,
            prefix=f"{settings.cache_redis_prefix}:{pacs}",
        )
        return CachedQido(upstream, backend=backend, clock=clock)
    return CachedQido(
        upstream,
        ttl=settings.cache_ttl,
        max_bytes=settings.cache_max_bytes,
        stale_ttl=settings.cache_stale_ttl,
        clock=clock,
    )


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
