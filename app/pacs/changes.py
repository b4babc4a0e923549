"""Following the PACS's change feed, so cached answers go when the PACS changes instead of when a TTL guesses
(issue 22; SMART Imaging Access's scaling note: "change feeds from the PACS ... to invalidate precisely").

DICOMweb has no change feed; archives do, each its own. A :class:`ChangeFeed` is one archive's, behind one small
interface (:class:`OrthancChanges` here; Microsoft's ``/changefeed`` or Google's Pub/Sub would be a module each):

* ``start()`` positions it at the archive's present (what came before is in no cached answer yet);
* ``poll()`` says what happened since: :attr:`Poll.changed` (something was stored, changed or deleted) or
  :attr:`Poll.lost` (the feed cannot tell: it was reset, has a gap, or could not be read).

:class:`ChangeFollower` polls every ``interval`` seconds and clears the archive's cached answers (app.pacs.cache
``invalidate``: in every process sharing a Redis cache too) on either: a change is seen within one interval, and a
feed that cannot be followed never leaves a stale answer standing. Facts about Orthanc 1.10's ``/changes`` (measured;
shared/docs/change-feeds.md): entries ``Seq``, ``ChangeType``, ``Path``...; ``Last`` the newest ``Seq``; a deletion
removes the resource's entries and logs nothing, so deletions are seen in ``/statistics`` counts, read at most every
``STATISTICS_EVERY`` polls; ``Stable*`` entries change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from .upstream import basic_auth, with_credentials

__all__ = ["ChangeFeed", "ChangeFollower", "OrthancChanges", "Poll"]

logger = logging.getLogger(__name__)

STATISTICS_EVERY = 5  # polls between two /statistics reads (deletions): at most 12 requests in 10 idle seconds
PAGE = 1000  # /changes entries per request
UNCHANGING = frozenset({"StableSeries", "StableStudy", "StablePatient"})


@dataclass(frozen=True)
class Poll:
    changed: bool = False
    lost: str | None = None  # why the feed cannot tell what changed (then everything may have)


class ChangeFeed(Protocol):
    name: str

    async def start(self) -> None: ...

    async def poll(self) -> Poll: ...


class FeedError(Exception):
    """The feed could not be read (the archive down, an answer that is not the feed's)."""


class OrthancChanges:
    """Orthanc's ``/changes`` log and ``/statistics`` counts, over the PACS's connection pool and credentials."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, rest_url: str, *, token: str | None, timeout: float, name: str
    ) -> None:
        base, self._auth = basic_auth(rest_url, token)
        self._base = base.rstrip("/")
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)
        self.name = name
        self._seq: int | None = None
        self._counts: tuple[int, ...] | None = None
        self._polls = 0
        self.requests = 0

    async def start(self) -> None:
        self._seq = int((await self._get("/changes?last"))["Last"])
        self._counts = await self._statistics()

    async def poll(self) -> Poll:
        if self._seq is None:
            await self.start()
            return Poll(lost="the change feed was not followed until now")
        changed = False
        while True:
            page = await self._get(f"/changes?since={self._seq}&limit={PAGE}")
            last, entries = int(page.get("Last", -1)), page.get("Changes")
            if not isinstance(entries, list) or last < self._seq:
                self._seq = max(last, 0)
                return Poll(lost="the change log was reset (its last entry went backwards)")
            kept = [e for e in entries if isinstance(e, dict) and isinstance(e.get("Seq"), int)]
            seqs = [e["Seq"] for e in kept]
            changed = changed or any(e.get("ChangeType") not in UNCHANGING for e in kept)
            # Consecutive from where it was, up to Last: missing entries are resources created and deleted since
            # (a deletion removes its entries) or a log cleared and refilled: either way something changed.
            gap = seqs != list(range(self._seq + 1, self._seq + 1 + len(seqs))) or (not seqs and last > self._seq)
            self._seq = seqs[-1] if seqs else last
            if gap:
                return Poll(changed=True, lost="the change log has a gap")
            if page.get("Done", True) or not seqs:
                break
        self._polls += 1
        if self._polls % STATISTICS_EVERY == 0:
            counts = await self._statistics()
            if counts != self._counts:
                changed = changed or self._counts is not None
                self._counts = counts
        return Poll(changed=changed)

    async def _statistics(self) -> tuple[int, ...]:
        stats = await self._get("/statistics")
        keys = ("CountPatients", "CountStudies", "CountSeries", "CountInstances", "TotalDiskSize")
        return tuple(int(stats.get(k, -1)) for k in keys)

    async def _get(self, path: str) -> dict[str, Any]:
        self.requests += 1
        headers = with_credentials((("Accept", "application/json"),), self._auth)
        try:
            r = await self._client.get(self._base + path, headers=headers)
        except httpx.HTTPError as exc:
            raise FeedError(f"the archive's change feed could not be read ({type(exc).__name__})") from None
        if r.status_code != 200:
            raise FeedError(f"the archive's change feed answered HTTP {r.status_code}")
        try:
            body = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise FeedError("the archive's change feed sent something that is not JSON") from None
        if not isinstance(body, dict):
            raise FeedError("the archive's change feed sent JSON that is not an object")
        return body


class ChangeFollower:
    """Polls one :class:`ChangeFeed` every ``interval`` seconds and calls ``invalidate`` on a change or when the
    feed cannot tell; ``on_event(kind)`` counts for metrics: ``change``, ``lost``, ``error``, ``idle``."""

    def __init__(
        self,
        feed: ChangeFeed,
        invalidate: Callable[[], Awaitable[None]],
        *,
        interval: float,
        on_event: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.feed = feed
        self._invalidate = invalidate
        self.interval = interval
        self._on_event = on_event
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"change-follower-{self.feed.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def step(self) -> str:
        """One poll and what it led to (the loop's body; tests call it directly)."""
        try:
            poll = await self.feed.poll()
        except FeedError as exc:
            if not self._failing:
                logger.warning("archive %s: %s; cached answers are cleared until it can be read", self.feed.name, exc)
            self._failing = True
            await self._invalidate()  # never a stale answer while the feed cannot be followed
            return self._event("error")
        if self._failing:
            logger.warning("archive %s: the change feed is read again", self.feed.name)
            self._failing = False
            await self._invalidate()  # what changed while it could not be read is unknown
            return self._event("lost")
        if poll.lost:
            logger.warning("archive %s: %s; cached answers cleared", self.feed.name, poll.lost)
            await self._invalidate()
            return self._event("lost")
        if poll.changed:
            await self._invalidate()
            return self._event("change")
        return self._event("idle")

    async def _run(self) -> None:
        try:
            await self.feed.start()
        except FeedError as exc:
            logger.warning("archive %s: %s; following it from its first readable state", self.feed.name, exc)
            self._failing = True
        while True:
            await self._sleep(self.interval)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the follower: the cache would then never be cleared again
                logger.exception("archive %s: the change follower failed; cached answers cleared", self.feed.name)
                await self._invalidate()

    def _event(self, kind: str) -> str:
        if self._on_event is not None:
            self._on_event(self.feed.name, kind)
        return kind
