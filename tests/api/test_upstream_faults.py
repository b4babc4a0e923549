"""PACS faults against the resilience layer: retries with backoff, the circuit breaker, stale-if-error.

The PACS is a respx router in an httpx.MockTransport; backoff sleeps go to a recorder (no real waiting), jitter is
fixed, and the breaker and the cache run on fake clocks. Each test drives its own event loop (asyncio.run), except
the ones through the whole app (TestClient).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cachetools import TTLCache

import app.main
from app.dicom.dicom_json import STUDY_UID, text
from app.dicom.qido import QidoQuery
from app.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from app.pacs import cache as cache_module
from app.pacs.breaker import CircuitBreaker, CircuitOpen
from app.pacs.cache import CachedQido
from app.pacs.dicomweb_write import DicomWebStore
from app.pacs.upstream import DicomWebUpstream, QidoResult, UpstreamStats
from tests.api.conftest import PACS, study_row

TIMEOUT = httpx.Timeout(5.0, connect=2.0)
QUERY = QidoQuery.build("studies", {"PatientID": "MRN1"}, limit=21)
STUDIES = f"{PACS}/studies"
STUDY, SERIES = "2.25.100", "2.25.100.9"
METADATA_URL = f"{PACS}/studies/{STUDY}/series/{SERIES}/metadata"
DATA = Path(__file__).parent.parent / "data"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(using=None, assert_all_called=False)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def upstream(router: respx.MockRouter, sleeps: Sleeps, **options: Any) -> DicomWebUpstream:
    options = {"retries": 2, "backoff": 0.1, "sleep": sleeps, "jitter": lambda: 0.5} | options
    return DicomWebUpstream(httpx.MockTransport(router.handler), PACS, TIMEOUT, **options)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def ok(rows: list[dict[str, Any]] | None = None) -> httpx.Response:
    return httpx.Response(200, json=rows if rows is not None else [study_row("2.25.1")])


class TestRetries:
    def test_connect_errors_are_retried_with_exponential_backoff(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(
            side_effect=[httpx.ConnectError("refused"), httpx.ConnectError("refused"), ok()]
        )
        up = upstream(router, sleeps)
        result = run(up.search(QUERY))
        assert text(result.rows[0], STUDY_UID) == "2.25.1"
        assert route.call_count == 3 and up.requests == 3
        # equal jitter, jitter() = 0.5: 3/4 of 0.1 * 2**(n-1)
        assert sleeps.delays == pytest.approx([0.075, 0.15])
        assert up.stats.retries["qido"] == 2
        assert up.stats.calls == {("qido", "unavailable"): 2, ("qido", "ok"): 1}

    @pytest.mark.parametrize("status", [502, 503, 504])
    def test_gateway_and_overload_answers_are_retried(self, router, sleeps, status):
        route = router.get(url__startswith=STUDIES).mock(side_effect=[httpx.Response(status), ok()])
        up = upstream(router, sleeps)
        assert len(run(up.search(QUERY)).rows) == 1
        assert route.call_count == 2 and len(sleeps.delays) == 1
        assert up.stats.calls[("qido", "server_error")] == 1

    @pytest.mark.parametrize("fault", [httpx.ConnectTimeout("slow connect"), httpx.PoolTimeout("pool")])
    def test_timeouts_before_sending_are_retried_then_504(self, router, sleeps, fault):
        route = router.get(url__startswith=STUDIES).mock(side_effect=fault)
        up = upstream(router, sleeps)
        with pytest.raises(UpstreamTimeout):
            run(up.search(QUERY))
        assert route.call_count == 3
        assert sleeps.delays == pytest.approx([0.075, 0.15])
        assert up.stats.calls == {("qido", "timeout"): 3}

    def test_a_read_timeout_is_a_504_without_retry_by_default(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ReadTimeout("slow answer"))
        up = upstream(router, sleeps)
        with pytest.raises(UpstreamTimeout):
            run(up.search(QUERY))
        assert route.call_count == 1 and sleeps.delays == []
        assert up.stats.calls == {("qido", "timeout"): 1}

    def test_read_timeouts_are_retried_when_asked(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ReadTimeout("slow answer"))
        up = upstream(router, sleeps, retry_timeouts=True)
        with pytest.raises(UpstreamTimeout):
            run(up.search(QUERY))
        assert route.call_count == 3 and sleeps.delays == pytest.approx([0.075, 0.15])

    def test_retries_exhausted_on_503_is_a_502(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(return_value=httpx.Response(503))
        with pytest.raises(UpstreamBadResponse, match="HTTP 503"):
            run(upstream(router, sleeps).search(QUERY))
        assert route.call_count == 3

    @pytest.mark.parametrize("status", [400, 401, 404, 500])
    def test_other_statuses_are_not_retried(self, router, sleeps, status):
        route = router.get(url__startswith=STUDIES).mock(return_value=httpx.Response(status))
        with pytest.raises(UpstreamBadResponse):
            run(upstream(router, sleeps).search(QUERY))
        assert route.call_count == 1 and sleeps.delays == []

    def test_garbage_is_not_retried(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(return_value=httpx.Response(200, text="<html>"))
        with pytest.raises(UpstreamBadResponse):
            run(upstream(router, sleeps).search(QUERY))
        assert route.call_count == 1

    def test_a_stale_keep_alive_is_resent_at_once_without_backoff(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(side_effect=[httpx.RemoteProtocolError("closed"), ok()])
        up = upstream(router, sleeps)
        run(up.search(QUERY))
        assert route.call_count == 2 and sleeps.delays == []
        assert up.stats.calls == {("qido", "connection_closed"): 1, ("qido", "ok"): 1}
        assert up.stats.retries["qido"] == 0

    def test_a_connection_closed_twice_is_then_retried_with_backoff(self, router, sleeps):
        closed = httpx.RemoteProtocolError("closed")
        route = router.get(url__startswith=STUDIES).mock(side_effect=[closed, closed, ok()])
        run(upstream(router, sleeps).search(QUERY))
        assert route.call_count == 3 and len(sleeps.delays) == 1

    def test_no_retries_by_default(self, router, sleeps):
        route = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ConnectError("refused"))
        up = DicomWebUpstream(httpx.MockTransport(router.handler), PACS, TIMEOUT, sleep=sleeps)
        with pytest.raises(UpstreamUnavailable):
            run(up.search(QUERY))
        assert route.call_count == 1 and sleeps.delays == []

    @pytest.mark.parametrize(("jitter", "expected"), [(0.0, [0.05, 0.1, 0.2]), (0.999999, [0.1, 0.2, 0.4])])
    def test_jitter_stays_between_half_and_all_of_the_backoff(self, router, sleeps, jitter, expected):
        up = upstream(router, sleeps, retries=3, jitter=lambda: jitter)
        assert [up._sender.delay(n) for n in (1, 2, 3)] == pytest.approx(expected, rel=1e-5)

    def test_real_sleep_and_jitter(self, router):
        route = router.get(url__startswith=STUDIES).mock(side_effect=[httpx.ConnectError("refused"), ok()])
        up = DicomWebUpstream(httpx.MockTransport(router.handler), PACS, TIMEOUT, retries=1, backoff=0.05)
        started = time.perf_counter()
        run(up.search(QUERY))
        assert 0.025 <= time.perf_counter() - started < 1
        assert route.call_count == 2

    def test_latency_and_the_on_call_hook(self, router, sleeps):
        seen: list[tuple[str, str, float]] = []
        stats = UpstreamStats(on_call=lambda kind, outcome, seconds: seen.append((kind, outcome, seconds)))
        router.get(url__startswith=STUDIES).mock(side_effect=[httpx.Response(503), ok()])
        up = upstream(router, sleeps, stats=stats)
        run(up.search(QUERY))
        assert up.stats is stats
        assert [(k, o) for k, o, _ in seen] == [("qido", "server_error"), ("qido", "ok")]
        assert all(0 <= s < 1 for _, _, s in seen)
        assert stats.latency_count["qido"] == 2 and stats.latency_sum["qido"] == pytest.approx(sum(s for *_, s in seen))


class TestWriteSide:
    def store(self, router, sleeps, **options: Any) -> DicomWebStore:
        options = {"retries": 3, "backoff": 0.1, "sleep": sleeps, "jitter": lambda: 0.5} | options
        return DicomWebStore(httpx.MockTransport(router.handler), PACS, TIMEOUT, **options)

    @pytest.mark.parametrize(
        "fault", [httpx.Response(503), httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ReadError("x")]
    )
    def test_stow_post_is_never_retried(self, router, sleeps, fault):
        route = router.post(STUDIES).mock(side_effect=[fault, httpx.Response(200, json={})])
        store = self.store(router, sleeps)
        with pytest.raises((UpstreamBadResponse, UpstreamUnavailable, UpstreamTimeout)):
            run(store.store([b"part"]))
        assert route.call_count == 1 and store.requests == 1 and sleeps.delays == []

    def test_metadata_get_is_retried(self, router, sleeps):
        route = router.get(METADATA_URL).mock(
            side_effect=[httpx.ConnectError("refused"), httpx.Response(504), httpx.Response(200, json=[])]
        )
        store = self.store(router, sleeps)
        assert run(store.series_metadata(STUDY, SERIES)) == []
        assert route.call_count == 3 and len(sleeps.delays) == 2
        assert store.stats.retries["metadata"] == 2

    def test_one_breaker_per_pacs_shared_by_search_and_store(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=2, reset_after=30, clock=clock)
        stats = UpstreamStats()
        qido = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ConnectError("refused"))
        stow = router.post(STUDIES).mock(return_value=httpx.Response(200, json={}))
        up = upstream(router, sleeps, breaker=breaker, retries=0, stats=stats)
        store = self.store(router, sleeps, breaker=breaker, stats=stats)
        for _ in range(2):
            with pytest.raises(UpstreamUnavailable):
                run(up.search(QUERY))
        assert breaker.state == "open"
        with pytest.raises(CircuitOpen):
            run(store.store([b"part"]))
        with pytest.raises(CircuitOpen):
            run(store.series_metadata(STUDY, SERIES))
        assert qido.call_count == 2 and stow.call_count == 0
        assert stats.calls[("stow", "rejected")] == 1 and stats.calls[("metadata", "rejected")] == 1


class TestBreaker:
    def test_opens_after_n_failures_then_fails_fast_without_sending(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=3, reset_after=30, clock=clock)
        route = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ConnectError("refused"))
        up = upstream(router, sleeps, breaker=breaker, retries=0)
        for _ in range(3):
            with pytest.raises(UpstreamUnavailable) as info:
                run(up.search(QUERY))
            assert not isinstance(info.value, CircuitOpen)
        assert breaker.state == "open" and route.call_count == 3
        clock.now += 12.5
        started = time.perf_counter()
        with pytest.raises(CircuitOpen) as info:
            run(up.search(QUERY))
        assert time.perf_counter() - started < 0.05
        assert info.value.status == 503 and info.value.headers == {"Retry-After": "18"}
        assert route.call_count == 3
        assert up.stats.calls[("qido", "rejected")] == 1

    def test_retries_stop_when_the_breaker_opens(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=2, reset_after=30, clock=clock)
        route = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ConnectError("refused"))
        up = upstream(router, sleeps, breaker=breaker, retries=5)
        with pytest.raises(UpstreamUnavailable) as info:
            run(up.search(QUERY))
        assert not isinstance(info.value, CircuitOpen)  # the real fault, not the breaker's
        assert route.call_count == 2 and len(sleeps.delays) == 1
        assert breaker.state == "open"

    def test_4xx_are_answers_not_failures(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=2, reset_after=30, clock=clock)
        router.get(url__startswith=STUDIES).mock(return_value=httpx.Response(400))
        up = upstream(router, sleeps, breaker=breaker)
        for _ in range(5):
            with pytest.raises(UpstreamBadResponse):
                run(up.search(QUERY))
        assert breaker.state == "closed" and breaker.successes == 5

    def test_5xx_are_failures(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=2, reset_after=30, clock=clock)
        router.get(url__startswith=STUDIES).mock(return_value=httpx.Response(500))
        up = upstream(router, sleeps, breaker=breaker)
        for _ in range(2):
            with pytest.raises(UpstreamBadResponse):
                run(up.search(QUERY))
        assert breaker.state == "open"

    def test_a_stale_keep_alive_is_not_a_failure(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30, clock=clock)
        router.get(url__startswith=STUDIES).mock(side_effect=[httpx.RemoteProtocolError("closed"), ok()])
        run(upstream(router, sleeps, breaker=breaker).search(QUERY))
        assert breaker.state == "closed" and breaker.failures == 0

    def test_half_open_probe_success_closes(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30, clock=clock)
        route = router.get(url__startswith=STUDIES).mock(side_effect=[httpx.ConnectError("refused"), ok(), ok()])
        up = upstream(router, sleeps, breaker=breaker, retries=0)
        with pytest.raises(UpstreamUnavailable):
            run(up.search(QUERY))
        clock.now += 30
        assert breaker.state == "half_open"
        run(up.search(QUERY))  # the probe
        assert breaker.state == "closed"
        run(up.search(QUERY))
        assert route.call_count == 3

    def test_half_open_lets_one_probe_through_and_refuses_the_others(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30, clock=clock)
        gate = asyncio.Event()
        calls = 0

        async def pacs(request: httpx.Request) -> httpx.Response:
            nonlocal calls
            calls += 1
            await gate.wait()
            return ok()

        up = DicomWebUpstream(httpx.MockTransport(pacs), PACS, TIMEOUT, breaker=breaker, retries=2, sleep=sleeps)
        breaker.record_failure()
        clock.now += 30

        async def go():
            probe = asyncio.create_task(up.search(QUERY))
            await asyncio.sleep(0)
            others = await asyncio.gather(*(up.search(QUERY) for _ in range(3)), return_exceptions=True)
            gate.set()
            return await probe, others

        probe, others = run(go())
        assert len(probe.rows) == 1 and calls == 1
        assert [type(o) for o in others] == [CircuitOpen] * 3
        assert all(o.headers == {"Retry-After": "1"} for o in others)
        assert breaker.state == "closed"

    def test_half_open_probe_failure_reopens(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30, clock=clock)
        route = router.get(url__startswith=STUDIES).mock(side_effect=httpx.ReadTimeout("slow"))
        up = upstream(router, sleeps, breaker=breaker, retries=2)
        with pytest.raises(UpstreamTimeout):
            run(up.search(QUERY))
        clock.now += 30
        with pytest.raises(UpstreamTimeout):
            run(up.search(QUERY))  # the probe: no retries while the breaker is not closed
        assert route.call_count == 2 and breaker.state == "open" and breaker.opens == 2
        with pytest.raises(CircuitOpen):
            run(up.search(QUERY))

    def test_a_cancelled_probe_gives_its_slot_back(self, router, sleeps, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30, clock=clock)
        gate = asyncio.Event()

        async def pacs(request: httpx.Request) -> httpx.Response:
            await gate.wait()
            return ok()

        up = DicomWebUpstream(httpx.MockTransport(pacs), PACS, TIMEOUT, breaker=breaker)
        breaker.record_failure()
        clock.now += 30

        async def go():
            probe = asyncio.create_task(up.search(QUERY))
            await asyncio.sleep(0)
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            gate.set()
            return await up.search(QUERY)

        assert len(run(go()).rows) == 1
        assert breaker.state == "closed"


class TestThroughTheApp:
    """The breaker's 503 as the client sees it: an OperationOutcome with Retry-After, in milliseconds."""

    def test_breaker_opens_and_the_facade_answers_503_fast(self, pacs, make_client, monkeypatch, clock):
        breaker = CircuitBreaker(failure_threshold=3, reset_after=30, clock=clock)
        real = DicomWebUpstream

        def with_breaker(*args: Any, **kwargs: Any) -> DicomWebUpstream:
            return real(*args, **(kwargs | {"breaker": breaker, "retries": 0}))

        monkeypatch.setattr(app.main, "DicomWebUpstream", with_breaker)
        route = pacs.get(url__startswith=STUDIES).mock(side_effect=httpx.ConnectError("refused"))
        client = make_client(cache_ttl=0.0)
        for _ in range(3):
            r = client.get("/fhir/R4/ImagingStudy?modality=CT")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert breaker.state == "open" and route.call_count == 3
        clock.now += 0.4
        started = time.perf_counter()
        r = client.get("/fhir/R4/ImagingStudy?modality=CT")
        elapsed = time.perf_counter() - started
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        issue = r.json()["issue"][0]
        assert issue["code"] == "transient" and "circuit breaker" in issue["diagnostics"]
        assert "pacs.test" not in r.text
        assert route.call_count == 3
        assert elapsed < 0.1
        clock.now += 30
        route.mock(side_effect=None, return_value=httpx.Response(200, json=[]))
        assert client.get("/fhir/R4/ImagingStudy?modality=CT").status_code == 200  # the probe
        assert breaker.state == "closed"


class TestStaleIfError:
    @pytest.fixture
    def cache_clock(self, monkeypatch) -> Clock:
        clock = Clock()
        monkeypatch.setattr(cache_module, "TTLCache", functools.partial(TTLCache, timer=clock))
        return clock

    def cached(self, router, sleeps, *, stale_ttl: float = 600, **options: Any) -> CachedQido:
        return CachedQido(upstream(router, sleeps, **options), ttl=60, max_bytes=10**6, stale_ttl=stale_ttl)

    def test_the_old_answer_is_served_marked_stale_when_the_pacs_fails(self, router, sleeps, cache_clock):
        body = json.loads((DATA / "qido_study_ct.json").read_text())
        route = router.get(url__startswith=STUDIES).mock(
            side_effect=[httpx.Response(200, json=body), httpx.Response(503), httpx.Response(503), httpx.Response(503)]
        )
        cached = self.cached(router, sleeps, retries=0)

        async def go():
            first = await cached.search(QUERY)
            cache_clock.now += 61  # past the ttl, within the stale window
            stale = await cached.search(QUERY, stale_if_error=600)
            with pytest.raises(UpstreamBadResponse):
                await cached.search(QUERY)  # not asked for: the error
            return first, stale

        first, stale = run(go())
        assert first.stale is False
        assert stale.stale is True and stale.rows == first.rows and stale.nbytes == first.nbytes
        assert route.call_count == 3 and cached.stale_served == 1

    def test_the_stale_window_ends(self, router, sleeps, cache_clock):
        router.get(url__startswith=STUDIES).mock(side_effect=[ok(), httpx.Response(503)])
        cached = self.cached(router, sleeps, retries=0)

        async def go():
            await cached.search(QUERY)
            cache_clock.now += 661
            await cached.search(QUERY, stale_if_error=600)

        with pytest.raises(UpstreamBadResponse):
            run(go())

    def test_without_stale_ttl_there_is_nothing_to_fall_back_to(self, router, sleeps, cache_clock):
        router.get(url__startswith=STUDIES).mock(side_effect=[ok(), httpx.ConnectError("refused")])
        cached = self.cached(router, sleeps, stale_ttl=0, retries=0)

        async def go():
            await cached.search(QUERY)
            cache_clock.now += 61
            await cached.search(QUERY, stale_if_error=600)

        with pytest.raises(UpstreamUnavailable):
            run(go())

    def test_an_open_breaker_is_answered_from_the_stale_store(self, router, sleeps, cache_clock, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30, clock=clock)
        route = router.get(url__startswith=STUDIES).mock(side_effect=[ok(), httpx.ConnectError("refused")])
        cached = self.cached(router, sleeps, breaker=breaker, retries=0)

        async def go():
            await cached.search(QUERY)
            cache_clock.now += 61
            first = await cached.search(QUERY, stale_if_error=600)  # the PACS is down: breaker opens
            second = await cached.search(QUERY, stale_if_error=600)  # breaker open: nothing sent
            return first, second

        first, second = run(go())
        assert first.stale and second.stale
        assert route.call_count == 2 and breaker.state == "open"

    def test_fresh_bypasses_the_entry_but_falls_back_to_it_on_error(self, router, sleeps, cache_clock):
        route = router.get(url__startswith=STUDIES).mock(side_effect=[ok(), httpx.ReadTimeout("slow")])
        cached = self.cached(router, sleeps, retries=0)

        async def go():
            first = await cached.search(QUERY)
            again = await cached.search(QUERY, fresh=True, stale_if_error=600)
            return first, again

        first, again = run(go())
        assert route.call_count == 2
        assert again.stale and again.rows == first.rows

    def test_fresh_without_stale_if_error_gets_the_error(self, router, sleeps, cache_clock):
        router.get(url__startswith=STUDIES).mock(side_effect=[ok(), httpx.ReadTimeout("slow")])
        cached = self.cached(router, sleeps, retries=0)

        async def go():
            await cached.search(QUERY)
            await cached.search(QUERY, fresh=True)

        with pytest.raises(UpstreamTimeout):
            run(go())

    def test_errors_are_never_cached_and_a_recovery_is_fresh_again(self, router, sleeps, cache_clock):
        route = router.get(url__startswith=STUDIES).mock(
            side_effect=[ok([study_row("2.25.1")]), httpx.Response(503), ok([study_row("2.25.2")])]
        )
        cached = self.cached(router, sleeps, retries=0)

        async def go():
            await cached.search(QUERY)
            cache_clock.now += 61
            stale = await cached.search(QUERY, stale_if_error=600)
            recovered = await cached.search(QUERY, stale_if_error=600)
            hit = await cached.search(QUERY, stale_if_error=600)
            return stale, recovered, hit

        stale, recovered, hit = run(go())
        assert stale.stale and text(stale.rows[0], STUDY_UID) == "2.25.1"
        assert not recovered.stale and text(recovered.rows[0], STUDY_UID) == "2.25.2"
        assert hit is recovered  # the recovery replaced the kept answer, and is a plain hit now
        assert route.call_count == 3

    def test_concurrent_waiters_of_a_failed_fetch_all_get_the_stale_answer(self, router, sleeps, cache_clock):
        router.get(url__startswith=STUDIES).mock(side_effect=[ok(), httpx.Response(503)])
        cached = self.cached(router, sleeps, retries=0)

        async def go():
            await cached.search(QUERY)
            cache_clock.now += 61
            return await asyncio.gather(*(cached.search(QUERY, stale_if_error=600) for _ in range(4)))

        results = run(go())
        assert all(r.stale for r in results)
        assert cached.misses == 2 and cached.stale_served == 4

    def test_the_stale_flag_defaults_to_false(self):
        assert QidoResult([], 0).stale is False
        assert QidoResult([], 0) == QidoResult([], 0, stale=False)

    def test_backend_and_memory_arguments_do_not_mix(self, router, sleeps):
        up = upstream(router, sleeps)
        backend = cache_module.MemoryCache(ttl=1, max_bytes=10)
        with pytest.raises(TypeError):
            CachedQido(up, ttl=60, backend=backend)
