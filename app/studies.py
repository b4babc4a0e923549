"""Running a planned ImagingStudy search or read against the (cached) QIDO port.

Cost per page, whatever its size k: one study-level query, then one instance-level query for the k studies
(StudyInstanceUID list), which also carries every series attribute: 2 upstream requests. Series/instance-level
criteria add one pre-query each (app.plan). The instance query is paged only past ``instance_limit`` rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import dicom_json as dj
from .errors import TooCostly
from .plan import Plan
from .qido import INSTANCE_FIELDS, STUDY_FIELDS, QidoQuery, uid_list
from .upstream import QidoResult

Fetch = Callable[[QidoQuery], Awaitable[QidoResult]]
MAX_INSTANCE_PAGES = 5


@dataclass(frozen=True)
class StudyPage:
    studies: list[tuple[dj.Dataset, list[dj.Dataset]]]  # (study row, its instance rows)
    has_next: bool


async def search_page(plan: Plan, fetch: Fetch, *, count: int, offset: int, prequery_limit: int,
                      instance_limit: int) -> StudyPage:
    if plan.nothing or count == 0:
        return StudyPage([], has_next=False)
    if plan.prequeries:
        order = await _prequery_uids(plan, fetch, prequery_limit)
        window = order[offset:offset + count]
        if not window:
            return StudyPage([], has_next=False)
        query = QidoQuery.build("studies", plan.study_keys | {"StudyInstanceUID": uid_list(window)},
                                fields=STUDY_FIELDS)
        rank = {uid: i for i, uid in enumerate(window)}
        rows = sorted(_dedupe((await fetch(query)).rows), key=lambda r: rank.get(dj.text(r, dj.STUDY_UID) or "", 0))
        has_next = len(order) > offset + count
    else:
        keys = dict(plan.study_keys)
        if plan.study_uids is not None:
            keys["StudyInstanceUID"] = uid_list(plan.study_uids)
        # One row more than asked tells whether a next page exists (QIDO gives no total, §8.3.4.4).
        query = QidoQuery.build("studies", keys, fields=STUDY_FIELDS, limit=count + 1, offset=offset)
        rows = (await fetch(query)).rows
        has_next = len(rows) > count
        rows = _dedupe(rows[:count])
    rows = [r for r in rows if plan.accepts(r)]
    instances = await instances_of([dj.text(r, dj.STUDY_UID) or "" for r in rows], fetch, instance_limit)
    return StudyPage([(r, instances.get(dj.text(r, dj.STUDY_UID) or "", [])) for r in rows], has_next)


async def read_study(uid: str, fetch: Fetch, *, instance_limit: int) -> tuple[dj.Dataset, list[dj.Dataset]] | None:
    rows = (await fetch(QidoQuery.build("studies", {"StudyInstanceUID": uid_list([uid])}, fields=STUDY_FIELDS))).rows
    rows = [r for r in rows if dj.text(r, dj.STUDY_UID) == uid]
    if not rows:
        return None
    instances = await instances_of([uid], fetch, instance_limit)
    return rows[0], instances.get(uid, [])


async def instances_of(uids: list[str], fetch: Fetch, limit: int) -> dict[str, list[dj.Dataset]]:
    """All instance rows of these studies in one request (more only past ``limit`` rows)."""
    out: dict[str, list[dj.Dataset]] = {uid: [] for uid in uids}
    if not uids:
        return out
    keys = {"StudyInstanceUID": uid_list(sorted(uids))}
    for page in range(MAX_INSTANCE_PAGES):
        rows = (await fetch(QidoQuery.build("instances", keys, fields=INSTANCE_FIELDS, limit=limit,
                                            offset=page * limit))).rows
        for row in rows:
            uid = dj.text(row, dj.STUDY_UID)
            if uid in out:
                out[uid].append(row)
        if len(rows) < limit:
            return out
    raise TooCostly(f"these studies hold more than {MAX_INSTANCE_PAGES * limit} instances; ask for fewer per page "
                    "with _count")


async def _prequery_uids(plan: Plan, fetch: Fetch, limit: int) -> list[str]:
    order: list[str] | None = None
    for pre in plan.prequeries:
        rows = (await fetch(pre.query)).rows
        if len(rows) > limit:
            raise TooCostly("a series/instance-level criterion matches too many series or instances; "
                            "narrow the search (for example with patient)")
        found = list(dict.fromkeys(pre.study_uids(rows)))
        order = found if order is None else [u for u in order if u in set(found)]
    assert order is not None
    if plan.study_uids is not None:
        allowed = set(plan.study_uids)
        order = [u for u in order if u in allowed]
    return order


def _dedupe(rows: list[dj.Dataset]) -> list[dj.Dataset]:
    seen: set[str] = set()
    out = []
    for row in rows:
        uid = dj.text(row, dj.STUDY_UID)
        if uid and uid not in seen:
            seen.add(uid)
            out.append(row)
    return out
