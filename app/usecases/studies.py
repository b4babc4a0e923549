"""Running a planned ImagingStudy search or read against the (cached) QIDO port.

Cost per page of k ≤ uid_batch studies: one study-level query, then one instance-level query for the k studies
(StudyInstanceUID list), which also carries every series attribute: 2 upstream requests. When the study UIDs are
known before asking (a read, ``_id``, a Study UID identifier, or after a pre-query) the two go out concurrently.
Series/instance-level criteria add one pre-query each (app.planning.plan), and what the caller's ``screen`` of its rows
costs (app.usecases.service: a KO query of the studies found, to leave IOCM-rejected instances out). The instance query
is paged only past ``instance_limit`` rows, and sent as up to ``instance_query_split`` concurrent requests where
that pays (app.planning.instance_split: a page of several studies, or one study of many instances): one more
request, the same rows. A global modality page at offset o reads o + count + 1 study rows, because Orthanc 1.10
cannot page a ModalitiesInStudy match (:data:`OFFSET_BROKEN_BY`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from ..dicom import dicom_json as dj
from ..dicom.qido import STUDY_FIELDS, QidoQuery, uid_list
from ..errors import TooCostly
from ..fhir.dates import dicom_interval
from ..fhir.search import is_uid
from ..pacs.upstream import QidoResult
from ..planning import instance_split as split
from ..planning.plan import Plan, Prequery

Fetch = Callable[[QidoQuery], Awaitable[QidoResult]]
# Leaves out the pre-query rows that must not count (the service's: rows of IOCM-rejected instances,
# app.dicom.rejections).
Screen = Callable[[Prequery, list[dj.Dataset]], Awaitable[list[dj.Dataset]]]
MAX_INSTANCE_PAGES = 5


@dataclass(frozen=True)
class Limits:
    uid_batch: int  # UIDs per QIDO UID list (URL length)
    instances: int  # rows per instance-level request
    prequery: int  # rows a pre-query may match
    split: int = 1  # concurrent requests a page's instance rows may be asked for in (instance_query_split)


@dataclass(frozen=True)
class StudyPage:
    studies: list[tuple[dj.Dataset, list[dj.Dataset]]]  # (study row, its instance rows)
    has_next: bool


async def search_page(
    plan: Plan,
    fetch: Fetch,
    *,
    count: int,
    offset: int,
    limits: Limits,
    level: str = "instances",
    screen: Screen | None = None,
) -> StudyPage:
    """``level="series"`` (``_summary=true``): series-level rows instead of instance rows, per study."""
    if plan.nothing or count == 0:
        return StudyPage([], has_next=False)
    if plan.prequeries or plan.study_uids is not None:
        # The candidate UIDs are known up front: page over them here, and ask for the window's studies and
        # their instances at the same time (neither request needs the other's answer).
        order = await _candidate_uids(plan, fetch, limits.prequery, screen)
        window = order[offset : offset + count]
        study_rows = asyncio.ensure_future(_studies_by_uid(window, plan.study_keys, fetch, limits.uid_batch))
        rows, instances = await asyncio.gather(
            study_rows, instances_of(window, fetch, limits, level=level, study_rows=study_rows)
        )
        return _page([r for r in rows if plan.accepts(r)], instances, has_next=len(order) > offset + count)
    # One row more than asked tells whether a next page exists (QIDO gives no total, PS3.18 §8.3.4.4).
    rows = (await fetch(_page_query(plan.study_keys, count=count, offset=offset, limits=limits))).rows
    if OFFSET_BROKEN_BY in plan.study_keys:
        rows = rows[offset:]
    has_next = len(rows) > count
    rows = [r for r in _dedupe(rows[:count]) if plan.accepts(r)]
    uids = [dj.text(r, dj.STUDY_UID) or "" for r in rows]
    instances = await instances_of(uids, fetch, limits, level=level, study_rows=rows)
    return _page(rows, instances, has_next=has_next)


# Debian's Orthanc 1.10.1 + DICOMweb 1.7 mis-applies ``offset`` whenever ModalitiesInStudy is a study-level key:
# it takes ``limit`` matches and then skips ``offset`` of them, so a page holds max(0, limit - offset) rows
# (measured: 31 KO studies, limit=11 gives 11, 6, 1, 0 rows at offset 0, 5, 10, 20; shared/docs/orthanc-qido.md
# TL;DR 3). Every other study-level key pages correctly there. PS3.18 §8.3.4.4 means offset to skip matches.
OFFSET_BROKEN_BY = "ModalitiesInStudy"


def _page_query(keys: dict[str, str], *, count: int, offset: int, limits: Limits) -> QidoQuery:
    """The study-level request for the page at ``offset`` plus one row (does a next page exist?).

    With ModalitiesInStudy the page is asked for from offset 0 (``offset + count + 1`` rows) and cut by the caller,
    which is correct on any PACS. A deep page therefore reads every row before it; like the other searches that
    read all candidates (:func:`all_matching`), it is refused past ``limits.prequery`` rows.
    """
    if OFFSET_BROKEN_BY not in keys or not offset:
        return QidoQuery.build("studies", keys, fields=STUDY_FIELDS, limit=count + 1, offset=offset)
    if offset + count > limits.prequery:
        raise TooCostly(
            f"a modality search page past the first {limits.prequery} studies is too costly; "
            "narrow the search (for example with patient or started)"
        )
    return QidoQuery.build("studies", keys, fields=STUDY_FIELDS, limit=offset + count + 1)


def _page(rows: list[dj.Dataset], instances: dict[str, list[dj.Dataset]], *, has_next: bool) -> StudyPage:
    return StudyPage([(r, instances.get(dj.text(r, dj.STUDY_UID) or "", [])) for r in rows], has_next)


async def read_study(uid: str, fetch: Fetch, limits: Limits) -> tuple[dj.Dataset, list[dj.Dataset]] | None:
    cached = getattr(fetch, "cached", None)
    split_rows = split.splits_study(limits.split, limits.instances)
    first = split.first_window(uid) if split_rows else _instance_query([uid], "instances", limits)
    if cached is not None and cached(_study_query([uid], {})) and cached(first):
        # Both answers are in memory: awaited in turn they never suspend, whereas gathering them would queue the
        # request twice behind every other ready task on a busy event loop (bench/README.md, load run).
        rows = await _studies_by_uid([uid], {}, fetch, limits.uid_batch)
        instances = await instances_of([uid], fetch, limits, study_rows=rows)
    else:
        study_rows = asyncio.ensure_future(_studies_by_uid([uid], {}, fetch, limits.uid_batch))
        rows, instances = await asyncio.gather(study_rows, instances_of([uid], fetch, limits, study_rows=study_rows))
    return (rows[0], instances.get(uid, [])) if rows else None


async def all_matching(
    plan: Plan, fetch: Fetch, limits: Limits, *, why: str = "counting or sorting them", screen: Screen | None = None
) -> list[dj.Dataset]:
    """Every study row the plan accepts, in PACS order; for an honest count, a global sort, or patients.

    Refused as too costly past ``limits.prequery`` candidate studies: QIDO can neither count nor sort.
    """
    if plan.nothing:
        return []
    if plan.prequeries or plan.study_uids is not None:
        order = await _candidate_uids(plan, fetch, limits.prequery, screen)
        too_many = len(order) > limits.prequery
        rows = [] if too_many else await _studies_by_uid(order, plan.study_keys, fetch, limits.uid_batch)
    else:
        query = QidoQuery.build("studies", plan.study_keys, fields=STUDY_FIELDS, limit=limits.prequery + 1)
        rows = _dedupe((await fetch(query)).rows)
        too_many = len(rows) > limits.prequery
    if too_many:
        raise TooCostly(f"more than {limits.prequery} studies match; {why} is too costly")
    return [r for r in rows if plan.accepts(r)]


def sort_by_started(rows: list[dj.Dataset], zone: tzinfo | None, *, descending: bool) -> list[dj.Dataset]:
    """FHIR _sort on ImagingStudy.started: by the start of each study's interval; studies without a date last."""

    def key(row: dj.Dataset) -> datetime:
        interval, _ = dicom_interval(
            dj.text(row, dj.STUDY_DATE), dj.text(row, dj.STUDY_TIME), dj.text(row, dj.TIMEZONE_OFFSET), zone
        )
        return interval.low if interval else datetime.min.replace(tzinfo=UTC)

    dated = [r for r in rows if dj.text(r, dj.STUDY_DATE)]
    undated = [r for r in rows if not dj.text(r, dj.STUDY_DATE)]
    return sorted(dated, key=key, reverse=descending) + undated


async def window_page(
    rows: list[dj.Dataset], fetch: Fetch, *, count: int, offset: int, limits: Limits, level: str = "instances"
) -> StudyPage:
    """A page cut from already known (counted or sorted) study rows, with their instance or series rows."""
    window = rows[offset : offset + count]
    uids = [dj.text(r, dj.STUDY_UID) or "" for r in window]
    instances = await instances_of(uids, fetch, limits, level=level, study_rows=window)
    return _page(window, instances, has_next=len(rows) > offset + count)


StudyRows = list[dj.Dataset] | asyncio.Future[list[dj.Dataset]]


async def instances_of(
    uids: list[str],
    fetch: Fetch,
    limits: Limits,
    *,
    level: str = "instances",
    study_rows: StudyRows | None = None,
) -> dict[str, list[dj.Dataset]]:
    """All instance (or series) rows of these studies: one request per ``uid_batch`` studies (more past
    ``instance_limit`` rows), split into up to ``limits.split`` concurrent ones where that pays
    (app.planning.instance_split). ``study_rows`` (the studies' rows, or the request still asking for them) say how
    many instances each study holds."""
    out: dict[str, list[dj.Dataset]] = {uid: [] for uid in uids}
    known = split.counts(study_rows, level) if isinstance(study_rows, list) else None
    for batch in _batches(sorted(uids), limits.uid_batch):
        groups = split.groups(batch, limits.split, known)
        if len(groups) > 1 and not _all_cached(
            fetch, [split.row_query(g, level, limit=limits.instances) for g in groups]
        ):
            found = await asyncio.gather(*(_paged(list(g), level, fetch, limits) for g in groups))
        elif len(groups) > 1:
            found = [await _paged(list(g), level, fetch, limits) for g in groups]  # in memory: no need to queue
        elif len(batch) == 1 and level == "instances" and split.splits_study(limits.split, limits.instances):
            found = [await _windows(batch[0], fetch, limits, study_rows)]
        else:
            found = [await _paged(batch, level, fetch, limits)]
        for group, rows in zip(groups, found, strict=True):
            asked = set(group)  # a row of a study another request asked for is that request's to give
            for row in rows:
                uid = dj.text(row, dj.STUDY_UID)
                if uid in asked:
                    out[uid].append(row)
    return out


async def _paged(uids: list[str], level: str, fetch: Fetch, limits: Limits, start: int = 0) -> list[dj.Dataset]:
    """The rows of these studies from row ``start`` on, ``instance_limit`` per request, at most
    MAX_INSTANCE_PAGES requests."""
    out: list[dj.Dataset] = []
    for page in range(MAX_INSTANCE_PAGES):
        offset = start + page * limits.instances
        rows = (await fetch(split.row_query(uids, level, limit=limits.instances, offset=offset))).rows
        out += rows
        if len(rows) < limits.instances:
            return out
    raise TooCostly(
        f"these studies hold more than {MAX_INSTANCE_PAGES * limits.instances} instances; "
        "ask for fewer per page with _count"
    )


async def _windows(uid: str, fetch: Fetch, limits: Limits, study_rows: StudyRows | None) -> list[dj.Dataset]:
    """One study's instance rows: the first SPLIT_ROWS at once; the rest, beside them, once its study row counts
    more (after them, when their window comes back full without a count). Windows that disagree (an instance in
    both, or fewer than the study row counts) are asked again in one request: never a missed or repeated instance."""
    first: Awaitable[QidoResult]
    if isinstance(study_rows, asyncio.Future):
        # The first window goes out beside the study query (a read); the rest waits for the study's count.
        pending = first = asyncio.ensure_future(fetch(split.first_window(uid)))
        try:
            rows = await study_rows
        except BaseException:
            pending.cancel()
            raise
    else:
        first, rows = fetch(split.first_window(uid)), study_rows or []
    expected = split.counts(rows, "instances").get(uid)
    if expected is not None and expected > split.SPLIT_ROWS:
        head, tail = await asyncio.gather(first, _paged([uid], "instances", fetch, limits, split.SPLIT_ROWS))
        head_rows = head.rows
    else:
        head_rows = (await first).rows
        if len(head_rows) < split.SPLIT_ROWS:
            return head_rows  # one request after all: nothing to check against another
        tail = await _paged([uid], "instances", fetch, limits, split.SPLIT_ROWS)
    joined, disjoint = split.joined(head_rows, tail)
    if disjoint and split.complete(joined, expected):
        return joined
    return await _paged([uid], "instances", fetch, limits)


def _all_cached(fetch: Fetch, queries: list[QidoQuery]) -> bool:
    cached = getattr(fetch, "cached", None)
    return cached is not None and all(cached(q) for q in queries)


async def _studies_by_uid(uids: list[str], keys: dict[str, str], fetch: Fetch, batch: int) -> list[dj.Dataset]:
    """Study rows for these UIDs, in this order (UID list matching, PS3.18 §8.3.4.1)."""
    found: dict[str, dj.Dataset] = {}
    for part in _batches(uids, batch):
        for row in _dedupe((await fetch(_study_query(part, keys))).rows):
            found.setdefault(dj.text(row, dj.STUDY_UID) or "", row)
    return [found[uid] for uid in uids if uid in found]


def _study_query(uids: list[str], keys: dict[str, str]) -> QidoQuery:
    return QidoQuery.build("studies", keys | {"StudyInstanceUID": uid_list(sorted(uids))}, fields=STUDY_FIELDS)


def _instance_query(uids: list[str], level: str, limits: Limits) -> QidoQuery:
    return split.row_query(uids, level, limit=limits.instances)


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _candidate_uids(plan: Plan, fetch: Fetch, limit: int, screen: Screen | None = None) -> list[str]:
    """The studies every pre-query finds, in the order of the first. ``screen`` sees the rows of the studies
    still in the running only (none once a pre-query finds nothing), so it costs nothing on an empty answer."""
    order: list[str] | None = list(plan.study_uids) if plan.study_uids is not None else None
    for pre in plan.prequeries:
        rows = (await fetch(pre.query)).rows
        if len(rows) > limit:
            raise TooCostly(
                "a series/instance-level criterion matches too many series or instances; "
                "narrow the search (for example with patient)"
            )
        found = list(dict.fromkeys(pre.study_uids(rows)))
        if order is not None:
            here = set(found)
            found = [u for u in order if u in here]
        if screen is not None and found:
            running = set(found)
            left = set(pre.study_uids(await screen(pre, [r for r in rows if dj.text(r, dj.STUDY_UID) in running])))
            found = [u for u in found if u in left]
        order = found
    assert order is not None
    return order


def _dedupe(rows: list[dj.Dataset]) -> list[dj.Dataset]:
    """Drop repeated rows, and rows whose StudyInstanceUID is no UID (it could not be a FHIR id)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        uid = dj.text(row, dj.STUDY_UID)
        if uid and is_uid(uid) and uid not in seen:
            seen.add(uid)
            out.append(row)
    return out
