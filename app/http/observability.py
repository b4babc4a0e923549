"""Operations: request ids, Prometheus metrics, JSON logs and the access audit line (no PHI beyond identifiers).

One pure-ASGI middleware (no per-request object churn of BaseHTTPMiddleware) times every request, labels it by
the route *template* (``/fhir/R4/ImagingStudy/{id}``, never the raw path: bounded label cardinality and no ids in
metrics), sets ``X-Request-ID`` and the request's upstream time budget (app.pacs.request_scope), and writes one audit
line per FHIR interaction: who (token subject / client), which patient(s), which resources, outcome. Names and
birth dates never go into logs.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..pacs.request_scope import UPSTREAM_BUDGET, UpstreamBudget

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
audit_log = logging.getLogger("facade.audit")


class Metrics:
    """The app's own registry (not the process-global one), so several apps in one test process do not clash."""

    def __init__(self, *, per_source: bool = False) -> None:
        """``per_source``: several archives (issue 21): upstream requests, latency and breaker carry a ``source``
        label (one PACS keeps the series it always had)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._per_source = per_source
        source = ["source"] if per_source else []
        self.requests = Counter(
            "facade_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "facade_http_request_seconds",
            "HTTP request latency by route template",
            ["route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.upstream = Counter(
            "facade_upstream_requests",
            "Requests to the PACS/EHR by kind and outcome",
            ["kind", "outcome", *source],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "facade_upstream_request_seconds",
            "Latency of requests to the PACS/EHR by kind",
            ["kind", *source],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # The WADO-RS gateway (app.http.wado), by route template: bytes of body sent, and answers by status and
        # whether the body went out whole ("complete") or was cut (client hang-up, PACS failure mid-body).
        self.wado_bytes = Counter("facade_wado_bytes_sent", "WADO-RS body bytes sent", ["route"], registry=r)
        self.wado_responses = Counter(
            "facade_wado_responses", "WADO-RS answers by status and end", ["route", "status", "end"], registry=r
        )
        self.cache_hits = Gauge("facade_cache_hits", "QIDO cache hits since start", registry=r)
        self.cache_misses = Gauge("facade_cache_misses", "QIDO cache misses since start", registry=r)
        self.cache_bytes = Gauge("facade_cache_bytes", "Bytes of QIDO answers held in the cache", registry=r)
        # Finished answers (app.http.answers): a hit there skips the QIDO cache, so its hits are not counted above.
        self.answer_hits = Gauge("facade_answer_cache_hits", "Finished-answer cache hits since start", registry=r)
        self.answer_misses = Gauge("facade_answer_cache_misses", "Finished-answer cache misses since start", registry=r)
        self.answer_bytes = Gauge("facade_answer_cache_bytes", "Bytes of finished answers held", registry=r)
        self.breaker_open = Gauge(
            "facade_upstream_breaker_state",
            "PACS circuit breaker: 0 closed, 1 half-open, 2 open",
            source,
            registry=r,
        )
        # The PACS change feed (app.pacs.changes): polls by what they led to (change, lost, error, idle).
        self.change_feed = Counter(
            "facade_change_feed_polls", "Change-feed polls by archive and outcome", ["source", "outcome"], registry=r
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request. The labelled children are looked up once per (route, method, status): prometheus_client's
        ``labels()`` validates and locks on every call, a cost on every warm answer (issue 19)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            if len(self._request_children) < 1024:  # a client may invent methods: remember a bounded number
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_upstream(self, kind: str, outcome: str, seconds: float, *, source: str | None = None) -> None:
        """``source``: the archive's name, a label only with several (``per_source``)."""
        if self._per_source:
            self.upstream.labels(kind, outcome, source or "").inc()
            self.upstream_latency.labels(kind, source or "").observe(seconds)
        else:
            self.upstream.labels(kind, outcome).inc()
            self.upstream_latency.labels(kind).observe(seconds)

    def bind(self, *, cache: Any = None, answers: Any = None) -> None:
        """Gauges read at scrape time from the objects that own the numbers."""
        if cache is not None:
            _read_counts(cache, self.cache_hits, self.cache_misses, self.cache_bytes)
        if answers is not None:
            _read_counts(answers, self.answer_hits, self.answer_misses, self.answer_bytes)

    def observe_change_feed(self, source: str, outcome: str) -> None:
        self.change_feed.labels(source, outcome).inc()

    def bind_breaker(self, source: str, breaker: Any) -> None:
        """An archive's breaker state, read at scrape time."""
        codes = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
        gauge = self.breaker_open.labels(source) if self._per_source else self.breaker_open
        gauge.set_function(lambda: codes.get(breaker.state, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _read_counts(owner: Any, hits: Gauge, misses: Gauge, size: Gauge) -> None:
    hits.set_function(lambda: float(owner.hits))
    misses.set_function(lambda: float(owner.misses))
    size.set_function(lambda: float(owner.size_bytes))


class RequestIds:
    """Request ids unique across processes and restarts without a random draw per request: 64 random bits per
    process, then a counter (32 hex digits, like the uuid4 ids they replace)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if _SAFE_ID.fullmatch(given) else self._ids.next()  # a client's id only when harmless in logs
        token = REQUEST_ID.set(rid)
        # One upstream time budget per request, shared by all its PACS calls (app.pacs.request_scope,
        # app.pacs.upstream).
        budget = UPSTREAM_BUDGET.set(UpstreamBudget())
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, elapsed)
            if route.startswith("/fhir/") and not route.endswith("/metadata"):
                _audit(scope, route, status, elapsed)
            REQUEST_ID.reset(token)
            UPSTREAM_BUDGET.reset(budget)


def record(request_state: Any, **fields: Any) -> None:
    """What the endpoint knows for the audit line: who, patients, resource ids (see :func:`audit_fields`)."""
    current = getattr(request_state, "audit", None) or {}
    current.update(fields)
    request_state.audit = current


def audit_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Resource ids and patient references of a response body: identifiers only, never names or dates."""
    resources = [e["resource"] for e in body.get("entry", [])] if body.get("resourceType") == "Bundle" else [body]
    ids = [f"{r.get('resourceType')}/{r.get('id')}" for r in resources if r.get("id")]
    patients = sorted(
        {
            ref
            for r in resources
            if isinstance(ref := (r.get("subject") or {}).get("reference"), str) and ref.startswith("Patient/")
        }
        | {f"Patient/{r['id']}" for r in resources if r.get("resourceType") == "Patient" and r.get("id")}
    )
    return {"resources": ids[:100], "n_resources": len(ids), "patients": patients[:20]}


def _audit(scope: Scope, route: str, status: int, elapsed: float) -> None:
    if not audit_log.isEnabledFor(logging.INFO):  # not logged at this level: build nothing (once per request)
        return
    fields = (scope.get("state") or {}).get("audit") or {}
    audit_log.info(
        "access",
        extra={
            "audit": {
                "method": scope["method"],
                "route": route,
                "status": status,
                "ms": round(elapsed * 1000, 1),
                "who": fields.get("who", "anonymous"),
                **{k: v for k, v in fields.items() if k != "who"},
            }
        },
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the audit fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
        }
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            out.update(audit)
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Plain text for people: ``time level logger [request id] message``, then the audit fields as ``key=value``
    (lists and strings with spaces as JSON), so the text audit line says who, what, patients and status too."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            line += "".join(f" {k}={_text_value(v)}" for k, v in audit.items())
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """uvicorn/logging dictConfig: JSON lines (``fmt="json"``) or plain text, one handler on stdout, where container
    platforms and systemd collect a service's log (issue 23; twelve-factor: logs are an event stream on stdout). A
    configuration error that stops start-up is the one line on stderr (app.__main__)."""
    formatter: dict[str, Any] = {
        "()": "app.http.observability.JsonFormatter" if fmt == "json" else "app.http.observability.TextFormatter"
    }
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stdout"}
    if fmt != "json":
        handler["filters"] = ["request_id"]
    loggers: Iterable[str] = ("uvicorn", "uvicorn.error", "app", "facade.audit")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "app.http.observability.RequestIdFilter"}},
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "loggers": {name: {"handlers": ["main"], "level": level.upper(), "propagate": False} for name in loggers},
    }


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True
