"""app.pacs.cache_redis.RedisCache behind CachedQido, against a real redis-server (Debian's) on a free loopback port.

The PACS is an httpx.MockTransport answering the canned QIDO JSON of tests/data, through the real DicomWebUpstream,
so the rows stored in Redis are the slimmed rows the facade really keeps. Skipped when redis-server is not installed,
unless FACADE_TESTS_REQUIRE_ORTHANC=1 (CI), which makes that a failure. Orthanc is not needed here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.dicom.dicom_json import PATIENT_NAME, STUDY_UID, person_name, text, values
from app.dicom.qido import QidoQuery
from app.errors import UpstreamBadResponse
from app.pacs.cache import CachedQido
from app.pacs.cache_redis import FORMAT, RedisCache
from app.pacs.upstream import DicomWebUpstream
from tests.support.facade import free_port
from tests.support.redis import RedisServer, redis_binary

pytestmark = pytest.mark.integration

PACS = "http://pacs.test:8042/dicom-web"
DATA = Path(__file__).parent.parent / "data"
Q1 = QidoQuery.build("studies", {"PatientID": "MRN0100"}, limit=21)
Q2 = QidoQuery.build("studies", {"PatientID": "MRN0200"}, limit=21)


@pytest.fixture(autouse=True)
def _require_orthanc() -> None:
    """Overrides the package's autouse fixture: these tests need redis-server, not Orthanc."""


def _missing_redis() -> str | None:
    if redis_binary() is not None:
        return None
    reason = "redis-server is not installed (apt-get install redis-server)"
    if os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
        pytest.fail(reason, pytrace=False)
    return reason


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    reason = _missing_redis()
    if reason is not None:
        pytest.skip(reason)
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of its own, for the test that kills it."""
    reason = _missing_redis()
    if reason is not None:
        pytest.skip(reason)
    with RedisServer() as server:
        yield server


class Pacs:
    """A mock PACS: each call answers the next body (default: the canned CT study), or raises/answers an error."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: httpx.Response | Exception | None = None
        self.body: Any = json.loads((DATA / "qido_study_ct.json").read_text())

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if isinstance(self.fail, Exception):
            raise self.fail
        if self.fail is not None:
            return self.fail
        return httpx.Response(200, json=self.body)

    def upstream(self) -> DicomWebUpstream:
        return DicomWebUpstream(httpx.MockTransport(self), PACS, httpx.Timeout(5.0))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def prefix(request: pytest.FixtureRequest) -> str:
    return f"test:{request.node.name}"  # one namespace per test in the shared server


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def count_gets(cache: RedisCache) -> list[Any]:
    """The names of the GETs ``cache`` sends from now on."""
    sent: list[Any] = []
    real_get = cache.client.get

    async def counted_get(name: Any) -> Any:
        sent.append(name)
        return await real_get(name)

    cache.client.get = counted_get  # type: ignore[method-assign]
    return sent


class TestThroughCachedQido:
    def test_set_then_get_gives_the_same_slim_rows_back(self, redis_server, request):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                first = await cached.search(Q1)
                second = await cached.search(Q1)
                keys = [k async for k in cache.client.scan_iter(match=cache.prefix + "*")]
                return first, second, keys, cache.prefix
            finally:
                await cache.aclose()

        first, second, keys, key_prefix = run(go())
        assert pacs.calls == 1
        assert second is not first and second == first and not second.stale
        assert second.nbytes == first.nbytes > 0
        row = second.rows[0]
        assert all(type(value) is tuple for value in row.values())  # as app.dicom.dicom_json's accessors expect
        assert text(row, STUDY_UID) == text(first.rows[0], STUDY_UID)
        assert person_name(row, PATIENT_NAME) == person_name(first.rows[0], PATIENT_NAME)
        assert values(row, "00080061") == values(first.rows[0], "00080061")
        assert len(keys) == 1 and keys[0].decode().startswith(key_prefix)
        assert key_prefix.endswith(f":v{FORMAT}:")
        assert b"MRN0100" not in keys[0]  # the key is a hash: no PatientID in key names

    def test_entries_are_fresh_for_ttl_then_gone(self, redis_server, request):
        pacs = Pacs()
        clock = Clock()

        async def go():
            cache = RedisCache(Redis.from_url(redis_server.url), ttl=60, prefix=prefix(request), clock=clock)
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                await cached.search(Q1)
                clock.now += 59.9
                await cached.search(Q1)
                calls_within = pacs.calls
                clock.now += 0.2
                await cached.search(Q1)
                return calls_within, pacs.calls
            finally:
                await cache.aclose()

        assert run(go()) == (1, 2)

    def test_redis_expiry_removes_the_key(self, redis_server, request):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=0.2, stale_ttl=0.1, prefix=prefix(request))
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                await cached.search(Q1)
                name = cache.key((None, Q1))
                ttl_ms = await cache.client.pttl(name)
                await asyncio.sleep(0.45)
                return ttl_ms, await cache.client.exists(name)
            finally:
                await cache.aclose()

        ttl_ms, exists = run(go())
        assert 0 < ttl_ms <= 300  # ttl + stale_ttl
        assert exists == 0

    def test_a_context_never_sees_another_contexts_entry(self, redis_server, request):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                pacs.body[0]["0020000D"]["Value"] = ["2.25.111"]
                a = await cached.search(Q1, context="A")
                pacs.body[0]["0020000D"]["Value"] = ["2.25.222"]
                b = await cached.search(Q1, context="B")
                none = await cached.search(Q1)
                again = [await cached.search(Q1, context=c) for c in ("A", "B")]
                return a, b, none, again
            finally:
                await cache.aclose()

        a, b, none, (a2, b2) = run(go())
        assert text(a.rows[0], STUDY_UID) == "2.25.111" and text(b.rows[0], STUDY_UID) == "2.25.222"
        assert text(none.rows[0], STUDY_UID) == "2.25.222"  # no context is a context of its own: asked again
        assert a2 == a and b2 == b
        assert pacs.calls == 3

    def test_contexts_that_look_alike_are_different_keys(self, redis_server):
        cache = RedisCache(Redis.from_url(redis_server.url), ttl=60)
        keys = {cache.key((context, Q1)) for context in (None, "", "1", 1, ("a", "b"), "a,b", '["a","b"]')}
        assert len(keys) == 7
        assert cache.key(("A", Q1)) != cache.key(("A", Q2))
        with pytest.raises(TypeError, match="JSON data"):
            cache.key((object(), Q1))
        run(cache.client.aclose())

    def test_two_replicas_share_entries(self, redis_server, request):
        pacs_a, pacs_b = Pacs(), Pacs()

        async def go():
            cache_a = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            cache_b = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            try:
                replica_a = CachedQido(pacs_a.upstream(), backend=cache_a)
                replica_b = CachedQido(pacs_b.upstream(), backend=cache_b)
                from_a = await replica_a.search(Q1)
                from_b = await replica_b.search(Q1)
                await replica_b.search(Q2)
                await replica_a.search(Q2)
                return from_a, from_b
            finally:
                await cache_a.aclose()
                await cache_b.aclose()

        from_a, from_b = run(go())
        assert from_a == from_b
        assert (pacs_a.calls, pacs_b.calls) == (1, 1)

    def test_stale_if_error_from_redis(self, redis_server, request):
        pacs = Pacs()
        clock = Clock()

        async def go():
            cache = RedisCache(
                Redis.from_url(redis_server.url), ttl=60, stale_ttl=600, prefix=prefix(request), clock=clock
            )
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                first = await cached.search(Q1)
                clock.now += 120
                pacs.fail = httpx.Response(503)
                stale = await cached.search(Q1, stale_if_error=600)
                with pytest.raises(UpstreamBadResponse):
                    await cached.search(Q1)
                clock.now += 600
                with pytest.raises(UpstreamBadResponse):
                    await cached.search(Q1, stale_if_error=600)
                return first, stale
            finally:
                await cache.aclose()

        first, stale = run(go())
        assert stale.stale and stale.rows == first.rows

    def test_errors_are_not_stored(self, redis_server, request):
        pacs = Pacs()
        pacs.fail = httpx.Response(500)

        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=60, stale_ttl=60, prefix=prefix(request))
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                with pytest.raises(UpstreamBadResponse):
                    await cached.search(Q1)
                return [k async for k in cache.client.scan_iter(match=cache.prefix + "*")]
            finally:
                await cache.aclose()

        assert run(go()) == []

    def test_clear_deletes_only_the_facades_keys(self, redis_server, request):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request) + "[x]*")
            other = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request) + "[x]")
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                await cache.client.set("unrelated:key", b"keep me")
                await other.put((None, Q1), (await pacs.upstream().search(Q1)))
                await cached.search(Q1)
                await cached.search(Q2)
                cached.clear()  # synchronous: this process ignores the old entries at once
                await cached.search(Q1)
                calls_after_clear = pacs.calls
                await cache.aclear()
                ours = [k async for k in cache.client.scan_iter() if k.decode().startswith(cache.prefix)]
                return (
                    calls_after_clear,
                    ours,
                    await cache.client.get("unrelated:key"),
                    await other.get((None, Q1)),
                )
            finally:
                await cache.client.delete("unrelated:key")
                await cache.aclose()
                await other.aclose()

        calls_after_clear, ours, unrelated, others_entry = run(go())
        assert calls_after_clear == 4  # other's put + Q1 + Q2 + Q1 after the clear
        assert ours == []
        assert unrelated == b"keep me"
        assert others_entry is not None  # a prefix that only starts like ours is not ours

    def test_the_generation_is_shared_moves_on_with_each_write_and_never_comes_back(self, redis_server, request):
        """What every replica keys its cached answers on (app.http.answers.cache_partition)."""

        async def go():
            # lease=0: every call reads (the lease is tested on its own below)
            a = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request), lease=0)
            b = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request), lease=0)
            try:
                first = await a.generation()
                assert first is not None and await b.generation() == first
                await a.invalidate()  # awaited: b sees it when this returns
                second = await b.generation()
                assert second is not None and second > first
                await b.aclear()  # deleting the entries leaves the count alone
                assert await a.generation() == second
                await a.client.delete(a.generation_key)  # as a Redis restarted without its data
                third = await b.generation()
                assert third is not None and third not in (first, second) and third > second
            finally:
                await a.aclose()
                await b.aclose()

        run(go())

    def test_generation_reads_are_shared_only_by_callers_that_came_before_them(self, redis_server, request):
        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            writer = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            sent = count_gets(cache)
            try:
                before = await writer.generation()
                sent.clear()
                together = await asyncio.gather(*(cache.generation() for _ in range(10)))
                assert together == [before] * 10 and len(sent) == 1  # one read for ten callers
                early = asyncio.ensure_future(cache.generation())
                await asyncio.sleep(0)  # its read is scheduled ...
                await asyncio.sleep(0)  # ... and sent
                await writer.invalidate()  # a write that returns while that read may be out
                late = await cache.generation()  # asked after the write: never the read sent before it
                await early
                return before, late
            finally:
                await cache.aclose()
                await writer.aclose()

        before, late = run(go())
        assert late == before + 1

    def test_a_generation_is_used_again_for_its_lease_and_a_write_waits_it_out(self, redis_server, request):
        async def go():
            now = [100.0]  # the reader's clock: moved by hand, never less than the real time that passes
            lease = 0.3
            cache = RedisCache.from_url(
                redis_server.url, ttl=60, prefix=prefix(request), lease=lease, monotonic=lambda: now[0]
            )
            writer = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request), lease=lease)
            sent = count_gets(cache)
            try:
                first = await cache.generation()
                n = len(sent)
                now[0] += 0.1
                assert await cache.generation() == first and len(sent) == n  # within the lease: no read
                started = time.perf_counter()
                await writer.invalidate()
                waited = time.perf_counter() - started
                now[0] += waited  # as much time as the write took: past the lease of the first read
                assert await cache.generation() == first + 1 and len(sent) == n + 1
                now[0] += 0.2  # past half the lease: still served, and renewed in the background
                assert await cache.generation() == first + 1
                await asyncio.sleep(0.05)
                assert len(sent) == n + 2
                return waited
            finally:
                await cache.aclose()
                await writer.aclose()

        assert run(go()) >= 0.3  # the write answers only after the lease of every reader's last read

    def test_without_redis_there_is_no_generation(self, request):
        async def go():
            cache = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", ttl=60, prefix=prefix(request))
            try:
                assert await cache.generation() is None
                await cache.invalidate()  # logged, not raised: the manifest is stored already
                assert await cache.generation() is None
            finally:
                await cache.aclose()

        run(go())

    def test_an_unreadable_entry_is_a_miss(self, redis_server, request):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(redis_server.url, ttl=60, prefix=prefix(request))
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                for garbage in (b"", b"jnot json", b"z\x00\x01", b"j[1,2]", b'j[1,2,[{"0020000D":"x"}]]', b"qxx"):
                    await cache.client.set(cache.key((None, Q1)), garbage)
                    await cached.search(Q1)
                return pacs.calls
            finally:
                await cache.aclose()

        assert run(go()) == 6


class TestRedisFaults:
    def test_redis_killed_mid_run_requests_still_work(self, own_redis, request, caplog):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(own_redis.url, ttl=60, prefix=prefix(request), retry_after=0.3)
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                await cached.search(Q1)
                await cached.search(Q1)
                assert pacs.calls == 1
                own_redis.kill()
                started = time.perf_counter()
                results = [await cached.search(Q1) for _ in range(20)]
                elapsed = time.perf_counter() - started
                errors_while_down = cache.errors
                assert cache.breaker.state == "open"
                own_redis.restart()  # empty, on the same port
                await asyncio.sleep(0.35)
                await cached.search(Q1)  # the probe: a miss, stored again
                await cached.search(Q1)  # a hit from Redis
                return results, elapsed, errors_while_down, cache
            finally:
                await cache.aclose()

        with caplog.at_level(logging.WARNING, logger="app.pacs.cache_redis"):
            results, elapsed, errors_while_down, cache = run(go())
        assert all(len(r.rows) == 1 and not r.stale for r in results)
        assert pacs.calls == 1 + 20 + 1  # every request while Redis was dead was a miss, not an error
        assert errors_while_down == 1  # then the breaker kept the facade from asking the dead Redis
        assert cache.skipped >= 38  # a get and a put per request
        assert elapsed < 1.0
        assert cache.breaker.state == "closed"
        messages = [r.getMessage() for r in caplog.records if r.name == "app.pacs.cache_redis"]
        assert len(messages) == 2  # down once, back once
        assert "answering without it" in messages[0] and "answers again" in messages[1]

    def test_a_hung_redis_costs_one_timeout(self, own_redis, request):
        pacs = Pacs()

        async def go():
            cache = RedisCache.from_url(own_redis.url, ttl=60, prefix=prefix(request), timeout=0.2, retry_after=30)
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                await cached.search(Q1)
                own_redis.pause()
                try:
                    started = time.perf_counter()
                    first = await cached.search(Q1)  # the read times out: a miss, and the PACS answers
                    first_took = time.perf_counter() - started
                    started = time.perf_counter()
                    for _ in range(10):
                        await cached.search(Q1)
                    rest_took = time.perf_counter() - started
                finally:
                    own_redis.resume()
                return first, first_took, rest_took, cache.errors
            finally:
                await cache.aclose()

        first, first_took, rest_took, errors = run(go())
        assert len(first.rows) == 1
        assert 0.15 < first_took < 1.0
        assert rest_took < 0.2  # Redis left alone while its breaker is open
        assert errors == 1 and pacs.calls == 12

    def test_no_redis_at_all(self, request):
        pacs = Pacs()

        async def go():
            # Nothing listens on port 1 on loopback: connection refused at once.
            cache = RedisCache.from_url("redis://127.0.0.1:1/0", ttl=60, prefix=prefix(request))
            try:
                cached = CachedQido(pacs.upstream(), backend=cache)
                return [await cached.search(Q1) for _ in range(3)], cache.errors
            finally:
                await cache.aclose()

        results, errors = run(go())
        assert len(results) == 3 and pacs.calls == 3 and errors == 1
