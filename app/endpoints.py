"""Thin async handlers: negotiate → parse → use case → present in the base's FHIR version → FHIRResponse.

Each handler is bound to one FHIR version (and resource type) by app.main with functools.partial.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from . import __version__
from .capability import capability_statement
from .errors import outcome
from .fhir_http import (
    FHIRResponse,
    fhir_base,
    json_body,
    negotiate,
    prefers_strict,
    pretty,
    search_items,
    wants_fresh,
)
from .observability import audit_fields, record
from .search import parse_search
from .service import Facade
from .versions import FhirVersion

STARTED = datetime.now(UTC).isoformat(timespec="seconds")


def _facade(request: Request) -> Facade:
    facade: Facade = request.app.state.facade
    return facade


def _base(request: Request, version: FhirVersion) -> str:
    return fhir_base(request, _facade(request).settings.public_url, version.name)


async def metadata(request: Request, version: FhirVersion) -> Response:
    negotiate(request, version.mime_versions)
    statement = capability_statement(
        _base(request, version), version, _facade(request).settings, software_version=__version__, date=STARTED
    )
    return FHIRResponse(statement, pretty=pretty(request))


async def search(request: Request, version: FhirVersion, resource_type: str) -> Response:
    negotiate(request, version.mime_versions)
    facade = _facade(request)
    base = _base(request, version)
    ctx = facade.search_context(base, strict=prefers_strict(request))
    req = parse_search(await search_items(request), ctx, version.searches[resource_type])
    result = await facade.search(resource_type, req, base, fresh=wants_fresh(request))
    record(request.state, interaction="search", type=resource_type, **audit_fields(result))
    return FHIRResponse(version.present(result), pretty=req.pretty)


async def read(request: Request, version: FhirVersion, resource_type: str) -> Response:
    negotiate(request, version.mime_versions)
    facade = _facade(request)
    resource = await facade.read(
        resource_type, request.path_params["id"], _base(request, version), fresh=wants_fresh(request)
    )
    record(request.state, interaction="read", type=resource_type, **audit_fields(resource))
    return FHIRResponse(version.present(resource), pretty=pretty(request))


async def create_selection(request: Request, version: FhirVersion) -> Response:
    """POST [base]/ImagingSelection: a new manifest (http.html#create; If-None-Exist: http.html#ccreate)."""
    return await _create(request, version, transaction=False)


async def transaction(request: Request, version: FhirVersion) -> Response:
    """POST [base] with a transaction Bundle whose entries are the ImagingSelections of one manifest."""
    return await _create(request, version, transaction=True)


async def _create(request: Request, version: FhirVersion, *, transaction: bool) -> Response:
    negotiate(request, version.mime_versions)
    payload = await json_body(request)
    facade = _facade(request)
    created = await facade.create_manifest(
        payload,
        _base(request, version),
        if_none_exist=request.headers.get("if-none-exist"),
        transaction=transaction,
    )
    record(request.state, interaction="create", type="ImagingSelection", **audit_fields(created.body))
    headers = {"Location": created.location} if created.location else None
    return FHIRResponse(version.present(created.body), created.status, pretty=pretty(request), headers=headers)


async def readyz(request: Request) -> Response:
    """Ready when the PACS answers a minimal QIDO query (uncached) in time and its circuit is not open."""
    problem = await _facade(request).ready()
    if problem:
        return FHIRResponse(outcome("transient", problem), 503, headers={"Retry-After": "5"})
    return FHIRResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "ready"}],
        }
    )


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (requests, upstream calls, cache, circuit breaker)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return FHIRResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "alive"}],
        }
    )
