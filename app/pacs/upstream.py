"""The PACS, seen through QIDO-RS: the only module that talks HTTP to it for searches.

httpx errors are translated here, once, into the UpstreamError branch of the error tree (the httpx
``map_httpcore_exceptions`` idea); nothing above this module sees httpx. Messages never contain the PACS URL,
which may carry credentials.

Every request to the PACS (QIDO here, WADO-RS metadata and STOW-RS in :mod:`app.pacs.dicomweb_write`) goes through one
:class:`ResilientSender`, which adds, in this order:

* one time budget per incoming FHIR request (``budget`` seconds from its first upstream call,
  :data:`app.pacs.request_scope.UPSTREAM_BUDGET`) that every call and retry of that request must fit into: each
  attempt's
  timeouts are cut to what is left of it, a retry is made only if the backoff and a minimal attempt still fit, and
  a request whose budget ran out gets :class:`~app.errors.UpstreamTimeout` (504). Without it a hung PACS cost a
  client ``(1 + retries) x read timeout``;
* an optional :class:`~app.pacs.breaker.CircuitBreaker` (one per PACS, shared by every client of it): while open, calls
  fail at once with :class:`~app.pacs.breaker.CircuitOpen` (503, ``Retry-After`` = seconds left) and nothing is sent;
* for idempotent requests only (GET), one immediate resend after a stale keep-alive connection (Orthanc closes idle
  connections after 1 s), which the breaker does not see as a failure;
* for idempotent requests only, up to ``retries`` more attempts after a connect error (a connect or pool timeout
  included: nothing reached the PACS), a closed connection or HTTP 502/503/504, after an exponential backoff with
  jitter — never while the breaker is not closed. A read or write timeout is retried only with
  ``retry_timeouts``: a PACS that accepted the request and did not answer in time is hung or overloaded, and
  does not answer faster the second time;
* counters per request sent (:class:`UpstreamStats`: ``calls[(kind, outcome)]``, latency sums, retries, and an
  optional ``on_call(kind, outcome, seconds)`` hook for Prometheus).

STOW-RS POST is never resent: a POST that failed while reading the answer may have been stored.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

import httpx
import orjson

from ..dicom import gcpause
from ..dicom.dicom_json import Dataset, slim
from ..dicom.qido import QidoQuery
from ..errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .breaker import CircuitBreaker, CircuitOpen
from .request_scope import PACS_TOKEN, UPSTREAM_BUDGET

__all__ = ["DicomWebUpstream", "Qido", "QidoResult", "ResilientSender", "UpstreamStats"]

logger = logging.getLogger(__name__)

# PACS answers worth another attempt of an idempotent request: a gateway or an overloaded server, likely transient.
RETRY_STATUSES = frozenset({502, 503, 504})
# Timeouts before the request reached the PACS: retried like a connect error (a read/write timeout is not, by default).
_NOT_SENT_TIMEOUTS = (httpx.ConnectTimeout, httpx.PoolTimeout)
# The least time worth a retry: Orthanc answers a QIDO query in milliseconds to a few hundred (bench/README.md).
MIN_ATTEMPT = 0.25


@dataclass(frozen=True)
class QidoResult:
    rows: list[Dataset]
    nbytes: int  # size of the response body; the cache bounds itself by this
    stale: bool = False  # served from the cache past its TTL because the PACS failed (stale-if-error)


class Qido(Protocol):
    async def search(self, query: QidoQuery) -> QidoResult: ...


@dataclass
class UpstreamStats:
    """What was sent to the PACS, for metrics; one object may be shared by several clients of the same PACS.

    One entry per HTTP request sent (a retry or a keep-alive resend is another request), plus the calls the breaker
    refused. ``kind``: ``qido``, ``metadata``, ``stow``. ``outcome``: ``ok`` (2xx/3xx), ``client_error`` (4xx),
    ``server_error`` (5xx), ``timeout``, ``unavailable`` (connect error, reset), ``connection_closed`` (a stale
    keep-alive connection, resent at once), ``rejected`` (breaker open: nothing sent, 0 s), ``budget_exhausted``
    (the incoming request's upstream time budget ran out before this request could be sent: nothing sent, 0 s).
    """

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency_sum: dict[str, float] = field(default_factory=dict)  # kind -> seconds, requests actually sent
    latency_count: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)  # kind -> backoff retries (not keep-alive resends)
    on_call: Callable[[str, str, float], None] | None = None

    def record(self, kind: str, outcome: str, seconds: float) -> None:
        self.calls[kind, outcome] += 1
        if outcome not in ("rejected", "budget_exhausted"):
            self.latency_sum[kind] = self.latency_sum.get(kind, 0.0) + seconds
            self.latency_count[kind] += 1
        if self.on_call is not None:
            self.on_call(kind, outcome, seconds)


class ResilientSender:
    """Sends requests straight to one pooled httpx transport, with breaker, retries and counters (module docstring).

    **Parameters:**
    * transport - the pooled transport; tests pass ``httpx.MockTransport``.
    * breaker - the PACS's circuit breaker, shared by every sender of that PACS; None: no breaker.
    * retries - extra attempts of an idempotent request (0: none, the default, as before this option existed).
    * backoff - seconds before the first retry; doubled for each next one, with jitter (half to all of it).
    * budget - seconds an incoming request's upstream calls may take in all, counted from its first one (> 0); a
      call outside any request (no :data:`~app.pacs.request_scope.UPSTREAM_BUDGET` set) gets a budget of its own.
    * archive - which archive this sender reaches (several behind one base, issue 21): each archive's calls of a
      request share their own budget, so a hung archive never spends another's.
    * retry_timeouts - also retry after a read or write timeout (default False; connect timeouts always are).
    * min_attempt - the least time left (after the backoff) worth a retry.
    * stats - where counters go (shared or not); a new one by default.
    * sleep, jitter, clock - injectable for tests (``asyncio.sleep``; ``random.random``, a float in [0, 1);
      ``time.monotonic``, the clock of the budget).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        breaker: CircuitBreaker | None = None,
        retries: int = 0,
        backoff: float = 0.1,
        budget: float = 20.0,
        retry_timeouts: bool = False,
        min_attempt: float = MIN_ATTEMPT,
        stats: UpstreamStats | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        archive: Hashable = None,
    ) -> None:
        if retries < 0 or backoff < 0 or min_attempt < 0:
            raise ValueError("retries, backoff and min_attempt must not be negative")
        if not budget > 0:
            raise ValueError("budget must be positive")
        self.transport = transport
        self.breaker = breaker
        self.retries = retries
        self.backoff = backoff
        self.budget = budget
        self.retry_timeouts = retry_timeouts
        self.min_attempt = min_attempt
        self.stats = stats if stats is not None else UpstreamStats()
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._archive = archive
        self.requests = 0  # HTTP requests sent

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): equal jitter over ``backoff * 2**(retry-1)``,
        so concurrent callers that failed together do not come back together."""
        ceiling = self.backoff * 2.0 ** (retry - 1)
        return ceiling / 2 + self._jitter() * ceiling / 2

    async def send(
        self, kind: str, build: Callable[[], httpx.Request], *, idempotent: bool, what: str
    ) -> tuple[int, bytes]:
        """Status and body of the answer; transport faults raise UpstreamTimeout / UpstreamUnavailable (``what``
        names the request in their message, e.g. "a query"), a refusal of the breaker :class:`CircuitOpen`, a
        budget that ran out UpstreamTimeout. A 5xx is returned (after the retries), for the caller to turn into its
        own error."""
        breaker = self.breaker
        deadline = self._deadline()
        retry = 0
        while True:
            if deadline - self._clock() <= 0:
                self.stats.record(kind, "budget_exhausted", 0.0)
                raise UpstreamTimeout(f"the PACS did not answer {what} within the request's time budget")
            if breaker is not None:
                try:
                    breaker.acquire()
                except CircuitOpen:
                    self.stats.record(kind, "rejected", 0.0)
                    raise
            error: UpstreamError | None = None
            retryable = True
            try:
                status, body = await self._exchange(kind, build, idempotent=idempotent, what=what, deadline=deadline)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                error = exc
                if isinstance(exc, UpstreamTimeout) and not isinstance(exc.__cause__, _NOT_SENT_TIMEOUTS):
                    retryable = self.retry_timeouts  # the PACS had the request and did not answer in time
                if breaker is not None:
                    breaker.record_failure()
            except BaseException:
                if breaker is not None:
                    breaker.release()  # cancelled: neither a success nor a failure
                raise
            else:
                if breaker is not None:
                    if status >= 500:
                        breaker.record_failure()
                    else:
                        breaker.record_success()  # a 4xx is an answer: the PACS is up
                if status not in RETRY_STATUSES:
                    return status, body
            delay: float | None = None
            if idempotent and retryable and retry < self.retries and (breaker is None or breaker.state == "closed"):
                delay = self.delay(retry + 1)
                if deadline - self._clock() < delay + self.min_attempt:
                    delay = None  # the backoff and a minimal attempt do not fit into what is left of the budget
            if delay is None:
                if error is not None:
                    raise error
                return status, body
            retry += 1
            self.stats.retries[kind] += 1
            await self._sleep(delay)

    def _deadline(self) -> float:
        """The incoming request's upstream deadline (shared by all its calls), or this call's own."""
        now = self._clock()
        scope = UPSTREAM_BUDGET.get()
        return scope.start(now, self.budget, self._archive) if scope is not None else now + self.budget

    async def _exchange(
        self, kind: str, build: Callable[[], httpx.Request], *, idempotent: bool, what: str, deadline: float
    ) -> tuple[int, bytes]:
        """One attempt: a request, plus one immediate resend of an idempotent one after a stale keep-alive; each
        within what is left of the budget."""
        resend = idempotent
        while True:
            left = deadline - self._clock()
            if left <= 0:
                self.stats.record(kind, "budget_exhausted", 0.0)
                raise UpstreamTimeout(f"the PACS did not answer {what} within the request's time budget")
            request = build()
            request.extensions = {**request.extensions, "timeout": _within(request.extensions.get("timeout"), left)}
            self.requests += 1
            started = time.perf_counter()
            try:
                # httpx's timeouts are per network operation (a PACS sending a byte every few seconds never trips
                # the read timeout), so the whole exchange is bounded too. Cancelling it is safe: httpcore drops
                # the connection it was using.
                async with asyncio.timeout(left):
                    response = await self.transport.handle_async_request(request)
                    try:
                        body = await response.aread()
                    finally:
                        await response.aclose()
            except TimeoutError as exc:
                self.stats.record(kind, "timeout", time.perf_counter() - started)
                raise UpstreamTimeout(f"the PACS did not answer {what} within the request's time budget") from exc
            except httpx.TimeoutException as exc:
                self.stats.record(kind, "timeout", time.perf_counter() - started)
                raise UpstreamTimeout(f"the PACS did not answer {what} in time") from exc
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # Orthanc closes idle keep-alive connections after 1 s; a request that raced that close fails
                # without reaching it. A GET is idempotent, so one immediate resend on a new connection is safe.
                if resend:
                    resend = False
                    self.stats.record(kind, "connection_closed", time.perf_counter() - started)
                    continue
                self.stats.record(kind, "unavailable", time.perf_counter() - started)
                raise UpstreamUnavailable("the PACS closed the connection") from exc
            except httpx.TransportError as exc:
                self.stats.record(kind, "unavailable", time.perf_counter() - started)
                raise UpstreamUnavailable("the PACS is unreachable") from exc
            status = response.status_code
            outcome = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
            self.stats.record(kind, outcome, time.perf_counter() - started)
            return status, body


def _within(timeout: object, left: float) -> dict[str, float | None]:
    """httpx's per-phase timeouts (connect, read, write, pool) of a request, none longer than ``left`` seconds."""
    phases: dict[str, float | None] = dict(timeout) if isinstance(timeout, dict) else {}
    return {
        phase: left if (value := phases.get(phase)) is None else min(value, left)
        for phase in ("connect", "read", "write", "pool")
    }


def basic_auth(base_url: str, bearer: str | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The base URL without userinfo, and the PACS credentials as a header: ``bearer`` (the pacs_token setting,
    RFC 6750) if given, else ``Authorization: Basic`` from the URL's userinfo (RFC 7617). Credentials are never
    part of a logged URL."""
    url = httpx.URL(base_url)
    auth: tuple[tuple[str, str], ...] = ()
    if url.userinfo:
        user, _, password = url.userinfo.decode().partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        auth = (("Authorization", f"Basic {token}"),)
        url = url.copy_with(username=None, password=None)
    if bearer:
        auth = (("Authorization", f"Bearer {bearer}"),)
    return str(url).rstrip("/"), auth


def with_credentials(headers: tuple[tuple[str, str], ...], auth: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """``headers`` plus the PACS credentials for this request: the caller's own token when the facade forwards
    tokens (pacs_auth = "forward", app.pacs.request_scope), else the configured ones."""
    token = PACS_TOKEN.get()
    return [*headers, *((("Authorization", f"Bearer {token}"),) if token else auth)]


class DicomWebClient:
    """What every DICOMweb client of the facade shares: the base URL and credentials (Basic from the URL, or a
    bearer token; never logged), timeouts, and one :class:`ResilientSender` (breaker, retries, stats).

    **Parameters:** transport, base_url (``user:password@`` becomes HTTP Basic), timeout (connect/read/write/pool),
    and the keyword options of :class:`ResilientSender`: ``breaker`` (None: none), ``retries`` (0: none),
    ``backoff``, ``budget``, ``retry_timeouts``, ``stats``, ``sleep``, ``jitter``, ``clock``; ``token``: a bearer
    token instead of Basic. ``self.stats`` and ``self.breaker`` are there to be read.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        timeout: httpx.Timeout,
        *,
        breaker: CircuitBreaker | None = None,
        retries: int = 0,
        backoff: float = 0.1,
        budget: float = 20.0,
        retry_timeouts: bool = False,
        stats: UpstreamStats | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
        archive: Hashable = None,
    ) -> None:
        self._base, self._auth = basic_auth(base_url, token)
        self._timeout = timeout.as_dict()
        self._sender = ResilientSender(
            transport,
            breaker=breaker,
            retries=retries,
            backoff=backoff,
            budget=budget,
            retry_timeouts=retry_timeouts,
            stats=stats,
            sleep=sleep,
            jitter=jitter,
            clock=clock,
            archive=archive,
        )
        self.breaker = breaker
        self.stats = self._sender.stats

    @property
    def requests(self) -> int:
        """Upstream requests sent; tests and the benchmark read it."""
        return self._sender.requests

    @requests.setter
    def requests(self, value: int) -> None:
        self._sender.requests = value


class DicomWebUpstream(DicomWebClient):
    """QIDO-RS over one pooled httpx transport (created and closed by the app's lifespan).

    Requests go to the transport directly rather than through ``httpx.AsyncClient``: the client layer (base URL
    merging, auth, redirects, cookies, default headers) does nothing for a fixed GET, and skipping it halves the
    facade's CPU per upstream call (measured: 1.2 → 0.6 ms), which is most of its cold-path overhead.
    No ``Accept-Encoding`` is sent: the PACS sits next to the facade, and gzip would only cost CPU at both ends.

    **Parameters:** as :class:`DicomWebClient`.
    """

    # PS3.18 §8.7.3 media type of QIDO-RS answers. Only the one type: Orthanc's DICOMweb plugin 1.7 logs an error
    # for every request whose Accept lists two (bench/README.md, load run); an answer sent as application/json
    # by another server is read all the same.
    HEADERS = (("Accept", "application/dicom+json"),)

    async def search(self, query: QidoQuery) -> QidoResult:
        # The URL is one string so the hand-built query (raw ^ * ?) reaches the PACS unchanged (app.dicom.qido).
        url = f"{self._base}/{query.path}"

        def build() -> httpx.Request:
            headers = with_credentials(self.HEADERS, self._auth)
            return httpx.Request("GET", url, headers=headers, extensions={"timeout": self._timeout})

        status, body = await self._sender.send("qido", build, idempotent=True, what="a query")
        if status == 204:  # PS3.18 §8.3.4.4: no matches
            return QidoResult([], 0)
        if status != 200:
            logger.warning("QIDO %s answered HTTP %s", query.level, status)
            raise UpstreamBadResponse(f"the PACS answered HTTP {status} to a query")
        return QidoResult(_parse(body), len(body))


def _parse(body: bytes) -> list[Dataset]:
    """Tolerant reader: a list of datasets, or one dataset (some servers send that, as dicomweb-client notes)."""
    with gcpause.paused():
        try:
            data = orjson.loads(body) if body.strip() else []
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("the PACS sent a response that is not JSON") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise UpstreamBadResponse("the PACS sent JSON that is not DICOM JSON")
        return [slim(row) for row in data]
