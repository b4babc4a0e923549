"""Warm answers without the framework: a repeated ImagingStudy GET answered from the finished-answer cache.

A warm request spent most of its time in the framework around the cache lookup, not in it (issue 19: 33-51 % of a
bare ASGI app): a Request object and its parsed headers and query, routing by regular expression through every
route, the exception middleware, a Response object. This pure ASGI middleware sits in front of all of that and
answers what the handlers (app.http.endpoints ``search`` and ``read``) would answer from the same cache
(app.http.answers), with the same bytes, audit fields and route label.

It answers only a clean hit and hands everything else on, untouched, to the application, which then decides and
answers (errors included) as if this layer were not there: another route or method, a token that
:meth:`~app.security.auth.Authorizer.known` cannot vouch for without I/O (new, expired, bad), a grant that does
not allow the interaction, ``_format``, an Accept it would refuse, ``Cache-Control: no-cache``, a read with query
parameters, a miss. So it can never answer differently from the handlers: it replays only bytes they made for a
request with the same key, after the same authorization decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..mapping.versions import FhirVersion
from ..security.auth import Authorizer
from ..security.context import OPEN, Forbidden
from ..security.scopes import Interaction
from ..usecases.service import Facade
from .answers import AnswerCache, answer_key, cache_partition
from .cache_control import parse_cache_control
from .fhir_http import FHIR_JSON, client_root, raw_query, strict_preferred, takes_fhir_json

__all__ = ["WARM_TYPES", "WarmAnswers", "WarmRoute"]

# The resource types whose answers app.http.answers keeps (app.http.endpoints._answer_key).
WARM_TYPES = frozenset({"ImagingStudy"})

_CONTENT_TYPE = (b"content-type", f"{FHIR_JSON}; charset=utf-8".encode())
_HEADERS = frozenset({b"authorization", b"accept", b"cache-control", b"pragma", b"prefer", b"host"})


@dataclass(frozen=True, slots=True)
class WarmRoute:
    """A route whose answers are cached: the Route the router would match (for the metrics and audit label), its
    FHIR version and resource type, and ``search`` (``GET [base]/Type``) or ``read`` (``GET [base]/Type/{id}``)."""

    route: Route
    version: FhirVersion
    resource_type: str
    interaction: Interaction


class WarmAnswers:
    """``searches``: exact paths of search routes; ``reads``: path prefixes (``/fhir/R4/ImagingStudy/``) of read
    routes. ``public_url``: the configured base, if any (else the client's, as the handlers use)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        searches: dict[str, WarmRoute],
        reads: dict[str, WarmRoute],
        public_url: str | None,
        forward_token: bool,
    ) -> None:
        self.app = app
        self._searches = searches
        self._reads = reads
        self._public_url = public_url.rstrip("/") if public_url else None
        self._forward = forward_token
        self.served = 0  # answers given here (they count as hits of the answer cache too)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            target = self._searches.get(path)
            rid = None
            if target is None:
                prefix, _, rid = path.rpartition("/")
                target = self._reads.get(prefix + "/")
            if target is not None:
                body = await self._hit(scope, target, rid)
                if body is not None:
                    self.served += 1
                    await _answer(send, body)
                    return
        await self.app(scope, receive, send)

    async def _hit(self, scope: Scope, target: WarmRoute, rid: str | None) -> bytes | None:
        """The cached answer's body (audit fields and route recorded in the scope), or None: hand it on."""
        state = getattr(scope.get("app"), "state", None)
        answers: AnswerCache | None = getattr(state, "answers", None)
        auth: Authorizer | None = getattr(state, "auth", None)
        facade: Facade | None = getattr(state, "facade", None)
        if answers is None or auth is None or facade is None or b"_format" in scope["query_string"]:
            return None
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _HEADERS:
                if name in headers:  # a repeated header: the handlers' reading decides
                    return None
                headers[name] = value.decode("latin-1")
        if not takes_fhir_json(headers.get(b"accept"), target.version.mime_versions):
            return None
        if parse_cache_control(headers.get(b"cache-control"), headers.get(b"pragma")).no_cache:
            return None
        ctx = auth.known(headers.get(b"authorization"))
        if ctx is None:
            return None
        try:
            patient = ctx.require(target.resource_type, target.interaction)
        except Forbidden:
            return None
        generation = await facade.qido.current_generation()  # the one I/O here, with a shared (Redis) cache
        if generation is None:
            return None
        root = self._public_url or client_root(scope)
        base = f"{root}/fhir/{target.version.name}"
        partition = cache_partition(ctx, forward=self._forward, generation=generation)
        if target.interaction == "search":
            query = raw_query(scope)
            if query is None:
                return None
            strict = strict_preferred(headers.get(b"prefer"))
            key = answer_key(partition, patient, target.version.name, target.resource_type, "GET", query, base, strict)
            hit = None if key is None else answers.lookup((key, ctx.scopes.allows("Patient", "read")))
        else:
            if scope["query_string"] or not rid:  # _pretty and friends: the handler's reading decides
                return None
            key = answer_key(partition, patient, target.version.name, target.resource_type, "read", rid, base, False)
            hit = None if key is None else answers.find(key)
        if hit is None:
            return None
        # What the handler and its route would have recorded (app.http.observability reads both).
        scope["route"] = target.route
        if rid is not None:
            scope["path_params"] = {"id": rid}
        audit: dict[str, Any] = scope.setdefault("state", {}).setdefault("audit", {})
        audit.update(who=ctx.subject or ctx.client_id or ("open" if ctx is OPEN else "unknown"))
        audit.update(interaction=target.interaction, type=target.resource_type, **hit.audit)
        return hit.body


async def _answer(send: Send, body: bytes) -> None:
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-length", str(len(body)).encode()), _CONTENT_TYPE],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
