"""Finished answers cached: the serialised bytes of an ImagingStudy search or read, per authorization partition.

A warm request spent most of its time mapping the (cached) QIDO rows to FHIR again and serialising the same JSON
again (issue 14: py-spy, 36 % mapping, 15 % token checking, 5 % rendering). This cache keeps the bytes a handler
sent, so a repeat is one dict lookup. It keeps every rule of the QIDO cache (app.pacs.cache) it sits on:

* **Key = everything that decides the bytes**: the cache partition first (app.pacs.request_scope.CACHE_SCOPE, set by
  the handler's authorization: the AuthContext isolation key, narrowed to the caller when its token is forwarded),
  the token's patient restriction, the FHIR version, the resource type, the canonical request (the parsed
  :class:`~app.fhir.search.SearchRequest`, so differently spelled searches share an entry; or the read id), the FHIR
  base URL used in the links (public_url or the request's origin), ``_pretty``, and the Prefer handling.
* **TTL and byte budget**: ``cache_ttl`` and ``cache_max_bytes`` (a cachetools TTLCache weighed by body length, LRU
  past the budget), like the QIDO MemoryCache. An answer is never older than the QIDO rows it was made from would be.
* ``Cache-Control: no-cache`` (R4 http.html#cache-control; RFC 9111 §5.2.1.4): not looked up, and the new answer
  replaces the kept one.
* **Cleared with the QIDO cache** (:attr:`app.pacs.cache.QidoPort.generation`): after a manifest is created the
  next search sees it.
* **Cleared where the PACS changed** (issue 22): with a followed change feed, the QIDO answers an answer was made
  from are keyed on their scopes' change stamps (app.pacs.change_clock); the answer keeps those stamps
  (:attr:`Answer.depends`) and is not served once one of them has moved, so a new instance of one patient does
  not clear the others' answers.
* **One computation per key at a time** (single flight): a request that misses while another is making the same
  answer waits for it (:meth:`AnswerCache.shared`) instead of asking the PACS and mapping the same rows again; a
  change feed clears a watched patient's answer once a second while a study is stored, and every client polling
  that patient missed at once (bench/README.md, "Change feed"). When the first one's answer is not kept (an error,
  a warning, or made before a change the waiter must see), the waiter makes its own.
* **Never errors, never stale-if-error answers** (those carry a warning about this moment only): the handler stores
  only a 200 built without a stale QIDO answer.

With a shared Redis cache too: the partition holds the cache generation the request began in
(:func:`cache_partition`), which a manifest stored through any worker or replica moves on before it answers, so an
answer kept here from before is never found again (each worker keeps its own answers: memory as with one process,
at the price of one small Redis read per request). Not used when answers carry time-limited capabilities
(``uses_capabilities``) or with an EHR or a PIXm manager (whose Patient links and cross-references are looked up
and cached on their own schedule).
Never suspends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from ..pacs.cache import QidoPort
from ..security.context import AuthContext
from ..settings import Settings

__all__ = ["Answer", "AnswerCache", "answer_cache", "answer_key", "cache_partition"]

ALIASES = 100_000  # raw query strings remembered per canonical key (a few hundred bytes each at most)


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished 200 answer: its body bytes and the audit fields its first request recorded."""

    body: bytes
    audit: Mapping[str, Any]
    # (clock, scopes, stamp) of each cached QIDO answer it was made from (app.pacs.request_scope.DEPENDS)
    depends: tuple[tuple[Any, Any, int], ...] = ()

    def current(self) -> bool:
        """Whether no scope it was made from has changed since (app.pacs.change_clock.ChangeClock.stamp)."""
        return all(clock.stamp(scopes) == stamp for clock, scopes, stamp in self.depends)


class _Key:
    """A key whose hash is worked out once. A canonical key holds the parsed search (dataclasses of tuples, hashed
    field by field): a repeat found through its alias would hash it again at every lookup of the store."""

    __slots__ = ("_hash", "key")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._hash = hash(key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._hash == other._hash and self.key == other.key


class AnswerCache:
    """Finished answers by key (the partition first), for ``ttl`` seconds, at most ``max_bytes`` of bodies."""

    def __init__(
        self, qido: QidoPort, *, ttl: float, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._qido = qido
        self._generation = qido.generation
        self._store: TTLCache[_Key, Answer] = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=clock, getsizeof=lambda a: len(a.body) + 1
        )
        # The raw request (query string as sent, with the partition and all that parsing depends on) → the
        # canonical key its parse gave: a repeat is found without parsing again. Parsing is a pure function of
        # those inputs, so an alias can only point where a new parse would.
        self._aliases: TTLCache[Hashable, _Key] = TTLCache(maxsize=ALIASES, ttl=ttl, timer=clock)
        self._making: dict[_Key, asyncio.Future[Answer | None]] = {}  # answers being made now (single flight)
        self.hits = 0
        self.misses = 0
        self.shared_hits = 0

    def _sync(self) -> None:
        if self._qido.generation != self._generation:  # the QIDO cache was cleared (a manifest was stored)
            self.clear()
            self._generation = self._qido.generation

    def lookup(self, alias: Hashable) -> Answer | None:
        """The answer for a raw request seen before (:meth:`put` with ``alias``), without counting a miss."""
        self._sync()
        key = self._aliases.get(alias)
        answer = None if key is None else self._current(key)
        if answer is not None:
            self.hits += 1
        return answer

    def find(self, key: Hashable) -> Answer | None:
        """:meth:`get` without counting a miss: for a lookup that hands a miss on to one that counts it."""
        self._sync()
        answer = self._current(_Key(key))
        if answer is not None:
            self.hits += 1
        return answer

    def get(self, key: Hashable) -> Answer | None:
        self._sync()
        answer = self._current(_Key(key))
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    async def shared(self, key: Hashable) -> Answer | None:
        """The answer another request is making for ``key`` now, once made and kept; None when none is being made,
        or it was not kept, or a change it depends on came since (then the caller makes its own)."""
        making = self._making.get(_Key(key))
        if making is None:
            return None
        answer = await asyncio.shield(making)
        if answer is None or not answer.current():
            return None
        self.shared_hits += 1
        return answer

    def making(self, key: Hashable) -> Callable[[Answer | None], None] | None:
        """Say this request makes ``key``'s answer (others :meth:`shared` it): returns the call that settles it with
        the answer kept, or None (not kept); None when another request is making it already."""
        kept = _Key(key)
        if kept in self._making:
            return None
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._making[kept] = future

        def settle(answer: Answer | None) -> None:
            if self._making.get(kept) is future:
                del self._making[kept]
            if not future.done():
                future.set_result(answer)

        return settle

    def _current(self, key: _Key) -> Answer | None:
        answer = self._store.get(key)
        if answer is not None and answer.depends and not answer.current():
            del self._store[key]  # made before a change in the PACS it depends on
            return None
        return answer

    def put(self, key: Hashable, answer: Answer, alias: Hashable = None) -> None:
        self._sync()
        if len(answer.body) < self._store.maxsize:  # larger than the whole budget: served, not kept
            kept = _Key(key)
            self._store[kept] = answer
            if alias is not None:
                self._aliases[alias] = kept

    def alias(self, alias: Hashable, key: Hashable) -> None:
        """Remember that ``alias`` parses to ``key``, without touching the answer's own expiry."""
        self._aliases[alias] = _Key(key)

    def clear(self) -> None:
        self._store.clear()
        self._aliases.clear()

    @property
    def size_bytes(self) -> int:
        return int(self._store.currsize)


def cache_partition(ctx: AuthContext, *, forward: bool, generation: int | None) -> Hashable:
    """What cached answers (QIDO rows and finished answers) a request may share with others: those of requests
    that may see the same data (the AuthContext isolation key; narrowed to the caller when its token is forwarded,
    since the PACS then answers per caller) and that began in the same cache generation
    (:meth:`app.pacs.cache.QidoPort.current_generation`): a write through any process sharing the cache moves the
    generation on before it answers, so nothing made before the write is served after it."""
    return (generation, ctx.private_cache_key if forward else ctx.cache_key)


def answer_key(
    partition: Hashable, patient: str | None, version: str, resource_type: str, *parts: Hashable
) -> Hashable | None:
    """The key of an answer: the cache partition first, then the token's patient restriction, the FHIR version, the
    resource type, and ``parts`` (the request and its rendering options); None when a part is not hashable (a
    criterion value that cannot be a key: not cached rather than wrong)."""
    key = (partition, patient, version, resource_type, *parts)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def answer_cache(settings: Settings, qido: QidoPort, *, ehr: bool) -> AnswerCache | None:
    """The answer cache these settings allow, or None (see the module docstring for when it is off)."""
    if settings.cache_ttl <= 0 or settings.uses_capabilities or ehr:
        return None
    return AnswerCache(qido, ttl=settings.cache_ttl, max_bytes=settings.cache_max_bytes)
