"""Several archives behind one FHIR base, as one cached QIDO port (issue 21).

Each archive is a :class:`Source`: its own connection settings, breaker, time budget, cache and counters
(app.main builds them), so one sick archive never opens another's breaker or eats its budget.
:class:`FederatedQido` offers the use cases the same port as one archive's :class:`~app.pacs.cache.CachedQido`:
every query goes to every archive at once (a search costs about the slowest archive, not the sum) and the answers
are merged by UID (app.planning.fanout). An archive that fails does not sink the answer: its error is noted for the
request (:data:`~app.pacs.request_scope.SOURCE_NOTES`) and the others' rows are returned (IHE XCA
"PartialSuccess"); only when every archive failed is the error raised, as with one PACS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Protocol, TypeVar

from cachetools import TTLCache

from ..dicom import dicom_json as dj
from ..dicom.qido import QidoQuery
from ..errors import TooCostly, Unprocessable, UpstreamError, UpstreamUnavailable
from ..planning import fanout
from .breaker import CircuitBreaker
from .cache import CachedQido
from .dicomweb_write import DicomWebStore, StowResult
from .request_scope import SOURCE_NOTES
from .upstream import Qido, QidoResult
from .wado import WadoUpstream

__all__ = ["FederatedQido", "FederatedStore", "Source", "StampedQido", "StoreSource", "WadoSource", "each_source"]

logger = logging.getLogger(__name__)


class Named(Protocol):
    @property
    def name(self) -> str: ...


S = TypeVar("S", bound=Named)
R = TypeVar("R")


async def each_source(sources: Sequence[S], call: Callable[[S], Awaitable[R]]) -> list[tuple[S, R]]:
    """``call`` on every archive at once; the answers of those that answered, in configuration order. An archive
    that fails (any UpstreamError: refused, timed out, garbage, breaker open) is noted for the request
    (:data:`~app.pacs.request_scope.SOURCE_NOTES`) and left out; when every one failed, the first one's error
    is raised, as with one PACS. Anything else (a bug, a cancellation) is raised as it is."""
    answers = await asyncio.gather(*(call(s) for s in sources), return_exceptions=True)
    ok: list[tuple[S, R]] = []
    failed: list[tuple[str, UpstreamError]] = []
    for source, answer in zip(sources, answers, strict=True):
        if isinstance(answer, UpstreamError):
            failed.append((source.name, answer))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            ok.append((source, answer))
    for name, error in failed:
        logger.warning("archive %s failed: %s", name, error.message)
    if failed:
        noted = SOURCE_NOTES.get()
        if noted is not None:
            for name, error in failed:
                noted.failed.setdefault(name, error)
        if not ok:
            raise failed[0][1]
    return ok


@dataclass(frozen=True)
class WadoSource:
    """An archive as the WADO-RS gateway reaches it; ``domain`` None: the one PACS (its rows are left as they
    are, its queries sent as asked)."""

    name: str
    domain: str | None
    wado: WadoUpstream


class StampedQido:
    """An archive's QIDO answers with its patient domain written into the rows that carry none
    (app.planning.fanout.stamp), before they are cached."""

    def __init__(self, upstream: Qido, issuer: str, zone: tzinfo | None = None) -> None:
        self._upstream = upstream
        self._issuer = issuer
        self._zone = zone  # its own pacs_timezone, where it differs from the facade's

    async def search(self, query: QidoQuery) -> QidoResult:
        result = await self._upstream.search(query)
        fanout.stamp(result.rows, self._issuer)
        if self._zone is not None:
            fanout.stamp_zone(result.rows, self._zone)
        return result


@dataclass(frozen=True)
class Source:
    name: str
    domain: str  # the IssuerOfPatientID of its rows that carry none
    qido: CachedQido
    breaker: CircuitBreaker | None = None

    def query(self, query: QidoQuery) -> QidoQuery:
        return fanout.source_query(query, self.domain)


class FederatedQido:
    """The cached QIDO port of several archives (module docstring); the same methods as CachedQido."""

    def __init__(
        self, sources: Sequence[Source], *, ttl: float = 0, max_rows: int | None = None, max_entries: int = 10000
    ) -> None:
        """``max_rows``: the deepest study row a page may reach (``prequery_limit``): each archive is asked for
        every row up to the end of the page, so a deeper page is refused as too costly, as the one-PACS path
        refuses a deep ModalitiesInStudy page (app.usecases.studies)."""
        assert sources, "at least one source"
        self.sources = tuple(sources)
        self._max_rows = max_rows
        # Which archives answered a query in full (fewer rows than its limit), and at which limit: a later page
        # asks each archive for the rows up to its end (app.planning.fanout), but an archive whose earlier answer
        # already held all its matches is not asked again: that answer, from the cache, is reused (issue 21,
        # rule 4). Kept as long as the answers (``ttl``); keyed on the cache partition, which names the cache
        # generation, so a write anywhere starts afresh.
        self._complete: TTLCache[tuple[str, Hashable, QidoQuery], int] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl) if ttl > 0 else None
        )

    async def search(
        self, query: QidoQuery, *, fresh: bool = False, context: Hashable = None, stale_if_error: float = 0
    ) -> QidoResult:
        offset, limit = fanout.window(query)
        if query.level == "studies" and offset and self._max_rows and offset + (limit or 0) > self._max_rows:
            raise TooCostly(
                f"a page past the first {self._max_rows} studies of several archives is too costly; "
                "narrow the search (for example with patient or started)"
            )
        answers = await self.each(query, fresh=fresh, context=context, stale_if_error=stale_if_error)
        results = [r for _, r in answers]
        notes = SOURCE_NOTES.get()
        if notes is not None and fanout.holders_known(query):
            for source, result in answers:
                held = notes.held.setdefault(source.name, set())
                held.update(uid for row in result.rows if (uid := dj.text(row, dj.STUDY_UID)))
                if limit is not None and len(result.rows) >= offset + limit:
                    # cut at its limit: a study it holds further on is not listed, so not listing one says nothing
                    notes.partial = True
        rows = fanout.merge(query.level, [r.rows for r in results], offset=offset, limit=limit)
        return QidoResult(rows, sum(r.nbytes for r in results), stale=any(r.stale for r in results))

    async def each(
        self, query: QidoQuery, *, fresh: bool = False, context: Hashable = None, stale_if_error: float = 0
    ) -> list[tuple[Source, QidoResult]]:
        """Every archive's own answer to ``query`` (as it is asked of it), for callers that need to know which
        archive holds what (the gateway: app.usecases.retrieve)."""

        narrowed = self._narrowed(query)

        async def one(s: Source) -> QidoResult:
            async def ask(q: QidoQuery) -> QidoResult:
                return await s.qido.search(q, fresh=fresh, context=context, stale_if_error=stale_if_error)

            if narrowed is not None:
                mine = narrowed.get(s.name)
                if not mine:
                    return QidoResult([], 0)  # it holds none of these studies: not asked (issue 21, rule 4)
                wanted = s.query(fanout.for_studies(query, mine))
            else:
                wanted = s.query(query)
            base, limit = fanout.unlimited(wanted)
            complete = self._complete
            if complete is None or limit is None:
                return await ask(wanted)
            known = None if fresh else complete.get((s.name, context, base))
            if known is not None and known <= limit:
                earlier = await ask(fanout.limited(base, known))  # all it holds, asked before (a cache hit)
                if len(earlier.rows) < known:
                    return earlier
                # asked again meanwhile and now holding more: the window after all
            result = await ask(wanted)
            if len(result.rows) < limit and not result.stale:
                complete[s.name, context, base] = limit
            return result

        return await each_source(self.sources, one)

    def _narrowed(self, query: QidoQuery) -> dict[str, list[str]] | None:
        """For the rows of studies this request has seen every archive's study answer for: which of them each
        archive holds. None (ask everyone for everything) when any of the studies is not known that way."""
        notes = SOURCE_NOTES.get()
        uids = fanout.studies_asked(query)
        if notes is None or uids is None or notes.failed or notes.partial or len(notes.held) < len(self.sources):
            return None
        known = set().union(*notes.held.values())
        if not all(u in known for u in uids):
            return None
        return {name: [u for u in uids if u in held] for name, held in notes.held.items()}

    def cached(self, query: QidoQuery, context: Hashable = None) -> bool:
        return all(s.qido.cached(s.query(query), context) for s in self.sources)

    @property
    def generation(self) -> int:
        """Moves whenever any archive's cache is cleared (each only grows, so the sum never repeats)."""
        return sum(s.qido.generation for s in self.sources)

    async def current_generation(self) -> int | None:
        # In turn, not gathered: with memory caches each returns without suspending, and three tasks per cached
        # answer cost the warm path 22 % of its time (bench/README.md, issue 21); Redis generations are leased.
        total = 0
        for s in self.sources:
            generation = await s.qido.current_generation()
            if generation is None:
                return None
            total += generation
        return total

    def clear(self) -> None:
        for s in self.sources:
            s.qido.clear()
        if self._complete is not None:
            self._complete.clear()

    async def invalidate(self) -> None:
        """After a write to any archive: a stored manifest (or rejection note) changes what every archive's studies
        show, so every archive's cached answers go."""
        await asyncio.gather(*(s.qido.invalidate() for s in self.sources))
        if self._complete is not None:
            self._complete.clear()

    @property
    def size_bytes(self) -> int:
        return sum(s.qido.size_bytes for s in self.sources)

    @property
    def hits(self) -> int:
        return sum(s.qido.hits for s in self.sources)

    @property
    def misses(self) -> int:
        return sum(s.qido.misses for s in self.sources)

    @property
    def stale_served(self) -> int:
        return sum(s.qido.stale_served for s in self.sources)


@dataclass(frozen=True)
class StoreSource:
    """An archive as the manifests reach it: WADO-RS metadata of KOS series, STOW-RS of new ones."""

    name: str
    store: DicomWebStore
    writable: bool  # its manifests_writable


class FederatedStore:
    """The KOS documents of every archive, and new ones stored where their study is (issue 21, rule 8).

    A KOS series is read from every archive that holds it (a copy in two is joined, each instance once); a new
    manifest goes to the first archive, in configuration order, that holds its first referenced study (the
    archive a viewer retrieving that study reaches first), and is refused when that archive does not accept
    manifests."""

    def __init__(self, stores: Sequence[StoreSource], qido: FederatedQido) -> None:
        self.stores = tuple(stores)
        self._qido = qido

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, object]]:
        answers = await each_source(self.stores, lambda s: s.store.series_metadata(study_uid, series_uid))
        seen: set[str] = set()
        joined: list[dict[str, object]] = []
        for _, datasets in answers:
            for ds in datasets:
                sop = dj.text(ds, dj.SOP_INSTANCE_UID)
                if sop is None or sop not in seen:
                    seen.add(sop or "")
                    joined.append(ds)
        return joined

    async def store(self, parts: Sequence[bytes], *, study: str | None = None) -> StowResult:
        holder = await self._holder(study)
        if not holder.writable:
            raise Unprocessable(
                f"the study is held by the archive {holder.name!r}, which does not accept manifests "
                "(manifests_writable = false for it)"
            )
        return await holder.store.store(parts)

    async def _holder(self, study: str | None) -> StoreSource:
        by_name = {s.name: s for s in self.stores}
        if study is None:
            return self.stores[0]
        query = QidoQuery.build("studies", {"StudyInstanceUID": study})
        for source, found in await self._qido.each(query, fresh=True):
            if found.rows:
                return by_name[source.name]
        noted = SOURCE_NOTES.get()
        if noted is not None and noted.failed:
            raise UpstreamUnavailable("the archive that holds the manifest's study may be one that did not answer")
        raise Unprocessable(f"no archive holds the study {study}")
