"""Following the PACS's change feed, so cached answers go when the PACS changes instead of when a TTL guesses
(issue 22; SMART Imaging Access's scaling note: "change feeds from the PACS ... to invalidate precisely").

DICOMweb has no change feed; archives do, each its own. A :class:`ChangeFeed` is one archive's, behind one small
interface (:class:`OrthancChanges` here; Microsoft's ``/changefeed`` or Google's Pub/Sub would be a module each):

* ``start()`` positions it at the archive's present (what came before is in no cached answer yet);
* ``poll()`` says what happened since: :attr:`Poll.changed` (something was stored, changed or deleted), where
  (:attr:`Poll.scopes`: the patients and studies it touched, app.pacs.change_clock; None when it cannot say, e.g.
  a deletion) and at which feed position, or :attr:`Poll.lost` (the feed cannot tell: it was reset, has a gap, or
  could not be read).

:class:`ChangeFollower` polls every ``interval`` seconds and tells the archive's cache: a change in known scopes
clears the answers of those scopes only (app.pacs.cache ``changed``), anything else clears every answer
(``invalidate``: in every process sharing a Redis cache too). A change is seen within one interval, and a feed that
cannot be followed never leaves a stale answer standing.

Where a change happened, Orthanc's entries do not say: they name a resource by its Orthanc id. :class:`OrthancChanges`
asks (:class:`_Where`): a patient, study or series id once each (kept), and new instances through the instance lists
of the series that changed lately (``GET /series/{id}``: one request per active series per poll, whatever the number
of instances), each instance not found there with one request of its own. At most ``LOOKUPS`` requests per poll;
past them, or for a resource already deleted again, the change is "anywhere".

Facts about Orthanc 1.10's ``/changes`` (measured; shared/docs/change-feeds.md): entries ``Seq``, ``ChangeType``,
``ResourceType``, ``ID``, ``Path``...; ``Last`` the newest ``Seq``; a deletion removes the resource's entries and
logs nothing, so deletions are seen in ``/statistics`` counts, read at most every ``STATISTICS_EVERY`` polls (and
clear everything: what was deleted is no longer there to ask); ``Stable*`` entries change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson
from cachetools import LRUCache

from .change_clock import Scopes, patient_scope, study_scope
from .upstream import basic_auth, with_credentials

__all__ = ["ChangeFeed", "ChangeFollower", "FollowedCache", "OrthancChanges", "Poll"]

logger = logging.getLogger(__name__)

STATISTICS_EVERY = 5  # polls between two /statistics reads (deletions): at most 12 requests in 10 idle seconds
PAGE = 1000  # /changes entries per request
UNCHANGING = frozenset({"StableSeries", "StableStudy", "StablePatient"})
LOOKUPS = 64  # requests a poll may make to learn where its changes were; past them: anywhere
ACTIVE_SERIES = 8  # series whose instance lists are read for new instances (the ones that changed last)


@dataclass(frozen=True)
class Poll:
    changed: bool = False
    lost: str | None = None  # why the feed cannot tell what changed (then everything may have)
    scopes: Scopes | None = None  # where it changed (app.pacs.change_clock); None: anywhere
    position: int = 0  # the feed position after the changes (grows; the same for every process following it)


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
        self._anchor: tuple[Any, ...] | None = None  # the last entry read (Seq, type, resource, id, date)
        self._polls = 0
        self.requests = 0
        self._where = _Where(self._get)

    async def start(self) -> None:
        page = await self._get("/changes?last")
        self._seq = int(page["Last"])
        entries = page.get("Changes")
        self._anchor = _identity(entries[-1]) if isinstance(entries, list) and entries else None
        self._counts = await self._statistics()

    async def poll(self) -> Poll:
        if self._seq is None:
            await self.start()
            return Poll(lost="the change feed was not followed until now")
        changed, touched = False, []
        # The first page starts at the last entry read, which must still be the same entry: Orthanc restarted on
        # another database can have as many changes (Last) and counts, but not the same entry at that Seq.
        anchor, self._anchor = self._anchor, None
        since = self._seq - 1 if anchor is not None else self._seq
        while True:
            page = await self._get(f"/changes?since={since}&limit={PAGE}")
            last, entries = int(page.get("Last", -1)), page.get("Changes")
            if not isinstance(entries, list) or last < self._seq:
                self._seq = max(last, 0)
                return Poll(lost="the change log was reset (its last entry went backwards)")
            kept = [e for e in entries if isinstance(e, dict) and isinstance(e.get("Seq"), int)]
            if anchor is not None:
                if kept and kept[0]["Seq"] == self._seq:
                    if _identity(kept.pop(0)) != anchor:
                        self._seq = last
                        return Poll(lost="the change log holds another entry where it was (reset, or another database)")
                    self._anchor = anchor  # the same: still where it was
                else:
                    changed = True  # that entry is gone: its resource was deleted since (anywhere)
                anchor = None
            seqs = [e["Seq"] for e in kept]
            touched += [e for e in kept if e.get("ChangeType") not in UNCHANGING]
            # Consecutive from where it was, up to Last: missing entries are resources created and deleted since
            # (a deletion removes its entries) or a log cleared and refilled: either way something changed.
            gap = seqs != list(range(self._seq + 1, self._seq + 1 + len(seqs))) or (not seqs and last > self._seq)
            self._seq = seqs[-1] if seqs else last
            if kept:
                self._anchor = _identity(kept[-1])
            if gap:
                return Poll(changed=True, lost="the change log has a gap")
            if page.get("Done", True) or not seqs:
                break
            since = self._seq
        self._polls += 1
        if self._polls % STATISTICS_EVERY == 0:
            counts = await self._statistics()
            if counts != self._counts:
                changed = changed or self._counts is not None  # a deletion (or what the log missed): anywhere
                self._counts = counts
        if changed:
            return Poll(changed=True, position=self._seq)
        if not touched:
            return Poll(position=self._seq)
        return Poll(changed=True, scopes=await self._where.scopes(touched), position=self._seq)

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


class _Where:
    """Where Orthanc's changes happened: each entry's resource to the scopes of its patient and study."""

    def __init__(self, get: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        self._get = get
        self._known: LRUCache[str, Scopes] = LRUCache(maxsize=20000)  # patient, study, series id -> scopes
        self._active: dict[str, None] = {}  # series ids, the last to change last (an ordered set)
        self._left = 0

    async def scopes(self, entries: list[dict[str, Any]]) -> Scopes | None:
        self._left = LOOKUPS
        found: set[str] = set()
        instances: list[str] = []
        try:
            for entry in entries:
                kind, rid = entry.get("ResourceType"), entry.get("ID")
                if not isinstance(rid, str) or not rid:
                    return None
                if kind == "Instance":
                    instances.append(rid)
                elif kind in ("Patient", "Study", "Series"):
                    found.update(await self._of(kind, rid))
                else:
                    return None
            if instances:
                found.update(await self._of_instances(instances))
        except _Unknown:
            return None
        return tuple(sorted(found))

    async def _of(self, kind: str, rid: str) -> Scopes:
        if (known := self._known.get(rid)) is not None:
            if kind == "Series":
                self._activate(rid)
            return known
        if kind == "Patient":
            tags = (await self._ask(f"/patients/{rid}")).get("MainDicomTags") or {}
            scopes: Scopes = (patient_scope(_text(tags, "PatientID")),)
        elif kind == "Study":
            study = await self._ask(f"/studies/{rid}")
            uid = _text(study.get("MainDicomTags") or {}, "StudyInstanceUID")
            scopes = (patient_scope(_text(study.get("PatientMainDicomTags") or {}, "PatientID")), study_scope(uid))
        else:
            parent = (await self._ask(f"/series/{rid}")).get("ParentStudy")
            if not isinstance(parent, str):
                raise _Unknown
            scopes = await self._of("Study", parent)
            self._activate(rid)
        self._known[rid] = scopes
        return scopes

    async def _of_instances(self, instances: list[str]) -> set[str]:
        """New instances through the instance lists of the series that changed last (one request each, whatever
        the number of instances), then one by one (each one's series then listed too: the rest of a series that
        grows without showing in this feed's series entries costs one request more, not one each)."""
        found: set[str] = set()
        left = set(instances)
        listed: set[str] = set()

        async def sweep(series: str) -> None:
            listed.add(series)
            try:
                held = (await self._ask(f"/series/{series}")).get("Instances")
            except _Unknown:
                if self._left <= 0:
                    raise
                self._active.pop(series, None)  # deleted since: no longer where instances arrive
                return
            mine = left.intersection(held) if isinstance(held, list) else set()
            if mine:
                found.update(await self._of("Series", series))
                left.difference_update(mine)

        for series in reversed(list(self._active)):
            if not left:
                break
            await sweep(series)
        for rid in instances:
            if rid in left:
                parent = (await self._ask(f"/instances/{rid}/series")).get("ID")
                if not isinstance(parent, str):
                    raise _Unknown
                found.update(await self._of("Series", parent))
                left.discard(rid)
                if left and parent not in listed:
                    await sweep(parent)
        return found

    def _activate(self, series: str) -> None:
        self._active.pop(series, None)
        self._active[series] = None
        while len(self._active) > ACTIVE_SERIES:
            del self._active[next(iter(self._active))]

    async def _ask(self, path: str) -> dict[str, Any]:
        if self._left <= 0:
            raise _Unknown
        self._left -= 1
        try:
            return await self._get(path)
        except FeedError:
            raise _Unknown from None  # deleted again since (404), or unreadable: anywhere


def _identity(entry: Any) -> tuple[Any, ...] | None:
    if not isinstance(entry, dict):
        return None
    return tuple(entry.get(k) for k in ("Seq", "ChangeType", "ResourceType", "ID", "Date"))


class _Unknown(Exception):
    """Where a change happened cannot be said (then it was anywhere)."""


def _text(tags: dict[str, Any], name: str) -> str:
    value = tags.get(name)
    if not isinstance(value, str):
        raise _Unknown
    return value


class FollowedCache(Protocol):
    """What a follower tells (app.pacs.cache.CachedQido): a change in these scopes at this feed position, or
    ``invalidate`` everything."""

    async def changed(self, scopes: Scopes | None, position: int) -> None: ...

    async def invalidate(self) -> None: ...


class ChangeFollower:
    """Polls one :class:`ChangeFeed` every ``interval`` seconds and tells ``cache`` what changed: the scopes of a
    change, or everything when the feed cannot tell; ``on_event(kind)`` counts for metrics: ``change``, ``lost``,
    ``error``, ``idle``."""

    def __init__(
        self,
        feed: ChangeFeed,
        cache: FollowedCache,
        *,
        interval: float,
        on_event: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.feed = feed
        self._cache = cache
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
            await self._cache.invalidate()  # never a stale answer while the feed cannot be followed
            return self._event("error")
        if self._failing:
            logger.warning("archive %s: the change feed is read again", self.feed.name)
            self._failing = False
            await self._cache.invalidate()  # what changed while it could not be read is unknown
            return self._event("lost")
        if poll.lost:
            logger.warning("archive %s: %s; cached answers cleared", self.feed.name, poll.lost)
            await self._cache.invalidate()
            return self._event("lost")
        if poll.changed:
            await self._cache.changed(poll.scopes, poll.position)
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
                await self._cache.invalidate()

    def _event(self, kind: str) -> str:
        if self._on_event is not None:
            self._on_event(self.feed.name, kind)
        return kind
