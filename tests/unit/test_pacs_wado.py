"""The gateway's upstream on its own (app.pacs.wado.WadoUpstream), against an httpx.MockTransport PACS: what is sent
(path checks, credentials, Accept-Encoding identity), when it retries (before the headers only), how a PACS status
becomes the client's, and that the upstream answer is closed however its body ends. Over real sockets and a real
Orthanc: tests/api/test_wado_api.py and tests/integration/test_wado_gateway.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from app.errors import (
    InvalidRequest,
    NotAcceptable,
    NotFound,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.pacs.breaker import CircuitBreaker, CircuitOpen
from app.pacs.wado import WadoUpstream, refusal
from tests.unit.helpers import Stream

BASE = "http://facade:s3cret@pacs.internal:8042/dicom-web"
PATH = "studies/1.2.3/series/4.5/instances/6.7"
TIMEOUT = httpx.Timeout(5.0, connect=1.0)


def upstream(handler: Callable[[httpx.Request], httpx.Response], **kw) -> tuple[WadoUpstream, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async def no_sleep(_: float) -> None:
        return None

    return WadoUpstream(httpx.MockTransport(record), BASE, TIMEOUT, sleep=no_sleep, jitter=lambda: 0.0, **kw), seen


def run(coro):
    return asyncio.run(coro)


def test_the_request_carries_the_facades_credentials_the_accept_and_identity_encoding():
    wado, seen = upstream(lambda r: httpx.Response(200, content=b"x"))
    answer = run(wado.open(PATH, accept="image/jpeg", query="quality=80"))
    assert answer.status == 200
    (request,) = seen
    assert str(request.url) == f"http://pacs.internal:8042/dicom-web/{PATH}?quality=80"  # no user:password in it
    assert request.headers["authorization"].startswith("Basic ")
    assert request.headers["accept"] == "image/jpeg"
    # wado-gateway.md §5: Orthanc gzips when asked; the gateway rewrites bodies, so it must read them decoded.
    assert request.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "path",
    [
        "studies/1.2.3/../../tools/find",
        "studies/1.2.3/series/4.5?x=1",
        "studies/1.2.3/series/%2e%2e",
        "patients/1",
        "studies/1.2.3//series",
        "/studies/1.2.3",
    ],
)
def test_a_path_outside_a_study_never_reaches_the_pacs(path: str):
    wado, seen = upstream(lambda r: httpx.Response(200))
    with pytest.raises(ValueError):
        run(wado.open(path, accept=None))
    assert seen == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, NotFound),
        (410, NotFound),
        (406, NotAcceptable),
        (400, InvalidRequest),
        (503, UpstreamUnavailable),
        (429, UpstreamUnavailable),  # throttled: 503 + Retry-After to the client
        (504, UpstreamTimeout),
        (401, UpstreamBadResponse),  # the facade's own PACS credentials: our fault, not the client's
        (500, UpstreamBadResponse),
    ],
)
def test_a_pacs_status_becomes_the_clients_without_the_pacs_body(status: int, error: type[Exception]):
    exc = refusal(status)
    assert isinstance(exc, error)
    assert "pacs.internal" not in str(exc) and "8042" not in str(exc)


def test_a_404_is_not_retried_and_is_raised_by_raise_for_status():
    wado, seen = upstream(lambda r: httpx.Response(404, json={"HttpError": "Not Found", "Details": BASE}), retries=3)
    answer = run(wado.open(PATH, accept=None))
    assert len(seen) == 1 and answer.status == 404
    with pytest.raises(NotFound) as caught:
        run(answer.raise_for_status())
    assert "pacs.internal" not in str(caught.value)


def test_a_503_before_the_headers_is_retried_then_answered():
    statuses = iter([503, 502, 200])
    wado, seen = upstream(lambda r: httpx.Response(next(statuses), content=b"ok"), retries=3)
    answer = run(wado.open(PATH, accept=None))
    assert (answer.status, len(seen), wado.stats.retries["wado"]) == (200, 3, 2)


def test_retries_end_with_the_last_answer_whose_status_the_gateway_maps():
    wado, seen = upstream(lambda r: httpx.Response(503), retries=2)
    answer = run(wado.open(PATH, accept=None))
    assert (answer.status, len(seen)) == (503, 3)
    with pytest.raises(UpstreamUnavailable):
        run(answer.raise_for_status())


def test_an_unreachable_pacs_is_unavailable_and_names_no_host():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused to pacs.internal:8042", request=request)

    wado, seen = upstream(refuse, retries=1)
    with pytest.raises(UpstreamUnavailable) as caught:
        run(wado.open(PATH, accept=None))
    assert len(seen) == 2  # a connection that never opened sent nothing: safe to try again
    assert "pacs.internal" not in str(caught.value)


def test_a_stale_keep_alive_connection_is_resent_once_at_once():
    calls = iter([httpx.RemoteProtocolError("closed"), None])

    def flaky(request: httpx.Request) -> httpx.Response:
        fault = next(calls)
        if fault is not None:
            raise fault
        return httpx.Response(200)

    wado, seen = upstream(flaky)  # retries=0: the resend is not a retry
    assert run(wado.open(PATH, accept=None)).status == 200 and len(seen) == 2


def test_an_open_circuit_refuses_without_calling_the_pacs():
    breaker = CircuitBreaker(failure_threshold=1, reset_after=60.0)
    wado, seen = upstream(lambda r: httpx.Response(503), breaker=breaker)
    run(wado.open(PATH, accept=None))  # one 5xx opens it
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        run(wado.open(PATH, accept=None))
    assert len(seen) == 1


def test_chunks_stream_the_body_and_close_the_upstream_answer():
    body = Stream([b"ab", b"", b"cd"])
    wado, _ = upstream(lambda r: httpx.Response(200, stream=body))

    async def read() -> list[bytes]:
        answer = await wado.open(PATH, accept=None)
        return [c async for c in answer.chunks()]

    assert run(read()) == [b"ab", b"cd"] and body.closed


@pytest.mark.parametrize(
    ("fault", "error"),
    [(httpx.ReadTimeout("stalled"), UpstreamTimeout), (httpx.ReadError("reset"), UpstreamUnavailable)],
)
def test_a_body_that_breaks_off_raises_and_is_closed(fault: Exception, error: type[Exception]):
    body = Stream([b"part one"], fail=fault)
    wado, _ = upstream(lambda r: httpx.Response(200, stream=body))

    async def read() -> list[bytes]:
        answer = await wado.open(PATH, accept=None)
        return [c async for c in answer.chunks()]

    with pytest.raises(error):
        run(read())
    assert body.closed


def test_a_consumer_that_stops_early_closes_the_upstream_answer():
    body = Stream([b"a", b"b", b"c"])
    wado, _ = upstream(lambda r: httpx.Response(200, stream=body))

    async def first() -> bytes:
        answer = await wado.open(PATH, accept=None)
        chunks = answer.chunks()
        chunk = await chunks.__anext__()
        await chunks.aclose()  # the client hung up
        return chunk

    assert run(first()) == b"a" and body.closed


def test_read_is_bounded_and_closes():
    body = Stream([b"x" * 600, b"y" * 600])
    wado, _ = upstream(lambda r: httpx.Response(200, stream=body))

    async def read() -> bytes:
        answer = await wado.open(PATH, accept=None)
        return await answer.read(1000)

    with pytest.raises(UpstreamBadResponse):
        run(read())
    assert body.closed


def test_the_time_budget_bounds_the_wait_for_headers():
    clock = [100.0]

    def slow(request: httpx.Request) -> httpx.Response:
        clock[0] += 30.0  # the PACS took longer than the whole budget
        raise httpx.ReadTimeout("slow", request=request)

    wado, seen = upstream(slow, retries=3, retry_timeouts=True, budget=20.0, clock=lambda: clock[0])
    with pytest.raises(UpstreamTimeout):
        run(wado.open(PATH, accept=None, own_budget=True))
    assert len(seen) == 1  # no retry once the budget is spent
