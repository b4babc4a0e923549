"""Thin async handlers: negotiate → parse → use case → present in the base's FHIR version → FHIRResponse.

Each handler is bound to one FHIR version (and resource type) by app.main with functools.partial.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..errors import NotFound
from ..fhir import bundle
from ..fhir.search import SearchRequest, parse_search
from ..mapping.versions import VERSIONS, FhirVersion
from ..pacs.request_scope import (
    CACHE_SCOPE,
    DEPENDS,
    PACS_TOKEN,
    SOURCE_NOTES,
    STALE_IF_ERROR,
    SourceNotes,
    StaleIfError,
)
from ..security.auth import Authorizer
from ..security.context import OPEN, AuthContext, Forbidden
from ..security.scopes import Interaction
from ..security.smart_discovery import smart_configuration as build_smart_configuration
from ..usecases.service import Facade
from ..usecases.wado_links import RetrievalGrant
from .answers import Answer, AnswerCache, answer_key, cache_partition
from .cache_control import stale_accepted
from .capability import capability_statement
from .fhir_http import (
    FHIRResponse,
    cache_directives,
    fhir_base,
    json_body,
    negotiate,
    prefers_strict,
    pretty,
    raw_query,
    search_items,
)
from .landing import HEADERS as LANDING_HEADERS
from .landing import landing_page
from .observability import audit_fields, record
from .warm import WARM_TYPES

STARTED = datetime.now(UTC).isoformat(timespec="seconds")
PATIENT_INCLUDES = frozenset({"ImagingStudy:patient", "DocumentReference:subject"})  # need Patient read
FAILED_SOURCE = "The archive {!r} did not answer, so its studies are missing from these results"
STALE_MESSAGE = (
    "The PACS could not be reached; some of these results come from an earlier answer and may be out of date."
)


def _facade(request: Request) -> Facade:
    facade: Facade = request.app.state.facade
    return facade


def _base(request: Request, version: FhirVersion) -> str:
    return fhir_base(request, _facade(request).settings.public_url, version.name)


@dataclass(frozen=True)
class Access:
    patient: str | None  # the token's patient context, when the grant is patient-level (app.security.auth)
    ctx: AuthContext
    cache_trusted: bool = True  # False: no cached answer may be used (see _authorize)
    no_cache: bool = False  # the client asked for an answer the PACS just gave (app.http.cache_control)

    @property
    def fresh(self) -> bool:
        """Nothing kept may answer this request: the client said so, or the cache cannot be trusted now."""
        return self.no_cache or not self.cache_trusted

    @property
    def retrieval(self) -> RetrievalGrant | None:
        """What capabilities issued in this answer may grant (capability mode): retrieval is ImagingStudy read,
        so a token without it gets no capability; otherwise its exp and its read patient context."""
        try:
            patient = self.ctx.require("ImagingStudy", "read")
        except Forbidden:
            return None
        return RetrievalGrant(expires_at=self.ctx.expires_at, patient=patient)


async def smart_configuration(request: Request) -> Response:
    """SMART App Launch discovery (.well-known/smart-configuration), from settings; public like /metadata."""
    s = _facade(request).settings
    if s.auth_mode != "smart" or not s.smart_token_endpoint:
        raise NotFound("this server publishes no SMART configuration (auth_mode is not smart, or no token endpoint)")
    body = build_smart_configuration(
        authorization_endpoint=s.smart_authorization_endpoint,
        token_endpoint=s.smart_token_endpoint,
        issuer=s.token_issuer,
        jwks_uri=s.jwks_url,
        introspection_endpoint=s.introspection_url,
    )
    return JSONResponse(body)


async def metadata(request: Request, version: FhirVersion) -> Response:
    negotiate(request, version.mime_versions)
    statement = capability_statement(
        _base(request, version), version, _facade(request).settings, software_version=__version__, date=STARTED
    )
    return FHIRResponse(statement, pretty=pretty(request))


async def _authorize(request: Request, resource_type: str, interaction: Interaction) -> Access:
    """Authenticate (401), check the scopes (403), and scope the PACS cache to what this token may see."""
    auth: Authorizer = request.app.state.auth
    ctx = await auth.authenticate(request.headers.get("authorization"))
    record(request.state, who=ctx.subject or ctx.client_id or ("open" if ctx is OPEN else "unknown"))
    restriction = ctx.require(resource_type, interaction)
    facade = _facade(request)
    settings = facade.settings
    forward = settings.pacs_auth == "forward"
    # Cached answers are shared only by requests that may see the same data and began in the same cache generation.
    generation = await facade.qido.current_generation()
    CACHE_SCOPE.set(cache_partition(ctx, forward=forward, generation=generation))
    directives = cache_directives(request)
    STALE_IF_ERROR.set(StaleIfError(stale_accepted(directives, settings.cache_stale_ttl)))
    SOURCE_NOTES.set(SourceNotes())  # archives that fail this request (several behind this base, issue 21)
    DEPENDS.set([])  # the change stamps its cached answer will depend on (issue 22, app.http.answers)
    if forward and ctx.token:
        PACS_TOKEN.set(ctx.token)
    # A shared cache whose generation cannot be read (Redis down) may hold answers older than a write made through
    # another replica: this request goes to the PACS, as with no-cache.
    return Access(restriction, ctx, cache_trusted=generation is not None, no_cache=directives.no_cache)


async def search(request: Request, version: FhirVersion, resource_type: str) -> Response:
    negotiate(request, version.mime_versions)
    access = await _authorize(request, resource_type, "search")
    facade = _facade(request)
    base = _base(request, version)
    strict, fresh = prefers_strict(request), access.fresh
    patient_read = access.ctx.scopes.allows("Patient", "read")
    # A GET seen before is found by its query string as sent (no parsing); else by the parsed request.
    query = raw_query(request.scope)
    answers, alias = _answer_key(request, access, version, resource_type, "GET", query, base, strict)
    if request.method != "GET" or answers is None or query is None:
        alias = None
    elif not fresh and (hit := answers.lookup((alias, patient_read))) is not None:
        return _replay(request, "search", resource_type, hit)
    ctx = facade.search_context(base, strict=strict)
    req = parse_search(await search_items(request), ctx, version.searches[resource_type])
    if req.includes & PATIENT_INCLUDES and not patient_read:
        req = dataclasses.replace(req, includes=req.includes - PATIENT_INCLUDES)  # not this token's to see
    answers, key = _answer_key(request, access, version, resource_type, "search", req, base, strict)
    if answers is not None and not fresh:
        if (hit := answers.get(key) or await answers.shared(key)) is not None:
            if alias is not None:
                answers.alias((alias, patient_read), key)  # not put(): that would restart the answer's TTL
            return _replay(request, "search", resource_type, hit)
    settle = answers.making(key) if answers is not None and not fresh else None
    kept = None
    try:
        kept, response = await _search(request, facade, access, version, resource_type, req, base, strict, answers)
        if kept is not None and answers is not None:
            answers.put(key, kept, alias=None if alias is None else (alias, patient_read))
    finally:
        if settle is not None:
            settle(kept)  # requests waiting for this answer replay it, or make their own (not kept)
    return response


async def _search(
    request: Request,
    facade: Facade,
    access: Access,
    version: FhirVersion,
    resource_type: str,
    req: SearchRequest,
    base: str,
    strict: bool,
    answers: AnswerCache | None,
) -> tuple[Answer | None, Response]:
    """The search made: the answer to keep (None: no cache, or one with a warning, which is never kept), and the
    response."""
    result = await facade.search(
        resource_type, req, base, fresh=access.fresh, patient=access.patient, retrieval=access.retrieval, strict=strict
    )
    audit = audit_fields(result)
    record(request.state, interaction="search", type=resource_type, **audit)
    stale = _served_stale()
    if stale:  # stale-if-error: say so in the Bundle (search.mode outcome, R4 bundle.html)
        result = bundle.with_outcome(result, "warning", "transient", [STALE_MESSAGE])
    incomplete = _failed_sources()
    if incomplete:  # an archive did not answer: the others' results, and a word per missing one (IHE XCA)
        result = bundle.with_outcome(result, "warning", "incomplete", incomplete)
        record(request.state, sources_failed=sorted((SOURCE_NOTES.get() or SourceNotes()).failed))
    response = FHIRResponse(version.present(result), pretty=req.pretty)
    if answers is None or stale or incomplete:
        return None, response
    return Answer(bytes(response.body), audit, _depends()), response


def _depends() -> tuple[tuple[Any, Any, int], ...]:
    return tuple(dict.fromkeys(DEPENDS.get() or ()))  # once each: a query asked twice adds its stamp twice


def _served_stale() -> bool:
    """Whether a PACS call of this request was answered from a stale entry (stale-if-error)."""
    stale = STALE_IF_ERROR.get()
    return stale is not None and bool(stale.served)


def _failed_sources() -> list[str]:
    """One sentence per archive that failed this request, naming it (never its address)."""
    noted = SOURCE_NOTES.get()
    if noted is None:
        return []
    return [f"{FAILED_SOURCE.format(name)}: {getattr(e, 'message', 'failed')}" for name, e in noted.failed.items()]


def _replay(request: Request, interaction: str, resource_type: str, hit: Answer) -> Response:
    """A finished answer from the cache: the same bytes, and the same audit line as when it was made."""
    record(request.state, interaction=interaction, type=resource_type, **hit.audit)
    return Response(hit.body, media_type=FHIRResponse.media_type)


def _answer_key(
    request: Request, access: Access, version: FhirVersion, resource_type: str, *parts: Hashable
) -> tuple[AnswerCache | None, Hashable]:
    """The finished-answer cache (app.http.answers) and this request's key in it; (None, None) when not cached.
    The partition (CACHE_SCOPE, set by _authorize) comes first, then the patient restriction; ``parts`` carry the
    canonical request, the base URL of the links and the rendering options."""
    answers: AnswerCache | None = getattr(request.app.state, "answers", None)
    if answers is None or resource_type not in WARM_TYPES or not access.cache_trusted:
        return None, None
    key = answer_key(CACHE_SCOPE.get(), access.patient, version.name, resource_type, *parts)
    return (None, None) if key is None else (answers, key)


async def read(request: Request, version: FhirVersion, resource_type: str) -> Response:
    negotiate(request, version.mime_versions)
    # The Endpoint is no patient data: any token that may read studies may read where their images are. A MADO
    # document Bundle is the content of a DocumentReference: reading it takes DocumentReference read.
    scope_type = {"Endpoint": "ImagingStudy", "Bundle": "DocumentReference"}.get(resource_type, resource_type)
    access = await _authorize(request, scope_type, "read")
    facade = _facade(request)
    base, indent = _base(request, version), pretty(request)
    fresh = access.fresh
    rid = request.path_params["id"]
    answers, key = _answer_key(request, access, version, resource_type, "read", rid, base, indent)
    if answers is not None and not fresh and (hit := answers.get(key)) is not None:
        return _replay(request, "read", resource_type, hit)
    resource = await facade.read(
        resource_type, rid, base, fresh=fresh, patient=access.patient, retrieval=access.retrieval
    )
    audit = audit_fields(resource)
    record(request.state, interaction="read", type=resource_type, **audit)
    # A read has no Bundle to carry an OperationOutcome: RFC 9111 §5.5 (obsolete but understood) Warning 110,
    # and 199 (miscellaneous) when an archive that may hold more of the study did not answer.
    warnings = ['110 - "Response is Stale"'] if _served_stale() else []
    warnings += [f'199 - "archive {name} did not answer"' for name in (SOURCE_NOTES.get() or SourceNotes()).failed]
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    response = FHIRResponse(version.present(resource), pretty=indent, headers=headers)
    if answers is not None and not warnings:
        answers.put(key, Answer(bytes(response.body), audit, _depends()))
    return response


async def create_selection(request: Request, version: FhirVersion) -> Response:
    """POST [base]/ImagingSelection: a new manifest (http.html#create; If-None-Exist: http.html#ccreate)."""
    return await _create(request, version, transaction=False)


async def transaction(request: Request, version: FhirVersion) -> Response:
    """POST [base] with a transaction Bundle whose entries are the ImagingSelections of one manifest."""
    return await _create(request, version, transaction=True)


async def _create(request: Request, version: FhirVersion, *, transaction: bool) -> Response:
    negotiate(request, version.mime_versions)
    access = await _authorize(request, "ImagingSelection", "create")
    payload = await json_body(request)
    facade = _facade(request)
    created = await facade.create_manifest(
        payload,
        _base(request, version),
        if_none_exist=request.headers.get("if-none-exist"),
        transaction=transaction,
        patient=access.patient,
        user=access.ctx.user,  # the manifest's author: the token's fhirUser, else the facade (issue 19)
    )
    record(request.state, interaction="create", type="ImagingSelection", **audit_fields(created.body))
    headers = {"Location": created.location} if created.location else None
    return FHIRResponse(version.present(created.body), created.status, pretty=pretty(request), headers=headers)


async def readyz(request: Request) -> Response:
    """Ready while the PACS (with several archives: at least one) answers a minimal QIDO query (uncached) in time
    and its circuit is not open; one issue per archive that does not, named (never its address)."""
    ready, states = await _facade(request).ready()
    several = len(states) > 1
    issues = [
        {
            "severity": "information" if problem is None else "error" if not ready else "warning",
            "code": "informational" if problem is None else "transient",
            "diagnostics": (f"{name}: " if several else "") + (problem or "ready"),
        }
        for name, problem in states.items()
    ]
    body = {"resourceType": "OperationOutcome", "issue": issues}
    return FHIRResponse(body, 200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (requests, upstream calls, cache, circuit breaker)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def landing(request: Request) -> Response:
    """``GET /``: what this service is, for a person with a browser (app.http.landing)."""
    settings = _facade(request).settings
    root = fhir_base(request, settings.public_url, "").removesuffix("/fhir/")
    page = landing_page(root, auth_mode=settings.auth_mode, versions=tuple(v.name for v in VERSIONS))
    return HTMLResponse(page, headers=LANDING_HEADERS)


async def healthz(request: Request) -> Response:
    return FHIRResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "alive"}],
        }
    )
