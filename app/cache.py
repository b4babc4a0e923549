"""Upstream QIDO answers cached in memory: TTL + byte budget (cachetools), single-flight, never errors.

Keyed on the normalised :class:`~app.qido.QidoQuery` (plus a context key that later separates authorisation
contexts), never on the raw FHIR query string, so differently spelled FHIR searches share entries.
Explicit get/put, because ``@cached`` on a coroutine caches the coroutine object (tkem/cachetools#92).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from cachetools import TTLCache

from .qido import QidoQuery
from .upstream import Qido, QidoResult


class CachedQido:
    def __init__(self, upstream: Qido, *, ttl: float, max_bytes: int) -> None:
        self._upstream = upstream
        self._enabled = ttl > 0
        self._cache: TTLCache[Hashable, QidoResult] = TTLCache(
            maxsize=max_bytes, ttl=ttl or 1, getsizeof=lambda r: max(r.nbytes, 1)
        )
        self._inflight: dict[Hashable, asyncio.Future[QidoResult]] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every cached answer (after the facade wrote to the PACS, so the next search sees it)."""
        self._cache.clear()

    @property
    def size_bytes(self) -> int:
        return int(self._cache.currsize)

    async def search(self, query: QidoQuery, *, fresh: bool = False, context: Hashable = None) -> QidoResult:
        """``fresh``: the client sent Cache-Control: no-cache, so go to the PACS (and refresh the entry)."""
        key = (context, query)
        if self._enabled and not fresh:
            hit = self._cache.get(key)
            if hit is not None:
                self.hits += 1
                return hit
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
        return await asyncio.shield(task)

    async def _fetch(self, key: Hashable, query: QidoQuery) -> QidoResult:
        try:
            result = await self._upstream.search(query)
            if self._enabled and result.nbytes <= self._cache.maxsize:
                self._cache[key] = result  # only successes are stored: an exception skips this
            return result
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]


def _retrieve(task: asyncio.Future[QidoResult]) -> None:
    """Mark a failed fetch's exception as seen; every waiter has received it already."""
    if not task.cancelled():
        task.exception()
