"""app.pacs.wado.WadoUpstream without a PACS: an httpx.MockTransport stands in for it and records what it is sent.

What these tests hold the gateway's upstream to (module docstring of app.pacs.wado, shared/docs/wado-gateway.md §5):
the credentials it sends (configured or the caller's forwarded token), which paths may reach the PACS, the time
budget that bounds the wait for the *headers* only, retries that happen before the headers only and never after a
read timeout unless asked, the circuit breaker (a 4xx is an answer; a cancelled probe gives its slot back), the
error mapping with no PACS URL in any message, and upstream answers that are closed when they are thrown away.
The neighbouring tests/unit/test_pacs_wado.py covers the basic request shape, 404/503 retries and body closing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.errors import (
    FacadeError,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    UnsupportedMediaType,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.pacs.breaker import CircuitBreaker, CircuitOpen
from app.pacs.request_scope import PACS_TOKEN, UPSTREAM_BUDGET, UpstreamBudget
from app.pacs.wado import WadoUpstream, refusal

HOST = "pacs.internal"
BASE = f"http://facade:s3cret@{HOST}:8042/dicom-web"
PLAIN = f"http://{HOST}:8042/dicom-web"
PATH = "studies/1.2.3/series/4.5/instances/6.7"
TIMEOUT = httpx.Timeout(30.0, connect=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stream(httpx.AsyncByteStream):
    """An upstream body in chunks; ``on_chunk`` runs before each one (to move a fake clock); counts its closes."""

    def __init__(self, chunks: list[bytes], on_chunk: Callable[[], None] = lambda: None) -> None:
        self.chunks, self.on_chunk, self.closes = chunks, on_chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.on_chunk()
            yield chunk

    async def aclose(self) -> None:
        self.closes += 1


def upstream(handler: Callable[[httpx.Request], Any], **options: Any) -> tuple[WadoUpstream, list[httpx.Request]]:
    """A WadoUpstream whose PACS is ``handler`` (sync or async); backoff sleeps cost nothing."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> Any:
        seen.append(request)
        return handler(request)

    async def no_sleep(_: float) -> None:
        return None

    defaults: dict[str, Any] = {"sleep": no_sleep, "jitter": lambda: 0.0, "base_url": BASE}
    options = defaults | options
    base = options.pop("base_url")
    return WadoUpstream(httpx.MockTransport(record), base, TIMEOUT, **options), seen


def leaks(text: str) -> bool:
    return HOST in text or "8042" in text or "s3cret" in text or "facade:" in text


class TestRequest:
    def test_a_forwarded_caller_token_replaces_the_configured_credentials(self):
        # pacs_auth = "forward" (app.pacs.upstream.with_credentials): the caller's own token goes to the PACS,
        # never the facade's Basic credentials alongside it.
        wado, seen = upstream(lambda r: httpx.Response(200))

        async def forwarded() -> None:
            PACS_TOKEN.set("caller-token")
            await wado.open(PATH, accept=None)

        asyncio.run(forwarded())
        asyncio.run(wado.open(PATH, accept=None))  # outside that request: the configured Basic credentials
        assert seen[0].headers.get_list("authorization") == ["Bearer caller-token"]
        assert seen[1].headers["authorization"].startswith("Basic ")
        # No Accept is made up when the client sent none: the PACS's default applies, as for a direct client.
        assert "accept" not in seen[0].headers and seen[0].headers["accept-encoding"] == "identity"

    def test_a_configured_bearer_token_is_sent_instead_of_the_urls_userinfo(self):
        wado, seen = upstream(lambda r: httpx.Response(200), token="svc-token")
        asyncio.run(wado.open(PATH, accept="application/dicom+json"))
        (request,) = seen
        assert request.headers.get_list("authorization") == ["Bearer svc-token"]
        assert str(request.url) == f"{PLAIN}/{PATH}"  # the userinfo never goes on the wire as part of the URL

    @pytest.mark.parametrize(
        "path",
        [
            "studies/1.2.3",
            "studies/1.2.3/metadata",
            "studies/1.2.3/series",
            "studies/1.2.3/series/4.5/instances",
            "studies/1.2.3/series/4.5/rendered",
            "studies/1.2.3/series/4.5/instances/6.7/frames/1,2,10",
            "studies/1.2.3/series/4.5/instances/6.7/frames/3/rendered",
            "studies/1.2.3/series/4.5/instances/6.7/bulk/7fe00010",
            "studies/1.2.3/series/4.5/instances/6.7/bulk/00540016/0/00181072",
        ],
    )
    def test_every_route_the_gateway_serves_reaches_the_pacs_unchanged(self, path: str):
        # The last check before the network must not refuse what app.dicom.wado_rewrite.WadoPath builds.
        wado, seen = upstream(lambda r: httpx.Response(200))
        asyncio.run(wado.open(path, accept=None))
        assert [r.url.raw_path.decode() for r in seen] == [f"/dicom-web/{path}"]

    @pytest.mark.parametrize("path", ["studies/.", "studies/1.2.3/series/."])
    def test_a_dot_segment_never_reaches_the_pacs(self, path: str):
        wado, seen = upstream(lambda r: httpx.Response(200))
        with pytest.raises(ValueError):
            asyncio.run(wado.open(path, accept=None))
        assert seen == []


class TestBudget:
    def test_the_budget_bounds_the_wait_for_headers_not_the_length_of_the_body(self):
        # Module docstring: a 2,000-instance study takes longer than any budget; what must not hang is each read.
        clock = Clock()

        def tick() -> None:
            clock.now += 15.0  # each chunk arrives 15 s after the last: 60 s in all, three times the budget

        body = Stream([b"a", b"b", b"c", b"d"], tick)
        wado, seen = upstream(lambda r: httpx.Response(200, stream=body), budget=20.0, clock=clock)

        async def read() -> bytes:
            answer = await wado.open(PATH, accept=None)
            clock.now += 5.0  # headers took 5 s
            return b"".join([c async for c in answer.chunks()])

        assert asyncio.run(read()) == b"abcd"
        # The request itself: connect/write/pool cut to the budget left, the read timeout per read as configured
        # (§5: "a read timeout per chunk, not per response").
        assert seen[0].extensions["timeout"] == {"connect": 2.0, "read": 30.0, "write": 20.0, "pool": 20.0}

    def test_a_spent_request_budget_refuses_at_once_and_own_budget_starts_a_fresh_one(self):
        # The later requests of a long retrieve pass own_budget=True (app.usecases.retrieve): the incoming
        # request's budget only bounds the wait for the first headers.
        clock = Clock()
        wado, seen = upstream(lambda r: httpx.Response(200), budget=20.0, clock=clock)

        async def in_request(own_budget: bool) -> int:
            scope = UpstreamBudget()
            scope.deadline = clock.now - 1.0  # its first call started more than 20 s ago
            UPSTREAM_BUDGET.set(scope)
            return (await wado.open(PATH, accept=None, own_budget=own_budget)).status

        with pytest.raises(UpstreamTimeout) as caught:
            asyncio.run(in_request(own_budget=False))
        assert seen == [] and wado.stats.calls["wado", "budget_exhausted"] == 1
        assert not leaks(str(caught.value))
        assert asyncio.run(in_request(own_budget=True)) == 200 and len(seen) == 1

    def test_a_pacs_that_never_sends_headers_is_cut_at_the_budget(self):
        # httpx's timeouts are per network operation; the whole wait for the headers is bounded as well.
        async def hang(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(30)
            return httpx.Response(200)  # pragma: no cover

        wado, seen = upstream(hang, budget=0.05, retries=2)
        with pytest.raises(UpstreamTimeout):
            asyncio.run(wado.open(PATH, accept=None))
        assert len(seen) == 1 and wado.stats.calls["wado", "timeout"] == 1


class TestRetries:
    @pytest.mark.parametrize(
        ("fault", "error", "sent"),
        [
            # Nothing reached the PACS: tried again (retries=1).
            (httpx.ConnectError(f"cannot connect to {HOST}:8042"), UpstreamUnavailable, 2),
            (httpx.ConnectTimeout(f"connect to {HOST}:8042 timed out"), UpstreamTimeout, 2),
            # The PACS had the request and did not answer in time: not retried unless retry_timeouts.
            (httpx.ReadTimeout(f"read from {HOST}:8042 timed out"), UpstreamTimeout, 1),
            # A closed connection: one immediate resend (stale keep-alive), then the retry does the same.
            (httpx.RemoteProtocolError(f"{HOST} closed the connection"), UpstreamUnavailable, 4),
        ],
    )
    def test_a_transport_fault_before_the_headers(self, fault: Exception, error: type[Exception], sent: int):
        def fail(request: httpx.Request) -> httpx.Response:
            raise fault

        wado, seen = upstream(fail, retries=1)
        with pytest.raises(error) as caught:
            asyncio.run(wado.open(PATH, accept=None))
        assert len(seen) == sent
        assert not leaks(str(caught.value))  # no message names the PACS URL

    def test_an_answer_thrown_away_for_a_retry_is_closed(self):
        # A 503 that is retried must give its pooled connection back before the next attempt.
        bodies = [Stream([b"busy"]), Stream([b"busy"]), Stream([b"ok"])]
        answers = iter(zip([503, 502, 200], bodies, strict=True))

        def pacs(request: httpx.Request) -> httpx.Response:
            status, body = next(answers)
            return httpx.Response(status, stream=body)

        wado, _ = upstream(pacs, retries=2)
        answer = asyncio.run(wado.open(PATH, accept=None))
        assert answer.status == 200
        assert [b.closes for b in bodies] == [1, 1, 0]  # the kept answer stays open for its reader

    def test_no_retry_once_the_breaker_has_opened(self):
        # app.pacs.upstream: retries happen "never while the breaker is not closed".
        breaker = CircuitBreaker(failure_threshold=1, reset_after=60.0)
        wado, seen = upstream(lambda r: httpx.Response(503), retries=3, breaker=breaker)
        answer = asyncio.run(wado.open(PATH, accept=None))
        assert answer.status == 503 and len(seen) == 1 and breaker.state == "open"
        with pytest.raises(UpstreamUnavailable):
            asyncio.run(answer.raise_for_status())


class TestBreaker:
    def test_a_4xx_is_an_answer_and_resets_the_failure_count(self):
        # The PACS that says 404 is up: a client asking for deleted studies must not open the circuit.
        breaker = CircuitBreaker(failure_threshold=2, reset_after=60.0)
        statuses = iter([503, 404, 503, 200])
        wado, seen = upstream(lambda r: httpx.Response(next(statuses)), breaker=breaker)
        assert [asyncio.run(wado.open(PATH, accept=None)).status for _ in range(4)] == [503, 404, 503, 200]
        assert breaker.state == "closed" and breaker.opens == 0 and len(seen) == 4

    def test_an_open_circuit_refuses_with_retry_after_and_counts_the_refusal(self):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30.0)
        wado, seen = upstream(lambda r: httpx.Response(504), breaker=breaker)
        asyncio.run(wado.open(PATH, accept=None))
        with pytest.raises(CircuitOpen) as caught:
            asyncio.run(wado.open(PATH, accept=None))
        assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "30"
        assert len(seen) == 1 and wado.stats.calls["wado", "rejected"] == 1

    def test_a_cancelled_probe_gives_its_slot_back(self):
        # A client that hangs up while the half-open probe waits proves nothing: the next call may probe at once,
        # instead of every call failing fast until the lost probe times out.
        clock = Clock()
        breaker = CircuitBreaker(failure_threshold=1, reset_after=10.0, clock=clock)
        answers = iter(["fail", "hang", "ok"])

        async def pacs(request: httpx.Request) -> httpx.Response:
            what = next(answers)
            if what == "hang":
                await asyncio.sleep(30)
            return httpx.Response(503 if what == "fail" else 200)

        wado, seen = upstream(pacs, breaker=breaker)

        async def scenario() -> int:
            await wado.open(PATH, accept=None)  # 503: open
            clock.now += 11.0  # half-open
            probe = asyncio.create_task(wado.open(PATH, accept=None))
            while len(seen) < 2:
                await asyncio.sleep(0)
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            return (await wado.open(PATH, accept=None)).status  # the new probe

        assert asyncio.run(scenario()) == 200
        assert breaker.state == "closed" and len(seen) == 3


class TestRefusal:
    def test_every_pacs_error_status_maps_to_a_facade_error_without_the_pacs_url(self):
        # PS3.18 §8.6.1.1: 406 passes through; 5xx are ours (502/503/504); 401/403 are the facade's own
        # credentials, a fault of this server (502), never a 401 that would make the client drop its token.
        special = {
            400: InvalidRequest,
            401: UpstreamBadResponse,
            403: UpstreamBadResponse,
            404: NotFound,
            406: NotAcceptable,
            410: NotFound,
            415: UnsupportedMediaType,
            500: UpstreamBadResponse,
            502: UpstreamBadResponse,
            503: UpstreamUnavailable,
            504: UpstreamTimeout,
        }
        for status in range(400, 600):
            exc = refusal(status)
            assert isinstance(exc, FacadeError) and exc.status in (400, 404, 406, 415, 502, 503, 504), status
            assert not leaks(str(exc)), status
            if status in special:
                assert type(exc) is special[status], status

    def test_raise_for_status_does_not_pass_on_the_pacs_error_body(self):
        body = f'{{"HttpError": "Forbidden", "Details": "{BASE}/studies/1.2.3"}}'.encode()
        wado, _ = upstream(lambda r: httpx.Response(403, content=body))
        answer = asyncio.run(wado.open(PATH, accept=None))
        with pytest.raises(UpstreamBadResponse) as caught:
            asyncio.run(answer.raise_for_status())
        assert caught.value.status == 502 and not leaks(str(caught.value))
