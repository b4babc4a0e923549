"""FHIR's HTTP conventions (R4 http.html): content negotiation, Prefer, the FHIR base URL, JSON responses."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequest, NotAcceptable, UnsupportedMediaType
from .cache_control import CacheDirectives, parse_cache_control

FHIR_JSON = "application/fhir+json"
_ACCEPTABLE = frozenset({"*/*", "application/*", "application/fhir+json", "application/json", "application/json+fhir"})
_FORMATS = frozenset(
    {
        "json",
        "application/json",
        "application/fhir+json",
        "application/json+fhir",
        # a "+" left unencoded in a query string arrives as a space
        "application/fhir json",
        "application/json fhir",
    }
)
MAX_FORM_BYTES = 64 * 1024


class FHIRResponse(Response):
    media_type = FHIR_JSON + "; charset=utf-8"

    def __init__(
        self,
        content: Mapping[str, Any],
        status_code: int = 200,
        *,
        pretty: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.pretty = pretty
        super().__init__(content, status_code=status_code, headers=headers)

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_INDENT_2 if self.pretty else 0)


def negotiate(request: Request, versions: frozenset[str] = frozenset({"4.0", "4.0.1"})) -> None:
    """406 unless the client takes JSON (R4 http.html#mime-type) of this base's FHIR version (``versions``: the
    fhirVersion MIME parameter values it answers, http.html#version-parameter); ``_format`` overrides Accept."""
    if b"_format" in request.scope["query_string"]:  # parsed only when it may be there (most requests: never)
        fmt = request.query_params.get("_format")
        if fmt is not None:
            if fmt not in _FORMATS:
                raise NotAcceptable(f"_format={fmt[:60]} is not served; this server speaks FHIR JSON only")
            return
    if not takes_fhir_json(request.headers.get("accept"), versions):
        raise NotAcceptable(f"this base answers application/fhir+json (FHIR {min(versions)}) only")


def takes_fhir_json(accept: str | None, versions: frozenset[str]) -> bool:
    """Whether an ``Accept`` value admits FHIR JSON of one of ``versions`` (no header: yes)."""
    # Clients send a handful of distinct short Accept values: those are decided once (bounded in count and size).
    return _takes_fhir_json(accept, versions) if accept is None or len(accept) <= 256 else _decide(accept, versions)


@functools.lru_cache(maxsize=256)
def _takes_fhir_json(accept: str | None, versions: frozenset[str]) -> bool:
    return _decide(accept, versions)


def _decide(accept: str | None, versions: frozenset[str]) -> bool:
    if not accept or not accept.strip():
        return True
    for media_range in accept.split(","):
        kind, *params = (p.strip() for p in media_range.split(";"))
        opts = dict(p.partition("=")[::2] for p in params)
        if kind.lower() not in _ACCEPTABLE or opts.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        version = opts.get("fhirVersion", opts.get("fhirversion"))
        if version is not None and version.strip('"') not in versions:
            continue
        return True
    return False


def prefers_strict(request: Request) -> bool:
    return strict_preferred(request.headers.get("prefer"))


def strict_preferred(prefer: str | None) -> bool:
    """``Prefer: handling=strict`` (R4 search.html#errors)."""
    if not prefer:
        return False
    return any(p.strip().lower() == "handling=strict" for p in prefer.replace(";", ",").split(","))


def cache_directives(request: Request) -> CacheDirectives:
    headers = request.headers
    return parse_cache_control(headers.get("cache-control"), headers.get("pragma"))


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


async def search_items(request: Request) -> list[tuple[str, str]]:
    """GET query parameters, or for POST [base]/[type]/_search the form body plus the URL's (http.html#search)."""
    items = list(request.query_params.multi_items())
    if request.method == "POST":
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
        body = await _bounded_body(request, MAX_FORM_BYTES, "the search form is too large")
        try:
            items += parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise InvalidRequest("the search form is not UTF-8") from None
    return items


def fhir_base(request: Request, public_url: str | None, version: str = "R4") -> str:
    """Absolute base for fullUrl and links: the configured public URL, else the one the client used."""
    if public_url:
        return f"{public_url.rstrip('/')}/fhir/{version}"
    return f"{client_root(request.scope)}/fhir/{version}"


def client_root(scope: Mapping[str, Any]) -> str:
    """The root URL the client used: Starlette's ``Request.base_url`` without its slash."""
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    server = scope.get("server")
    return _root(
        scope.get("scheme", "http"),
        None if server is None else tuple(server),  # a list from some servers: a key must be hashable
        scope.get("app_root_path", scope.get("root_path", "")),
        host,
    )


# The root depends on these four values only, so it is worked out once per combination (a few per deployment; a
# bounded number are remembered, since Host is the client's to choose).
@functools.lru_cache(maxsize=256)
def _root(scheme: str, server: tuple[str, int] | None, root_path: str, host: bytes | None) -> str:
    scope = {
        "type": "http",
        "scheme": scheme,
        "server": server,
        "root_path": root_path,
        "path": "/",
        "query_string": b"",
        "headers": [] if host is None else [(b"host", host)],
    }
    return str(Request(scope).base_url).rstrip("/")


def raw_query(scope: Mapping[str, Any]) -> str | None:
    """The query string as the client sent it, as Starlette's ``request.url.query`` gives it (UTF-8; cut at a
    ``#``); None for one that is not UTF-8."""
    try:
        query: str = scope["query_string"].decode()
    except UnicodeDecodeError:
        return None
    return query.partition("#")[0]


MAX_JSON_BYTES = 4 * 1024 * 1024


async def json_body(request: Request) -> Any:
    """A FHIR JSON request body (http.html#mime-type), bounded in size; 415 / 400 otherwise."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/fhir+json", "application/json", "application/json+fhir"):
        raise UnsupportedMediaType("send the resource as application/fhir+json")
    body = await _bounded_body(request, MAX_JSON_BYTES, "the request body is too large")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body is not JSON") from None


async def _bounded_body(request: Request, limit: int, message: str) -> bytes:
    """The body, read in chunks and refused (400) as soon as it passes ``limit`` bytes."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidRequest(message)
    return body
