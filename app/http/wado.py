"""The WADO-RS gateway's routes (issue 12): ``/dicomweb/studies/...`` (token or open mode) and
``/dicomweb/c/{capability}/studies/...`` (capability mode), relative to Endpoint.address; and its QIDO-RS searches
at every level (issue 20, :func:`search`: ``studies``, ``series``, ``instances``, and those of a study or series,
PS3.18 §10.6.1), authorized the same way, a capability without a study in the path confined to its own study.

Each request: authorize (a bearer token through :class:`app.security.auth.Authorizer`, ImagingStudy read; or a
capability, :func:`app.security.capability.verify`, bound to the path's study UID) → validate the path
(:func:`app.dicom.wado_rewrite.parse_wado_path`: UIDs, frame lists, tag paths; an encoded ``/`` or ``\\`` is 404)
→ the use case (:class:`app.usecases.retrieve.Retrieval`) → a streamed answer. Errors before the first byte are
the app's OperationOutcomes (app.errors; 401/403/404, PACS 4xx passed through, 502/503/504); after it the body is
cut (no close delimiter), the only honest signal left.

Response headers come from an allow-list: Content-Type, and Content-Length only for bytes passed unchanged. The
body is sent by :class:`StreamedResponse`, which closes the PACS answer when the client hangs up (Starlette cancels
the send loop on ``http.disconnect``; a suspended generator would otherwise keep its upstream connection until
garbage collection, shared/docs/wado-gateway.md §5).

One audit line per retrieval (``facade.audit``: who, study, patient id, route template, status, bytes, ms; no
names), and ``facade_wado_bytes_sent`` / ``facade_wado_responses`` by route template.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from ..dicom.media_type import accepts_dicom_json
from ..dicom.qido_rs import parse_qido
from ..dicom.wado_rewrite import WadoPath, is_uid, parse_wado_path, rendered_query
from ..errors import FacadeError, InvalidRequest, NotAcceptable, NotFound
from ..pacs.request_scope import CACHE_SCOPE, PACS_TOKEN
from ..security import capability
from ..security.auth import Authorizer
from ..security.context import OPEN
from ..settings import Settings
from ..usecases.retrieve import Body, Retrieval
from ..usecases.wado_links import wado_address
from .fhir_http import fhir_base
from .observability import Metrics, audit_log

__all__ = ["StreamedResponse", "routes"]

DICOM_JSON = "application/dicom+json"

logger = logging.getLogger(__name__)

PREFIXES = ("/dicomweb", "/dicomweb/c/{capability}")
_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
TEMPLATES = (
    _STUDY,
    _STUDY + "/metadata",
    _STUDY + "/rendered",
    _STUDY + "/thumbnail",
    _SERIES,
    _SERIES + "/metadata",
    _SERIES + "/rendered",
    _SERIES + "/thumbnail",
    _INSTANCE,
    _INSTANCE + "/metadata",
    _INSTANCE + "/rendered",
    _INSTANCE + "/thumbnail",
    _INSTANCE + "/frames/{frames}",
    _INSTANCE + "/frames/{frames}/rendered",
    _INSTANCE + "/bulk/{bulk:path}",
)
# QIDO-RS (PS3.18 §10.6.1 resources: all studies, series or instances, and those of a study or series) → level.
SEARCHES = {
    "/studies": "studies",
    "/series": "series",
    "/instances": "instances",
    _STUDY + "/series": "series",
    _STUDY + "/instances": "instances",
    _SERIES + "/instances": "instances",
}


def routes() -> list[Route]:
    """Every gateway route, under both prefixes (GET; Starlette adds HEAD). Anything else under /dicomweb is the
    app's 404 OperationOutcome."""
    searches = [
        Route(prefix + t, partial(search, template=prefix + t, level=level), methods=["GET"])
        for prefix in PREFIXES
        for t, level in SEARCHES.items()
    ]
    return searches + [
        Route(prefix + template, partial(retrieve, prefix=prefix, template=prefix + template), methods=["GET"])
        for prefix in PREFIXES
        for template in TEMPLATES
    ]


class StreamedResponse(StreamingResponse):
    """A StreamingResponse that always closes its body generator (and so the PACS answer) and reports how many
    bytes went out, whether the client read to the end, hung up, or the PACS broke off."""

    def __init__(self, body: Body, headers: dict[str, str], done: Callable[[int, bool], None]) -> None:
        super().__init__(body.chunks, status_code=body.status, headers=headers)
        self._chunks = body.chunks
        self._done = done

    async def stream_response(self, send: Send) -> None:
        sent, complete = 0, False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        finally:
            with anyio.CancelScope(shield=True):  # runs even when the send loop was cancelled by a disconnect
                await self._chunks.aclose()
            self._done(sent, complete)


async def retrieve(request: Request, prefix: str, template: str) -> Response:
    started = time.perf_counter()
    settings: Settings = request.app.state.facade.settings
    metrics: Metrics = request.app.state.metrics
    audit: dict[str, Any] = {"route": template, "who": "anonymous"}

    def finish(status: int, sent: int, complete: bool) -> None:
        metrics.wado_bytes.labels(template).inc(sent)
        metrics.wado_responses.labels(template, str(status), "complete" if complete else "cut").inc()
        audit_log.info(
            "retrieve",
            extra={
                "audit": {
                    **audit,
                    "method": request.method,
                    "status": status,
                    "bytes": sent,
                    "complete": complete,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
            },
        )

    try:
        target = _target(request, prefix)
        audit["study"] = request.path_params.get("study")
        if target.resource == "metadata" and not accepts_dicom_json(request.headers.get("accept")):
            raise NotAcceptable("metadata is answered as application/dicom+json here (PS3.18 §10.4.3)")
        cap = request.path_params.get("capability")
        patient = await (_capability(request, settings, cap, audit) if cap else _token(request, settings, audit))
        audit["study"] = target.study
        retrieval: Retrieval = request.app.state.retrieval
        study = await retrieval.study(target.study, patient=patient)
        audit["patient"] = f"Patient/{study.patient}"
        base = wado_address(settings, fhir_base(request, settings.public_url, "R4"))
        if cap:
            base += f"/c/{cap}"
        query = _rendered_query(request, target)
        # PS3.18 §8.3.3.1: an ``accept`` query parameter stands for the Accept header (rendered and thumbnail take it).
        accept = request.query_params.get("accept") if query is not None else None
        body = await retrieval.body(
            target, study, accept=accept or request.headers.get("accept"), query=query or "", public_base=base
        )
    except FacadeError as exc:
        finish(exc.status, 0, False)
        raise
    headers = {"Content-Type": body.content_type or "application/octet-stream"}
    if body.length is not None:  # bytes passed unchanged, or a JSON body of our own: never a re-wrapped stream's
        headers["Content-Length"] = body.length
    return StreamedResponse(body, headers, partial(finish, body.status))


async def search(request: Request, template: str, level: str) -> Response:
    """QIDO-RS (issue 20): authorized as a retrieval, confined to the caller's scope (app.usecases.gateway_search);
    the query string is parsed here and never passed on (app.dicom.qido_rs)."""
    started = time.perf_counter()
    settings: Settings = request.app.state.facade.settings
    metrics: Metrics = request.app.state.metrics
    audit: dict[str, Any] = {"route": template, "who": "anonymous", "study": request.path_params.get("study")}
    status, sent = 200, 0
    try:
        _raw_path_check(request)
        study, series = request.path_params.get("study"), request.path_params.get("series")
        if not all(uid is None or is_uid(uid) for uid in (study, series)):
            raise NotFound("no such QIDO-RS resource")
        if not accepts_dicom_json(request.headers.get("accept")):
            raise NotAcceptable("QIDO-RS answers application/dicom+json here (PS3.18 §10.6.3)")
        cap = request.path_params.get("capability")
        grant = _grant(request, settings, cap, study, audit) if cap else None
        patient = None if grant else await _token(request, settings, audit)
        if patient is not None:
            audit["patient"] = f"Patient/{patient}"
        req = parse_qido(level, request.query_params.multi_items())
        retrieval: Retrieval = request.app.state.retrieval
        base = wado_address(settings, fhir_base(request, settings.public_url, "R4"))
        found = await retrieval.searches.search(
            req,
            patient=patient,
            capability_study=grant.study_uid if grant else None,
            study=study,
            series=series,
            public_base=base + (f"/c/{cap}" if cap else ""),
            agent=urlsplit(base).netloc or "-",
        )
        headers = {"Content-Type": DICOM_JSON}
        if found.warnings:
            headers["Warning"] = ", ".join(found.warnings)
        sent = len(found.body)
        audit["rows"] = found.rows
        return Response(found.body, status_code=200, headers=headers)
    except FacadeError as exc:
        status = exc.status
        raise
    except Exception:
        status = 500  # the fixed 500 outcome (app.errors); the audit line must not say 200
        raise
    finally:
        metrics.wado_bytes.labels(template).inc(sent)
        metrics.wado_responses.labels(template, str(status), "complete" if status == 200 else "cut").inc()
        ms = round((time.perf_counter() - started) * 1000, 1)
        audit_log.info("search", extra={"audit": {**audit, "method": request.method, "status": status, "ms": ms}})


def _raw_path_check(request: Request) -> None:
    """An encoded slash, backslash or dot in the raw path is refused before decoding could turn it into a segment
    boundary (Rule 1: path tricks)."""
    raw = bytes(request.scope.get("raw_path") or b"").lower()
    if b"%2f" in raw or b"%5c" in raw or b"%2e" in raw:
        raise NotFound("no such WADO-RS resource")


def _rendered_query(request: Request, target: WadoPath) -> str | None:
    """A rendered or thumbnail request's parameters, decoded and rebuilt (never as the client spelled them); None
    for any other route, which ignores its query string."""
    thumbnail = target.resource == "thumbnail"
    if not (thumbnail or target.resource == "rendered" or target.rendered):
        return None
    query = rendered_query(request.query_params.multi_items(), thumbnail=thumbnail)
    if query is None:
        raise InvalidRequest(
            "rendered takes viewport, quality and window, thumbnail takes viewport, each once (PS3.18 §8.3.5.1)"
        )
    return query


def _target(request: Request, prefix: str) -> WadoPath:
    """The validated resource path, from the decoded path after the prefix; an encoded slash or backslash in the
    raw path is refused before decoding could turn it into a segment boundary (Rule 1: path tricks)."""
    _raw_path_check(request)
    path = request.url.path
    rest = path.split("/studies/", 1)[1] if "/studies/" in path else ""
    target = parse_wado_path("studies/" + rest)
    if target is None:
        raise NotFound("no such WADO-RS resource")
    return target


async def _token(request: Request, settings: Settings, audit: dict[str, Any]) -> str | None:
    """Bearer token (or open mode): ImagingStudy read, as the FHIR reads; the patient context, if any."""
    auth: Authorizer = request.app.state.auth
    ctx = await auth.authenticate(request.headers.get("authorization"))
    audit["who"] = ctx.subject or ctx.client_id or ("open" if ctx is OPEN else "unknown")
    patient = ctx.require("ImagingStudy", "read")
    forward = settings.pacs_auth == "forward"
    CACHE_SCOPE.set(ctx.private_cache_key if forward else ctx.cache_key)
    if forward and ctx.token:
        PACS_TOKEN.set(ctx.token)
    return patient


async def _capability(request: Request, settings: Settings, cap: str, audit: dict[str, Any]) -> str | None:
    """A capability bound to the path's study (verified before anything else is looked at); its patient."""
    return _grant(request, settings, cap, request.path_params.get("study", ""), audit).patient


def _grant(
    request: Request, settings: Settings, cap: str, study: str | None, audit: dict[str, Any]
) -> capability.CapabilityGrant:
    """The verified grant; ``study`` None for a search whose path names no study (confined to the grant's)."""
    if not settings.capability_keys:
        raise NotFound("no such WADO-RS resource")
    grant = capability.verify(cap, study, keys=settings.capability_keys, now=time.time(), skew=settings.auth_clock_skew)
    audit["who"] = "capability"
    CACHE_SCOPE.set(("capability", grant.patient))
    return grant
