"""CORS for the FHIR API and the WADO-RS gateway (issue 12 rule 6; Fetch standard §3.2 "CORS protocol").

Pure ASGI (``BaseHTTPMiddleware`` breaks streaming and disconnect handling, shared/docs/wado-gateway.md §5): it
answers preflights itself and adds headers to the ``http.response.start`` message of everything else, never
touching a body, so streamed WADO-RS answers pass through untouched.

- Preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an allowed origin: 204 with the
  methods we serve and the request headers listed by name. ``Access-Control-Allow-Headers: *`` would not do: in
  the Fetch standard the wildcard never covers ``Authorization``, and OHIF sends ``Accept`` with parameters that
  make it non-safelisted ("Request header field accept is not allowed").
- Actual responses, error answers included (a browser shows a CORS error instead of a 401 otherwise), get
  ``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers`` (Location, ETag, Retry-After,
  WWW-Authenticate, ... are invisible to a script unless exposed).
- ``*`` allows every origin with a literal ``*``; named origins are echoed, with ``Vary: Origin`` on every answer
  under these paths so a shared cache never serves one origin's answer to another. No
  ``Access-Control-Allow-Credentials``, ever: bearer tokens travel in a header a script sets, not in cookies.
- An origin not allowed gets no CORS header at all; its preflight is answered 403 (an OperationOutcome, like
  every 4xx here) rather than passed to the router, which would say 405 for a method no FHIR client sent.

A 500 from Starlette's outermost ServerErrorMiddleware bypasses this middleware; the service answers none by
design (every fault is an app.errors OperationOutcome).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import outcome

ALLOW_METHODS: Final = "GET, POST, OPTIONS"
ALLOW_HEADERS: Final = "authorization, accept, content-type, prefer, if-none-exist, cache-control, x-request-id"
EXPOSE_HEADERS: Final = (
    "content-type, content-length, location, etag, retry-after, www-authenticate, x-request-id, "
    "content-location, warning"
)
MAX_AGE: Final = "600"  # seconds a browser may reuse a preflight answer (Chromium caps it at 7200)
PATHS: Final = ("/fhir/", "/dicomweb/")


def normalize_origin(origin: str) -> str:
    """The serialization browsers send in ``Origin`` (RFC 6454 §6.2): lower-case scheme and host, no default port."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class CorsMiddleware:
    def __init__(self, app: ASGIApp, origins: Iterable[str], paths: tuple[str, ...] = PATHS) -> None:
        self.app = app
        self.origins = frozenset(normalize_origin(o) for o in origins)
        self.any = "*" in self.origins
        self.paths = paths

    def _covered(self, path: str) -> bool:
        return any(path.startswith(p) or path == p.rstrip("/") for p in self.paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._covered(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in (b"origin", b"access-control-request-method")}
        origin = headers.get(b"origin", b"").decode("latin-1")
        allowed = bool(origin) and (self.any or origin in self.origins)
        if scope["method"] == "OPTIONS" and origin and b"access-control-request-method" in headers:
            await self._preflight(send, origin if allowed else None)
            return
        cors = self._headers(origin if allowed else None)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _merge(list(message.get("headers", [])), cors)
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        out = [] if self.any else [(b"vary", b"Origin")]
        if origin is not None:
            out.append((b"access-control-allow-origin", b"*" if self.any else origin.encode("latin-1")))
            out.append((b"access-control-expose-headers", EXPOSE_HEADERS.encode()))
        return out

    async def _preflight(self, send: Send, origin: str | None) -> None:
        if origin is None:
            body = orjson.dumps(outcome("forbidden", "this origin is not allowed (cors_origins)"))
            headers = [(b"content-type", b"application/fhir+json"), *self._headers(None)]
            await _answer(send, 403, headers, body)
            return
        headers = [
            *self._headers(origin),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
        ]
        await _answer(send, 204, headers, b"")


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())] if body else headers
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _merge(headers: list[tuple[bytes, bytes]], cors: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Add the CORS headers, replacing any the app set, and join ``Vary`` with an existing one."""
    names = {k for k, _ in cors}
    vary = [v for k, v in headers if k.lower() == b"vary"]
    out = [(k, v) for k, v in headers if k.lower() not in names]
    for k, v in cors:
        if k == b"vary" and vary:
            out = [(hk, hv) for hk, hv in out if hk.lower() != b"vary"]
            joined = b", ".join(vary)
            out.append((b"vary", joined if b"origin" in joined.lower() else joined + b", " + v))
        else:
            out.append((k, v))
    return out
