"""A :class:`~app.pacs.cache.CacheBackend` on Redis, so replicas of the facade share cached QIDO answers.

    cache = RedisCache.from_url("redis://127.0.0.1:6379/0", ttl=60, stale_ttl=600, prefix="facade:qido")
    qido = CachedQido(upstream, backend=cache)
    ...
    await cache.aclose()

**Keys.** ``{prefix}:v{FORMAT}:{sha256 hex}`` of the same key the memory cache uses, ``(context, query)``, written as
canonical JSON (``[context, level, params]``). The context is part of the hashed material, so an answer stored for one
authorisation context can never be read for another, exactly as in memory. Hashing also keeps PatientIDs and names
that are in QIDO queries out of Redis key names (``SCAN``/``MONITOR`` output, slow logs). The context must be JSON
data (str, int, None, or lists/tuples of them): anything else is refused with TypeError, rather than falling back to
a ``repr`` that could make two contexts look alike. ``FORMAT`` is bumped when the value format changes; old entries
are then simply never read and expire.

**Values** (measured on the test dataset in a local Orthanc: all 13 study rows, all 46 instance rows): the slimmed
rows (:func:`app.dicom.dicom_json.slim`, tag → tuple) as orjson, compressed with zlib level 1 above 1 KiB; a one-byte
header says which (``j`` or ``z``). Loading turns each row's lists back into tuples, because the accessors of
:mod:`app.dicom.dicom_json` test ``type(value) is tuple``. Against storing the raw upstream body and parsing it again:
3.4-3.6x smaller before compression (16.9 KB → 4.8 KB for 13 studies, 98 KB → 28.7 KB for 46 instances), 3-6x smaller
again after it (1.4 KB, 4.4 KB), and 2.1-2.4x faster to load, decompression included (39 vs 83 µs, 194 vs
459 µs). No pickle: whoever can write to Redis must not be able to run code in the facade. The values hold patient
data: use a private Redis, with ACLs, and ``rediss://`` outside a trusted network.

**Expiry.** Each value holds its storage time (wall clock, shared by replicas) and is written with a Redis expiry of
``ttl + stale_ttl``: fresh for ``ttl``, kept for stale-if-error after that (one key instead of the memory cache's two
stores).

**Faults.** A Redis error never fails a request: a read becomes a miss, a write is skipped. The first error is logged
once (warning), and a small circuit breaker (1 failure, ``retry_after`` seconds) then keeps the facade from asking a
dead Redis at all until one probe succeeds (logged once too). The client is built with short socket timeouts and
without redis-py's own retries (which default to 10 with backoff), so a dead or hung Redis costs one ``timeout``.

**clear()** (after a write to the PACS) ignores, at once, every entry stored before it in this process's reads, and
deletes the facade's keys in the background (``SCAN MATCH {prefix}:*`` + ``UNLINK``, never ``FLUSHDB``: the Redis may
hold other data); :meth:`aclear` awaits the deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .breaker import CircuitBreaker
from .cache import CacheKey, Hit
from .upstream import QidoResult

__all__ = ["FORMAT", "RedisCache"]

logger = logging.getLogger(__name__)

FORMAT = 1  # part of every key: bump it when the value format changes
GENERATION_LEASE = 0.02  # seconds a generation read is used again (RedisCache.generation)
_COMPRESS_ABOVE = 1024
_PLAIN, _ZLIB = b"j", b"z"
_FAULTS = (RedisError, OSError)  # OSError covers TimeoutError and refused connections the client did not wrap
_SKIPPED: Final = object()  # a Redis call not made or failed (RedisCache._guarded)


class RedisCache:
    """Cached QIDO answers in Redis (module docstring).

    **Parameters:**
    * client - a ``redis.asyncio.Redis`` (bytes responses); :meth:`from_url` builds a suitable one.
    * ttl, stale_ttl - seconds an answer is fresh, and kept after that for stale-if-error.
    * prefix - key prefix; give each facade deployment (each PACS) its own.
    * retry_after - seconds Redis is left alone after an error before one request probes it again.
    * clock - wall-clock seconds (values are shared by processes, so not a monotonic clock); for tests.

    Counters: ``errors`` (Redis faults), ``skipped`` (reads and writes not attempted while Redis is considered down).
    """

    def __init__(
        self,
        client: Redis,
        *,
        ttl: float,
        stale_ttl: float = 0,
        prefix: str = "facade:qido",
        retry_after: float = 5.0,
        lease: float = GENERATION_LEASE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or stale_ttl < 0:
            raise ValueError("ttl and stale_ttl must not be negative")
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self.client = client
        self.prefix = f"{prefix}:v{FORMAT}:"
        # Outside the prefix that clearing deletes: a generation never goes back (a reset could revive old answers).
        self.generation_key = f"{prefix}:generation"
        self._clock = clock
        self.breaker = CircuitBreaker(failure_threshold=1, reset_after=retry_after, name="the Redis cache")
        self._down = False
        self._cleared_at = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_read: asyncio.Future[int | None] | None = None
        self._reads: set[asyncio.Task[int | None]] = set()
        self.lease = lease
        self._monotonic = monotonic
        self._known: tuple[int, float] | None = None  # the last generation read, and when its read was sent
        self.errors = 0
        self.skipped = 0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **options: Any) -> RedisCache:
        """A client for ``redis://`` / ``rediss://`` / ``unix://`` URLs with ``timeout`` seconds to connect and per
        command, and no client-side retries (this class decides when to try again)."""
        client = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        return cls(client, **options)

    async def aclose(self) -> None:
        """Finish pending background deletions, then close the client's connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    @property
    def size_bytes(self) -> int:
        return 0  # not tracked here: Redis bounds itself (maxmemory); see INFO memory

    def key(self, key: CacheKey) -> str:
        context, query = key
        try:
            material = orjson.dumps([context, query.level, query.params])
        except TypeError as exc:  # orjson.JSONEncodeError
            raise TypeError(f"a Redis cache context must be JSON data, not {type(context).__name__}") from exc
        return self.prefix + hashlib.sha256(material).hexdigest()

    async def get(self, key: CacheKey) -> Hit | None:
        name = self.key(key)
        value = await self._guarded(lambda: self.client.get(name))
        if not isinstance(value, bytes):  # _SKIPPED too
            return None
        entry = _decode(value)
        if entry is None:
            logger.warning("ignoring an unreadable entry in the Redis cache")
            return None
        stored_at, result = entry
        if stored_at < self._cleared_at:
            return None
        age = self._clock() - stored_at
        if age < self.ttl:
            return Hit(result, True, age)
        if age < self.ttl + self.stale_ttl:
            return Hit(result, False, age)
        return None

    async def put(self, key: CacheKey, result: QidoResult) -> None:
        keep = self.ttl + self.stale_ttl
        if keep <= 0:
            return
        name = self.key(key)
        px = max(1, math.ceil(round(keep * 1000, 3)))
        await self._guarded(lambda: self.client.set(name, _encode(self._clock(), result), px=px))

    def clear(self) -> None:
        self._cleared_at = self._clock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller at shutdown): the entries expire by themselves
            return
        task = loop.create_task(self._delete_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def invalidate(self) -> None:
        """:meth:`clear` here, and a new generation for every process sharing this Redis (INCR, awaited); the old
        entries are deleted in the background (keyed on the old generation, they are not read again anyway)."""
        self.clear()
        self._known = None  # this process reads the new generation at its next request

        async def incr() -> None:
            await self._start_generation()
            await self.client.incr(self.generation_key)

        if await self._guarded(incr) is _SKIPPED:
            logger.warning("the Redis cache is unavailable: other replicas may serve answers older than this write")
            return
        # Every other process trusts a generation only for ``lease`` seconds after sending the read that gave it:
        # once this wait is over, none of them holds one read before the INCR, so the writer's client, asking any
        # of them next, gets an answer made after the write (generation()).
        await asyncio.sleep(self.lease)

    async def generation(self) -> int | None:
        """The shared count of invalidations; None while Redis cannot be read.

        Every request asks this once, and a Redis round trip costs the client about 50 us of CPU, as much as the
        rest of a warm answer. So concurrent callers share reads, but only reads *sent after they asked*: the first
        caller schedules a read for the next turn of the event loop, and every caller that comes before it goes
        out joins it. A caller never gets a value read before it arrived, so a write whose INCR had returned by
        then is always seen (reading earlier, as joining a read already in flight would, could miss it).

        And a value is used again, without a read, for ``lease`` seconds after its read was sent (a lease): a
        write waits that long after its INCR before it answers (:meth:`invalidate`), so a request that comes
        after the write's answer never finds a value read before the write. A worker then asks Redis at most
        once per lease, however many requests it serves (the read cost about 50 us of a worker's CPU per request,
        bench/README.md "Workers"), and a manifest POST answers ``lease`` later (20 ms by default). A lease past
        its half is renewed in the background while it still serves, so requests do not stall on the read (on a
        busy machine Redis may wait milliseconds for a core)."""
        known = self._known
        if known is not None:
            age = self._monotonic() - known[1]
            if age < self.lease:
                if age > self.lease / 2 and self._next_read is None:
                    self._schedule_read()  # nobody waits for it: its value starts a new lease when it comes
                return known[0]
        return await asyncio.shield(self._next_read or self._schedule_read())

    def _schedule_read(self) -> asyncio.Future[int | None]:
        loop = asyncio.get_running_loop()
        self._next_read = loop.create_future()
        self._next_read.add_done_callback(_retrieve)  # a renewal nobody awaited may fail: seen, not logged
        loop.call_soon(self._send_read, self._next_read)
        return self._next_read

    def _send_read(self, done: asyncio.Future[int | None]) -> None:
        self._next_read = None  # later callers wait for the next read: this one goes out now

        def deliver(task: asyncio.Task[int | None]) -> None:
            if done.cancelled():
                return
            if task.cancelled():
                done.cancel()
            elif (exc := task.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(task.result())

        task = asyncio.ensure_future(self._read_generation(self._monotonic()))
        self._reads.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(self._reads.discard)
        task.add_done_callback(deliver)

    async def _read_generation(self, sent_at: float) -> int | None:
        async def read() -> Any:
            value = await self.client.get(self.generation_key)
            if value is None:
                await self._start_generation()
                value = await self.client.get(self.generation_key)
            return value

        value = await self._guarded(read)
        if value is _SKIPPED:
            return None
        if isinstance(value, bytes | str):
            with contextlib.suppress(ValueError):
                generation = int(value)
                if self._known is None or self._known[1] <= sent_at:
                    self._known = (generation, sent_at)
                return generation
        logger.warning("ignoring an unreadable generation in the Redis cache")
        return None

    async def _start_generation(self) -> None:
        # A Redis that lost its data (restarted without persistence) must not count again from where an earlier
        # count was: answers kept in the processes under that number would come back. So a missing count starts
        # from the clock in nanoseconds (NX: once, whoever is first), above any count the earlier run reached.
        await self.client.set(self.generation_key, time.time_ns(), nx=True)

    async def aclear(self) -> None:
        """:meth:`clear`, returning when the keys are deleted from Redis (or Redis failed)."""
        self._cleared_at = self._clock()
        await self._delete_all()

    async def _delete_all(self) -> None:
        if not self._allow():
            logger.warning("the Redis cache is unavailable: its entries were not deleted and expire by themselves")
            return
        try:
            batch: list[bytes | str] = []
            async for name in self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=1000):
                batch.append(name)
                if len(batch) >= 500:
                    await self.client.unlink(*batch)
                    batch = []
            if batch:
                await self.client.unlink(*batch)
        except _FAULTS as exc:
            self._failed(exc)
            return
        except BaseException:
            self.breaker.release()
            raise
        self._succeeded()

    # -- the small breaker around Redis ---------------------------------------------------------------------------

    async def _guarded(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call``'s result through the breaker, or :data:`_SKIPPED` when Redis is left alone (counted in
        ``skipped``) or fails now (counted in ``errors``; the breaker opens). Never raises for Redis's faults."""
        if not self._allow():
            return _SKIPPED
        try:
            result = await call()
        except _FAULTS as exc:
            self._failed(exc)
            return _SKIPPED
        except BaseException:
            self.breaker.release()
            raise
        self._succeeded()
        return result

    def _allow(self) -> bool:
        if self.breaker.allow():
            return True
        self.skipped += 1
        return False

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.breaker.record_failure()
        if not self._down:
            self._down = True
            logger.warning(
                "the Redis cache failed (%s); answering without it, next try in %.0f s",
                type(exc).__name__,
                self.breaker.reset_after,
            )

    def _succeeded(self) -> None:
        self.breaker.record_success()
        if self._down:
            self._down = False
            logger.warning("the Redis cache answers again")


def _retrieve(future: asyncio.Future[int | None]) -> None:
    if not future.cancelled():
        future.exception()


def _encode(stored_at: float, result: QidoResult) -> bytes:
    payload = orjson.dumps([stored_at, result.nbytes, result.rows])
    if len(payload) > _COMPRESS_ABOVE:
        return _ZLIB + zlib.compress(payload, 1)
    return _PLAIN + payload


def _decode(value: bytes) -> tuple[float, QidoResult] | None:
    """(stored_at, result), or None for a value this version cannot read."""
    kind, payload = value[:1], value[1:]
    try:
        if kind == _ZLIB:
            payload = zlib.decompress(payload)
        elif kind != _PLAIN:
            return None
        data = orjson.loads(payload)
    except (zlib.error, orjson.JSONDecodeError):
        return None
    if not (isinstance(data, list) and len(data) == 3 and isinstance(data[2], list)):
        return None
    stored_at, nbytes, raw_rows = data
    if not isinstance(stored_at, int | float) or not isinstance(nbytes, int):
        return None
    rows = []
    for raw in raw_rows:
        if not isinstance(raw, dict):
            return None
        row = {}
        for tag, values in raw.items():
            if type(values) is not list:
                return None
            row[tag] = tuple(values)  # slim rows hold tuples: app.dicom.dicom_json tests `type(value) is tuple`
        rows.append(row)
    return float(stored_at), QidoResult(rows, nbytes)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH): ``* ? [ ] \\`` escaped with a backslash."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
