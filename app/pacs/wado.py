"""WADO-RS from the PACS as streams: the gateway's upstream (issue 12; shared/docs/wado-gateway.md §3, §5).

    wado = WadoUpstream(pool, "http://user:pw@pacs:8042/dicom-web", timeout, breaker=breaker, budget=20.0)
    answer = await wado.open("studies/1.2.3/series/4.5", accept='multipart/related; type="application/dicom"')
    await answer.raise_for_status()       # closed, then 400/404/406/415 as sent, other failures 502/503/504 (refusal)
    async for chunk in answer.chunks():   # raw bytes as they arrive; the upstream response is closed at the end,
        ...                               # on an error, or when the consumer stops (aclose)

Same pooled transport, credentials (:func:`app.pacs.upstream.basic_auth` / :func:`~.with_credentials`), circuit
breaker, counters and per-request time budget as every other PACS call (:class:`app.pacs.upstream.ResilientSender`),
but the budget bounds only the time to the response *headers*: a 2,000-instance study takes longer than any budget,
and what must not hang is each read, which httpx's per-operation read timeout bounds (§5: "a read timeout per
chunk, not per response"). Retries (connect errors, 502/503/504, a stale keep-alive connection) happen before the
headers only, so they never duplicate bytes a client already received.

``Accept-Encoding: identity`` is sent: Orthanc gzips single-part answers and metadata when asked (§3), and the
gateway rewrites those bodies, so the raw bytes read here are always the decoded ones and no upstream
``Content-Encoding`` or stale ``Content-Length`` can reach the client (§5, gzip pitfall).

Paths come only from :class:`app.dicom.wado_rewrite.WadoPath` (checked UIDs, frame numbers and tag paths) and
are checked again here, so a caller's value can neither add segments (``..``, ``/``) nor a query to the PACS
request, and nothing outside ``studies/{s}/...`` is reachable. No message names the PACS URL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Final

import httpx

from ..dicom.qido import QidoQuery
from ..errors import (
    FacadeError,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    UnsupportedMediaType,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .breaker import CircuitOpen
from .upstream import _NOT_SENT_TIMEOUTS, RETRY_STATUSES, DicomWebClient, _within, with_credentials

__all__ = ["WadoAnswer", "WadoUpstream", "refusal"]

logger = logging.getLogger(__name__)

# What a path to the PACS may look like: app.dicom.wado_rewrite.WadoPath.path, built from validated UIDs, frame
# numbers and tag paths. Checked again here, the last step before the network: no "..", no "%", no query, and every
# UID or number starts with a digit (a "." segment would be removed by httpx: "studies/." would search every study).
_PATH: Final = re.compile(
    r"studies/[0-9][0-9.]{0,63}(/[0-9A-Za-z,]+(/[0-9][0-9.,]{0,63})?)*(/[0-9a-f]{8}(/[0-9]{1,6}/[0-9a-f]{8})*)?"
)

# A gateway QIDO-RS query (app.dicom.qido.QidoQuery.path): a level, then keys of letters and digits whose values hold
# only characters that are safe raw in a query and need no decoding (no "%", "&", "=", "#", space).
_QIDO: Final = re.compile(
    r"(studies|series|instances)(\?[0-9A-Za-z]+=[A-Za-z0-9\-._~^':/*?,]*(&[0-9A-Za-z]+=[A-Za-z0-9\-._~^':/*?,]*)*)?"
)


def refusal(status: int) -> FacadeError:
    """The error for a PACS answer that is not a success. A 4xx passes through with its status (PS3.18 §8.6.1.1: 406
    for a transfer syntax the PACS will not send), 5xx are our 502/503/504; the PACS's body is never passed on (it
    may hold its URL)."""
    if status in (404, 410):
        return NotFound("the PACS has no such study, series, instance, frame or bulk data")
    if status == 406:
        return NotAcceptable("the PACS cannot send the media type or transfer syntax asked for (Accept)")
    if status == 415:
        return UnsupportedMediaType("the PACS does not support this media type")
    if status == 400:
        return InvalidRequest("the PACS refused the request as malformed (check the Accept header and parameters)")
    if status == 503:
        return UpstreamUnavailable("the PACS is unavailable")
    if status == 429:  # the PACS throttles us, not this client: a 503 with Retry-After asks it to come back later
        return UpstreamUnavailable("the PACS is busy")
    if status == 504:
        return UpstreamTimeout("the PACS timed out")
    # 401/403: the facade's own credentials for the PACS are wrong, a fault of this server, not of the client.
    return UpstreamBadResponse(f"the PACS answered HTTP {status} to a retrieval")


class WadoAnswer:
    """An open upstream response: status and the headers the gateway may use; the body not read yet.

    Read it once, with :meth:`chunks` (streamed) or :meth:`read` (bounded, for JSON the gateway rewrites); either
    closes the upstream response when done, failed or abandoned. :meth:`aclose` is idempotent and safe in any
    ``finally``.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.content_type: str | None = response.headers.get("content-type")
        # A length is only meaningful for the raw body, which identity encoding makes the decoded one.
        self.content_length: str | None = response.headers.get("content-length")
        self._closed = False

    async def raise_for_status(self) -> None:
        """A refusal for an answer that is not a success, closed first: its body is never passed on, and its pooled
        connection must go back (an unread answer keeps it checked out, and the pool runs dry)."""
        if self.status not in (200, 206):
            await self.aclose()
            raise refusal(self.status)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw body, chunk by chunk as the transport delivers it (backpressure: nothing is read ahead)."""
        try:
            async for chunk in self._response.stream:  # type: ignore[union-attr]
                if chunk:
                    yield chunk
        except httpx.TimeoutException as exc:
            logger.warning("a WADO-RS answer stalled mid-body")
            raise UpstreamTimeout("the PACS stopped sending") from exc
        except httpx.TransportError as exc:
            logger.warning("a WADO-RS answer broke off mid-body")
            raise UpstreamUnavailable("the PACS closed the connection") from exc
        finally:
            await self.aclose()

    async def read(self, limit: int) -> bytes:
        """The whole body, refused (502) past ``limit`` bytes."""
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
            if len(out) > limit:
                await self.aclose()
                raise UpstreamBadResponse("the PACS answer is too large to rewrite")
        return bytes(out)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._response.aclose()


class WadoUpstream(DicomWebClient):
    """WADO-RS GETs over the PACS's pooled transport, answered as :class:`WadoAnswer` (module docstring).

    **Parameters:** as :class:`~app.pacs.upstream.DicomWebClient` (transport, base_url, timeout, breaker, retries,
    backoff, budget, retry_timeouts, stats, sleep, jitter, clock, token).
    """

    async def open(self, path: str, *, accept: str | None, query: str = "", own_budget: bool = False) -> WadoAnswer:
        """GET ``{base}/{path}[?{query}]`` (``path`` from :func:`wado_path`, ``query`` already encoded); the answer
        once its headers are in, whatever its status (:meth:`WadoAnswer.raise_for_status`). Transport faults and
        a spent budget raise UpstreamTimeout / UpstreamUnavailable, an open circuit :class:`CircuitOpen`.
        ``own_budget``: this call's budget starts now, instead of being the incoming request's (the later requests
        of a long retrieve, app.usecases.retrieve)."""
        if not _PATH.fullmatch(path) or ".." in path:
            raise ValueError("not a WADO-RS path")
        url = f"{self._base}/{path}" + (f"?{query}" if query else "")
        return await self._get(url, accept, own_budget=own_budget)

    async def search(self, query: QidoQuery) -> WadoAnswer:
        """GET ``{base}/{query.path}`` as DICOM JSON, the gateway's QIDO-RS (app.usecases.gateway_search): the
        rows whole, unlike the FHIR side's cached QIDO port, which keeps only the attributes it maps. The query
        string is the one :class:`~app.dicom.qido.QidoQuery` built from parsed values, checked again here."""
        if not _QIDO.fullmatch(query.path):
            raise ValueError("not a QIDO-RS query")
        return await self._get(f"{self._base}/{query.path}", "application/dicom+json", own_budget=False)

    async def _get(self, url: str, accept: str | None, *, own_budget: bool) -> WadoAnswer:
        asked = (("Accept", accept),) if accept else ()
        headers = with_credentials((*asked, ("Accept-Encoding", "identity")), self._auth)
        sender = self._sender
        breaker = sender.breaker
        clock = sender._clock
        deadline = clock() + sender.budget if own_budget else sender._deadline()
        retry = 0
        while True:
            if deadline - clock() <= 0:
                sender.stats.record("wado", "budget_exhausted", 0.0)
                raise UpstreamTimeout("the PACS did not answer the retrieval within the request's time budget")
            if breaker is not None:
                try:
                    breaker.acquire()
                except CircuitOpen:
                    sender.stats.record("wado", "rejected", 0.0)
                    raise
            error: UpstreamError | None = None
            retryable = True
            try:
                response = await self._headers(url, headers, deadline)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                error = exc
                if isinstance(exc, UpstreamTimeout) and not isinstance(exc.__cause__, _NOT_SENT_TIMEOUTS):
                    retryable = sender.retry_timeouts
                if breaker is not None:
                    breaker.record_failure()
            except BaseException:
                if breaker is not None:
                    breaker.release()
                raise
            else:
                if breaker is not None:
                    breaker.record_failure() if response.status_code >= 500 else breaker.record_success()
                if response.status_code not in RETRY_STATUSES:
                    return WadoAnswer(response)
            delay: float | None = None
            if retryable and retry < sender.retries and (breaker is None or breaker.state == "closed"):
                delay = sender.delay(retry + 1)
                if deadline - clock() < delay + sender.min_attempt:
                    delay = None
            if delay is None:
                if error is not None:
                    raise error
                return WadoAnswer(response)
            if error is None:
                await response.aclose()
            retry += 1
            sender.stats.retries["wado"] += 1
            await sender._sleep(delay)

    async def _headers(self, url: str, headers: list[tuple[str, str]], deadline: float) -> httpx.Response:
        """One attempt up to the response headers, plus one immediate resend after a stale keep-alive connection
        (Orthanc closes idle ones after 1 s). The body's reads keep the per-read timeouts of the request."""
        resend = True
        stats = self._sender.stats
        while True:
            left = deadline - self._sender._clock()
            if left <= 0:
                stats.record("wado", "budget_exhausted", 0.0)
                raise UpstreamTimeout("the PACS did not answer the retrieval within the request's time budget")
            timeout = _within(self._timeout, left)
            timeout["read"] = self._timeout.get("read")  # per read, for the whole body (module docstring)
            request = httpx.Request("GET", url, headers=headers, extensions={"timeout": timeout})
            self._sender.requests += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout(left):
                    response = await self._sender.transport.handle_async_request(request)
            except TimeoutError as exc:
                stats.record("wado", "timeout", time.perf_counter() - started)
                raise UpstreamTimeout("the PACS did not answer the retrieval within the request's time budget") from exc
            except httpx.TimeoutException as exc:
                stats.record("wado", "timeout", time.perf_counter() - started)
                raise UpstreamTimeout("the PACS did not answer the retrieval in time") from exc
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if resend:
                    resend = False
                    stats.record("wado", "connection_closed", time.perf_counter() - started)
                    continue
                stats.record("wado", "unavailable", time.perf_counter() - started)
                raise UpstreamUnavailable("the PACS closed the connection") from exc
            except httpx.TransportError as exc:
                stats.record("wado", "unavailable", time.perf_counter() - started)
                raise UpstreamUnavailable("the PACS is unreachable") from exc
            status = response.status_code
            outcome = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
            stats.record("wado", outcome, time.perf_counter() - started)
            return response
