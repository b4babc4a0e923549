"""Thin async handlers: negotiate → parse → use case → FHIRResponse. No mapping logic here."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from . import __version__
from .capability import capability_statement
from .fhir_http import FHIRResponse, fhir_base, negotiate, prefers_strict, pretty, search_items, wants_fresh
from .search import parse_search
from .search_params import PATIENT
from .service import Facade

STARTED = datetime.now(UTC).isoformat(timespec="seconds")


def _facade(request: Request) -> Facade:
    facade: Facade = request.app.state.facade
    return facade


async def metadata(request: Request) -> Response:
    negotiate(request)
    base = fhir_base(request, _facade(request).settings.public_url)
    return FHIRResponse(capability_statement(base, software_version=__version__, date=STARTED), pretty=pretty(request))


async def search_imaging_study(request: Request) -> Response:
    negotiate(request)
    facade = _facade(request)
    base = fhir_base(request, facade.settings.public_url)
    req = parse_search(await search_items(request), facade.search_context(base, strict=prefers_strict(request)))
    result = await facade.search_studies(req, base, fresh=wants_fresh(request))
    return FHIRResponse(result, pretty=req.pretty)


async def search_patient(request: Request) -> Response:
    negotiate(request)
    facade = _facade(request)
    base = fhir_base(request, facade.settings.public_url)
    ctx = facade.search_context(base, strict=prefers_strict(request))
    req = parse_search(await search_items(request), ctx, PATIENT)
    result = await facade.search_patients(req, base, fresh=wants_fresh(request))
    return FHIRResponse(result, pretty=req.pretty)


async def read_imaging_study(request: Request) -> Response:
    negotiate(request)
    resource = await _facade(request).read_study(request.path_params["id"], fresh=wants_fresh(request))
    return FHIRResponse(resource, pretty=pretty(request))


async def read_patient(request: Request) -> Response:
    negotiate(request)
    resource = await _facade(request).read_patient(request.path_params["id"], fresh=wants_fresh(request))
    return FHIRResponse(resource, pretty=pretty(request))


async def read_endpoint(request: Request) -> Response:
    negotiate(request)
    facade = _facade(request)
    base = fhir_base(request, facade.settings.public_url)
    return FHIRResponse(facade.endpoint(base, request.path_params["id"]), pretty=pretty(request))


async def healthz(request: Request) -> Response:
    return FHIRResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "alive"}],
        }
    )
