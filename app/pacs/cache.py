"""Upstream QIDO answers cached: TTL, single-flight, never errors, stale-if-error; in memory or in Redis.

Keyed on the normalised :class:`~app.dicom.qido.QidoQuery` (plus a context key that separates authorisation contexts: an
answer stored under one context is never returned for another), never on the raw FHIR query string, so differently
spelled FHIR searches share entries.

Where answers live is a :class:`CacheBackend`: :class:`MemoryCache` (default: cachetools TTLCache bounded by bytes,
per process) or :class:`app.pacs.cache_redis.RedisCache` (shared by replicas). Single-flight (concurrent identical
misses
make one upstream call) is per process in both cases. Explicit get/put, because ``@cached`` on a coroutine caches the
coroutine object (tkem/cachetools#92).

Stale-if-error (RFC 5861 §4): with ``stale_ttl > 0`` every answer is kept ``stale_ttl`` seconds past its ``ttl``. A
search that accepts it (``stale_if_error=<seconds past freshness>``) and whose upstream call fails with an
UpstreamError gets a kept answer no staler than that instead, as a :class:`~app.pacs.upstream.QidoResult` with
``stale=True``, so the caller can say so (an OperationOutcome "may be stale"). How stale a request accepts is the
client's to say (app.pacs.request_scope.STALE_IF_ERROR): a ``Cache-Control: no-cache`` request accepts none.
Errors are never cached; a stale answer is never served without an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from ..dicom.qido import QidoQuery
from ..errors import UpstreamError
from .change_clock import ChangeClock, Scopes, query_scopes
from .request_scope import CACHE_SCOPE, DEPENDS, STALE_IF_ERROR
from .upstream import Qido, QidoResult

__all__ = ["CacheBackend", "CacheKey", "CachedQido", "Hit", "MemoryCache", "QidoPort"]

# (context, query): the context first, so no lookup can ignore it.
CacheKey = tuple[Hashable, QidoQuery]


@dataclass(frozen=True, slots=True)
class Hit:
    """A kept answer: ``fresh`` within its ``ttl``, else within the ``stale_ttl`` after it (only for errors);
    ``age``: seconds since it was stored, which decides whether a request's stale-if-error limit admits it."""

    result: QidoResult
    fresh: bool
    age: float = 0.0


class CacheBackend(Protocol):
    """Where answers are kept. ``ttl``: seconds an answer is fresh (0: never served without an error);
    ``stale_ttl``: seconds it is kept after that. A backend never raises for its own faults: a store that fails
    reads as a miss and writes nothing."""

    ttl: float
    stale_ttl: float

    async def get(self, key: CacheKey) -> Hit | None: ...

    async def put(self, key: CacheKey, result: QidoResult) -> None: ...

    def clear(self) -> None:
        """Forget every answer at once for this process's reads (shared stores may finish deleting in the
        background)."""
        ...

    async def invalidate(self) -> None:
        """:meth:`clear`, and when it returns every process sharing the store is in a new :meth:`generation`."""
        ...

    async def generation(self) -> int | None:
        """How many times the answers were invalidated, as every process sharing the store sees it; None while the
        store cannot say (then nothing kept may be trusted: caches built on these answers key on it)."""
        ...

    @property
    def size_bytes(self) -> int: ...


class MemoryCache:
    """Two cachetools TTLCaches bounded by the answers' byte sizes (LRU past the budget): answers for ``ttl``, and,
    when ``stale_ttl > 0``, the same answers for ``ttl + stale_ttl`` (a second budget, ``stale_max_bytes``, by
    default ``max_bytes``). Both hold the same result objects, so the second store only costs memory for answers the
    first one has dropped: at most ``max_bytes + stale_max_bytes`` in all. Never suspends."""

    def __init__(self, *, ttl: float, max_bytes: int, stale_ttl: float = 0, stale_max_bytes: int | None = None) -> None:
        if ttl < 0 or stale_ttl < 0:
            raise ValueError("ttl and stale_ttl must not be negative")
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self._fresh: TTLCache[CacheKey, QidoResult] | None = None
        # (stored at, answer): the age decides whether a request's stale-if-error limit admits the answer
        self._stale: TTLCache[CacheKey, tuple[float, QidoResult]] | None = None
        if ttl > 0:
            self._fresh = TTLCache(maxsize=max_bytes, ttl=ttl, getsizeof=_weight)
        if stale_ttl > 0:
            budget = max_bytes if stale_max_bytes is None else stale_max_bytes
            self._stale = TTLCache(maxsize=budget, ttl=ttl + stale_ttl, getsizeof=_stale_weight)
        self._generation = 0

    async def get(self, key: CacheKey) -> Hit | None:
        if self._fresh is not None and (result := self._fresh.get(key)) is not None:
            return Hit(result, True)
        if self._stale is not None and (entry := self._stale.get(key)) is not None:
            stored_at, result = entry
            return Hit(result, False, self._stale.timer() - stored_at)
        return None

    async def put(self, key: CacheKey, result: QidoResult) -> None:
        if self._fresh is not None and result.nbytes <= self._fresh.maxsize:
            self._fresh[key] = result  # an answer larger than the whole budget is served but not kept
        if self._stale is not None and result.nbytes <= self._stale.maxsize:
            self._stale[key] = (self._stale.timer(), result)

    def clear(self) -> None:
        for store in (self._fresh, self._stale):
            if store is not None:
                store.clear()
        self._generation += 1

    async def invalidate(self) -> None:
        self.clear()

    async def generation(self) -> int | None:
        return self._generation  # one process: its own count

    def has_fresh(self, key: CacheKey) -> bool:
        return self._fresh is not None and key in self._fresh

    @property
    def size_bytes(self) -> int:
        return int(self._fresh.currsize) if self._fresh is not None else 0

    @property
    def stale_size_bytes(self) -> int:
        return int(self._stale.currsize) if self._stale is not None else 0


def _weight(result: QidoResult) -> int:
    return max(result.nbytes, 1)  # an empty answer weighs one byte, so the entry count is bounded too


def _stale_weight(entry: tuple[float, QidoResult]) -> int:
    return _weight(entry[1])


class CachedQido:
    """The cached QIDO port.

    **Parameters:**
    * upstream - the :class:`~app.pacs.upstream.Qido` port (``DicomWebUpstream``).
    * ttl, max_bytes, stale_ttl - the default :class:`MemoryCache` (``ttl=0``: nothing is served from the cache
      without an error; single-flight still applies).
    * backend - another :class:`CacheBackend` (e.g. ``RedisCache``), which brings its own ttl/stale_ttl; the three
      arguments above are then not allowed.
    * clock - the archive's :class:`~app.pacs.change_clock.ChangeClock` when its change feed is followed: each
      answer is then kept under the stamp of the query's scopes, so a change clears only the answers it touches
      (:meth:`changed`); requests note which stamps their answer was made from (``DEPENDS``).

    Counters: ``hits`` (fresh answers and joined in-flight fetches), ``misses`` (upstream calls made),
    ``stale_served`` (stale answers served after an upstream error).
    """

    def __init__(
        self,
        upstream: Qido,
        *,
        ttl: float = 0,
        max_bytes: int = 0,
        stale_ttl: float = 0,
        backend: CacheBackend | None = None,
        clock: ChangeClock | None = None,
    ) -> None:
        if backend is None:
            backend = MemoryCache(ttl=ttl, max_bytes=max_bytes, stale_ttl=stale_ttl)
        elif ttl or max_bytes or stale_ttl:
            raise TypeError("ttl, max_bytes and stale_ttl configure the in-memory cache; a backend brings its own")
        self._upstream = upstream
        self.backend = backend
        self.clock = clock
        self._inflight: dict[CacheKey, asyncio.Future[QidoResult]] = {}
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.generation = 0  # counts clear() calls: caches built on these answers (app.http.answers) follow it

    def clear(self) -> None:
        """Forget every cached answer in this process's view at once (tests; :meth:`invalidate` after a write)."""
        self.backend.clear()
        self.generation += 1

    async def invalidate(self) -> None:
        """After the facade wrote to the PACS: forget every cached answer, and return only when every process
        sharing the cache is in a new :meth:`current_generation`, so the writer's client, asking any replica
        next, gets an answer made after the write."""
        await self.backend.invalidate()
        self.generation += 1
        if self.clock is not None:
            self.clock.reset()  # stamps start again under the new generation

    async def changed(self, scopes: Scopes | None, position: int) -> None:
        """The archive's feed saw a change at ``position`` in these scopes (app.pacs.changes); None: it cannot say
        where, so everything goes (:meth:`invalidate`). Without a clock, everything goes too."""
        if scopes is None or self.clock is None or not self.clock.note(scopes, position):
            await self.invalidate()

    async def current_generation(self) -> int | None:
        """The shared generation of the cached answers (:meth:`CacheBackend.generation`); the HTTP layer reads it
        once per request and keys that request's cached answers on it (app.http.answers.cache_partition)."""
        return await self.backend.generation()

    @property
    def size_bytes(self) -> int:
        return self.backend.size_bytes

    def cached(self, query: QidoQuery, context: Hashable = None) -> bool:
        """Whether a fresh answer is in memory now (then :meth:`search` returns it without suspending). Always
        False for a remote backend, which cannot be asked without I/O."""
        return isinstance(self.backend, MemoryCache) and self.backend.has_fresh(self._key(query, context))

    def _key(self, query: QidoQuery, context: Hashable) -> CacheKey:
        """(context, query), the context stamped with the query's scopes' last change when the feed is followed
        (app.pacs.change_clock); the stamp is read before any fetch starts, so an answer kept under a stamp was
        asked after every change the stamp counts. The stamp is noted in the request's ``DEPENDS`` for the finished
        answer made from it (app.http.answers)."""
        clock = self.clock
        if clock is None:
            return (context, query)
        scopes = query_scopes(query)
        stamp = clock.stamp(scopes)
        depends = DEPENDS.get()
        if depends is not None:
            depends.append((clock, scopes, stamp))
        return ((context, stamp), query)

    async def search(
        self, query: QidoQuery, *, fresh: bool = False, context: Hashable = None, stale_if_error: float = 0
    ) -> QidoResult:
        """``fresh``: the client sent Cache-Control: no-cache, so go to the PACS (and refresh the entry).
        ``stale_if_error``: seconds past its freshness a kept answer may be (RFC 5861 §4; 0: none). If the PACS fails
        (any UpstreamError, the breaker's CircuitOpen included), answer with such a kept answer marked
        ``stale=True`` rather than the error, when there is one."""
        key = self._key(query, context)
        backend = self.backend
        hit = None
        if not fresh and backend.ttl > 0:
            hit = await backend.get(key)
            if hit is not None and hit.fresh:
                self.hits += 1
                return hit.result
        # No await from here to the registration below: a concurrent identical miss finds this fetch and joins it.
        task = None if fresh else self._inflight.get(key)
        if task is None:
            self.misses += 1
            # The fetch runs as its own task so that one caller going away (client disconnect) does not
            # cancel it for the others waiting on it (single-flight).
            task = asyncio.ensure_future(self._fetch(key, query))
            task.add_done_callback(_retrieve)
            if not fresh:
                self._inflight[key] = task
        else:
            self.hits += 1
        try:
            return await asyncio.shield(task)
        except UpstreamError:
            if stale_if_error <= 0 or backend.stale_ttl <= 0:
                raise
            if hit is None:  # not looked up yet (fresh=True, or ttl=0), or another fetch may have kept one since
                hit = await backend.get(key)
            if hit is None or hit.age > backend.ttl + stale_if_error:
                raise
            self.stale_served += 1
            return dataclasses.replace(hit.result, stale=True)

    async def _fetch(self, key: CacheKey, query: QidoQuery) -> QidoResult:
        try:
            result = await self._upstream.search(query)
            if self.backend.ttl > 0 or self.backend.stale_ttl > 0:
                await self.backend.put(key, result)  # only successes are stored: an exception skips this
            return result
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]


def _retrieve(task: asyncio.Future[QidoResult]) -> None:
    """Mark a failed fetch's exception as seen; every waiter has received it already."""
    if not task.cancelled():
        task.exception()


class QidoPort(Protocol):
    """What the use cases ask of the PACS's cached QIDO: one archive's :class:`CachedQido`, or several behind one
    base (app.pacs.federation.FederatedQido)."""

    @property
    def generation(self) -> int: ...

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...

    async def search(
        self, query: QidoQuery, *, fresh: bool = False, context: Hashable = None, stale_if_error: float = 0
    ) -> QidoResult: ...

    def cached(self, query: QidoQuery, context: Hashable = None) -> bool: ...

    def clear(self) -> None: ...

    async def invalidate(self) -> None: ...

    async def current_generation(self) -> int | None: ...


class CachedFetch:
    """One request's view of the cached QIDO port: its cache partition and the stale-if-error it accepts
    (app.pacs.request_scope, set by the HTTP layer; outside a request: none), no-cache, stale answers noted for the
    response, and ``cached`` for callers that can skip concurrency on hits."""

    def __init__(self, qido: QidoPort, *, fresh: bool) -> None:
        self._qido = qido
        self._fresh = fresh
        self._context = CACHE_SCOPE.get()
        self._stale = STALE_IF_ERROR.get()

    async def __call__(self, query: QidoQuery) -> QidoResult:
        stale = self._stale
        accepted = stale.accepted if stale is not None else 0.0
        result = await self._qido.search(query, fresh=self._fresh, context=self._context, stale_if_error=accepted)
        if result.stale and stale is not None:
            stale.served.append(query.level)
        return result

    def cached(self, query: QidoQuery) -> bool:
        return not self._fresh and self._qido.cached(query, self._context)
