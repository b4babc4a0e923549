"""app.pacs.cache.CachedQido: TTL + byte budget, single-flight, errors never cached, fresh=True bypass.

The upstream is a fake with the Qido protocol's one method; time is a fake clock given to cachetools.
Each test drives its own event loop with asyncio.run (pytest-asyncio is not configured).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging

import pytest
from cachetools import TTLCache

from app.dicom.qido import QidoQuery
from app.errors import UpstreamTimeout, UpstreamUnavailable
from app.pacs import cache as cache_module
from app.pacs.cache import CachedQido
from app.pacs.upstream import QidoResult

Q1 = QidoQuery.build("studies", {"PatientID": "MRN0100"}, limit=21)
Q2 = QidoQuery.build("studies", {"PatientID": "MRN0200"}, limit=21)
Q3 = QidoQuery.build("studies", {"PatientID": "MRN0300"}, limit=21)


class FakeUpstream:
    """Answers each call with a new result (so tests can tell answers apart), or raises the queued errors."""

    def __init__(self, *, nbytes: int = 10, errors: list[Exception] | None = None) -> None:
        self.calls: list[QidoQuery] = []
        self.nbytes = nbytes
        self.errors = list(errors or [])
        self.gate: asyncio.Event | None = None  # when set, calls wait for it

    async def search(self, query: QidoQuery) -> QidoResult:
        self.calls.append(query)
        n = len(self.calls)
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return QidoResult([{"call": n}], self.nbytes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(cache_module, "TTLCache", functools.partial(TTLCache, timer=clock))
    return clock


def run(coro):
    return asyncio.run(coro)


class TestHitAndMiss:
    def test_second_identical_query_is_a_hit(self, clock):
        up = FakeUpstream(nbytes=123)
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            return await cached.search(Q1), await cached.search(Q1)

        first, second = run(go())
        assert first == QidoResult([{"call": 1}], 123)
        assert second is first
        assert up.calls == [Q1]
        assert (cached.hits, cached.misses, cached.size_bytes) == (1, 1, 123)

    def test_equal_queries_built_differently_share_an_entry(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)
        a = QidoQuery.build("studies", {"PatientID": "X", "StudyDate": "20200101-"}, limit=3)
        b = QidoQuery.build("studies", {"StudyDate": "20200101-", "PatientID": "X"}, limit=3)

        async def go():
            await cached.search(a)
            await cached.search(b)

        run(go())
        assert len(up.calls) == 1

    def test_different_queries_and_contexts_are_separate_entries(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            return [
                await cached.search(Q1),
                await cached.search(Q2),
                await cached.search(Q1, context="tenant-b"),
                await cached.search(Q1),
                await cached.search(Q1, context="tenant-b"),
            ]

        results = run(go())
        assert [r.rows[0]["call"] for r in results] == [1, 2, 3, 1, 3]
        assert up.calls == [Q1, Q2, Q1]
        assert (cached.hits, cached.misses, cached.size_bytes) == (2, 3, 30)


class TestTtl:
    def test_entries_expire_after_ttl(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def at(t: float) -> int:
            clock.now = t
            return (await cached.search(Q1)).rows[0]["call"]

        async def go():
            return [await at(1000), await at(1059.9), await at(1060.1), await at(1100)]

        assert run(go()) == [1, 1, 2, 2]
        assert len(up.calls) == 2

    def test_real_clock_expiry(self):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=0.05, max_bytes=1000)

        async def go():
            await cached.search(Q1)
            await cached.search(Q1)
            await asyncio.sleep(0.1)
            await cached.search(Q1)

        run(go())
        assert len(up.calls) == 2

    def test_ttl_zero_disables_the_cache(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=0, max_bytes=1000)

        async def go():
            for _ in range(3):
                await cached.search(Q1)

        run(go())
        assert len(up.calls) == 3
        assert cached.size_bytes == 0


class TestErrors:
    @pytest.mark.parametrize("exc", [UpstreamTimeout("slow"), UpstreamUnavailable("down")])
    def test_errors_are_not_cached(self, clock, exc):
        up = FakeUpstream(errors=[exc])
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            with pytest.raises(type(exc)) as info:
                await cached.search(Q1)
            assert info.value is exc
            return await cached.search(Q1), await cached.search(Q1)

        second, third = run(go())
        assert second.rows == [{"call": 2}] and third is second
        assert len(up.calls) == 2
        assert cached.size_bytes == 10

    def test_a_failed_single_flight_reaches_every_waiter_once_and_is_forgotten(self, clock):
        up = FakeUpstream(errors=[UpstreamTimeout("slow")])
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            waiters = [asyncio.create_task(cached.search(Q1)) for _ in range(3)]
            await asyncio.sleep(0)
            up.gate.set()
            outcomes = await asyncio.gather(*waiters, return_exceptions=True)
            up.gate = None
            return outcomes, await cached.search(Q1)

        outcomes, after = run(go())
        assert [type(o) for o in outcomes] == [UpstreamTimeout] * 3
        assert after.rows == [{"call": 2}]
        assert len(up.calls) == 2

    def test_an_unawaited_failure_is_not_reported_as_never_retrieved(self, clock, caplog):
        """The only waiter goes away (client disconnect) and the fetch then fails: no asyncio error log."""
        up = FakeUpstream(errors=[UpstreamTimeout("slow")])
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            waiter = asyncio.create_task(cached.search(Q1))
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            up.gate.set()
            for _ in range(5):
                await asyncio.sleep(0)

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            run(go())
            gc.collect()
        assert "never retrieved" not in caplog.text
        assert len(up.calls) == 1


class TestSingleFlight:
    def test_concurrent_identical_queries_make_one_upstream_call(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            waiters = [asyncio.create_task(cached.search(Q1)) for _ in range(5)]
            await asyncio.sleep(0)
            up.gate.set()
            return await asyncio.gather(*waiters)

        results = run(go())
        assert len(up.calls) == 1
        assert all(r is results[0] for r in results)
        assert (cached.hits, cached.misses) == (4, 1)

    def test_single_flight_works_with_the_cache_disabled(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=0, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            waiters = [asyncio.create_task(cached.search(Q1)) for _ in range(2)]
            await asyncio.sleep(0)
            up.gate.set()
            await asyncio.gather(*waiters)
            up.gate = None
            await cached.search(Q1)

        run(go())
        assert len(up.calls) == 2  # two joined, the later one is a new fetch (nothing is stored)

    def test_different_queries_are_not_joined(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            waiters = [asyncio.create_task(cached.search(q)) for q in (Q1, Q2, Q1)]
            await asyncio.sleep(0)
            up.gate.set()
            return await asyncio.gather(*waiters)

        a, b, c = run(go())
        assert up.calls == [Q1, Q2]
        assert a is c and a is not b

    def test_a_cancelled_waiter_does_not_cancel_the_fetch_for_the_others(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            first = asyncio.create_task(cached.search(Q1))
            second = asyncio.create_task(cached.search(Q1))
            await asyncio.sleep(0)
            first.cancel()
            up.gate.set()
            result = await second
            assert first.cancelled()
            return result, await cached.search(Q1)

        result, again = run(go())
        assert result.rows == [{"call": 1}] and again is result
        assert len(up.calls) == 1


class TestFresh:
    def test_fresh_bypasses_and_refreshes_the_entry(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            calls = [await cached.search(Q1), await cached.search(Q1, fresh=True), await cached.search(Q1)]
            return [r.rows[0]["call"] for r in calls]

        assert run(go()) == [1, 2, 2]
        assert len(up.calls) == 2
        assert cached.size_bytes == 10  # replaced, not added

    def test_fresh_does_not_join_an_in_flight_fetch(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=60, max_bytes=1000)

        async def go():
            up.gate = asyncio.Event()
            plain = asyncio.create_task(cached.search(Q1))
            await asyncio.sleep(0)
            fresh = asyncio.create_task(cached.search(Q1, fresh=True))
            await asyncio.sleep(0)
            up.gate.set()
            return await plain, await fresh

        plain, fresh = run(go())
        assert len(up.calls) == 2
        assert plain.rows == [{"call": 1}] and fresh.rows == [{"call": 2}]

    def test_fresh_with_the_cache_disabled_still_asks(self, clock):
        up = FakeUpstream()
        cached = CachedQido(up, ttl=0, max_bytes=1000)

        async def go():
            await cached.search(Q1, fresh=True)
            await cached.search(Q1, fresh=True)

        run(go())
        assert len(up.calls) == 2


class TestByteBudget:
    def test_least_recently_used_entries_are_evicted_past_the_budget(self, clock):
        up = FakeUpstream(nbytes=40)
        cached = CachedQido(up, ttl=60, max_bytes=100)

        async def go():
            await cached.search(Q1)
            await cached.search(Q2)
            assert cached.size_bytes == 80
            await cached.search(Q1)  # hit: Q1 is now the most recently used
            await cached.search(Q3)  # 120 > 100: Q2 goes
            assert cached.size_bytes == 80
            await cached.search(Q1)  # still cached
            await cached.search(Q2)  # asked again

        run(go())
        assert up.calls == [Q1, Q2, Q3, Q2]
        assert cached.size_bytes <= 100

    def test_a_result_larger_than_the_budget_is_served_but_not_stored(self, clock):
        up = FakeUpstream(nbytes=500)
        cached = CachedQido(up, ttl=60, max_bytes=100)

        async def go():
            first = await cached.search(Q1)
            second = await cached.search(Q1)
            return first, second

        first, second = run(go())
        assert first.nbytes == 500 and second.rows == [{"call": 2}]
        assert cached.size_bytes == 0

    def test_an_empty_result_still_counts(self, clock):
        up = FakeUpstream(nbytes=0)
        cached = CachedQido(up, ttl=60, max_bytes=2)

        async def go():
            for q in (Q1, Q2, Q3):
                await cached.search(q)

        run(go())
        assert cached.size_bytes == 2  # each empty answer weighs one byte, so the entry count is bounded too


class _Upstream:
    def __init__(self) -> None:
        self.calls = 0

    async def search(self, query: QidoQuery) -> QidoResult:
        self.calls += 1
        return QidoResult([{"0020000D": ("1.2.3",)}], 10)


def test_cached_says_whether_search_will_answer_from_memory():
    upstream = _Upstream()
    qido = CachedQido(upstream, ttl=60, max_bytes=10_000)
    query = QidoQuery.build("studies", {"StudyInstanceUID": "1.2.3"})
    assert not qido.cached(query)
    asyncio.run(qido.search(query, context="A"))
    assert qido.cached(query, "A") and not qido.cached(query, "B")  # per authorization context
    assert not CachedQido(upstream, ttl=0).cached(query)


def test_a_read_of_two_cached_answers_never_gathers(monkeypatch):
    from app.usecases import studies
    from app.usecases.studies import Limits, read_study

    class Fetch:
        def __init__(self, hit: bool) -> None:
            self.hit = hit

        async def __call__(self, query: QidoQuery) -> QidoResult:
            return QidoResult([{"0020000D": ("1.2.3",)}], 10)

        def cached(self, query: QidoQuery) -> bool:
            return self.hit

    gathered = []
    real = asyncio.gather
    monkeypatch.setattr(studies.asyncio, "gather", lambda *a, **k: gathered.append(1) or real(*a, **k))
    limits = Limits(uid_batch=100, instances=1000, prequery=100)
    assert asyncio.run(read_study("1.2.3", Fetch(True), limits)) is not None and gathered == []
    assert asyncio.run(read_study("1.2.3", Fetch(False), limits)) is not None and gathered == [1]  # misses overlap
