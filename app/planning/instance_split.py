"""How the instance rows of a page are asked for in up to ``instance_query_split`` concurrent QIDO requests (pure).

Why: Debian's Orthanc 1.10 works through one instance query on one core, and two instance queries sent at once
run on both (a study query and an instance query do not: it serializes those). The instance query is most of a
page's PACS time, so splitting it is the one upstream concurrency that shortens a cold page (bench/README.md,
"Cold answers").
Each extra request costs the PACS a few ms of fixed work, so a split is made only where it pays:

* a page of two or more studies: its StudyInstanceUIDs in groups of about equal instance counts (the study rows'
  NumberOfStudyRelatedInstances when known, else equal numbers of studies). Exact by construction: every study is
  in exactly one group, whatever order the PACS answers in.
* one study of more than :data:`SPLIT_ROWS` instances: its rows in two windows, ``limit=SPLIT_ROWS`` and
  ``offset=SPLIT_ROWS``. QIDO paging gives a stable insertion order (PS3.18 §8.3.4.4; shared/docs/orthanc-qido.md
  TL;DR 3), but windows depend on it, so :func:`joined` drops a repeated instance and the use case asks again in
  one request when the windows disagree with each other or with the study row's count. The first window is the
  same request whether or not the study row is known yet (a read sends it beside the study query), so a read and a
  search of the same study share their cached answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..dicom import dicom_json as dj
from ..dicom.qido import INSTANCE_FIELDS, SERIES_FIELDS, QidoQuery, uid_list

# One study's rows are split past this many: below it the fixed cost of a second request (and its extra lookup of
# the study's instances) outweighs the halved per-instance work; measured on Orthanc 1.10 (bench/README.md, "Cold
# answers").
SPLIT_ROWS = 500
# A page of several studies whose rows are counted is split only from this many rows on (about 3 ms of PACS CPU
# per request against about 0.5 ms per instance row).
MIN_SPLIT_ROWS = 32


def row_query(uids: Sequence[str], level: str, *, limit: int, offset: int = 0) -> QidoQuery:
    """The instance (or, for ``_summary=true``, series) rows of these studies, ``limit`` rows from ``offset``."""
    fields = INSTANCE_FIELDS if level == "instances" else SERIES_FIELDS
    keys = {"StudyInstanceUID": uid_list(sorted(uids))}
    return QidoQuery.build(level, keys, fields=fields, limit=limit, offset=offset)


def counts(study_rows: Iterable[dj.Dataset], level: str) -> dict[str, int]:
    """Rows each study will give at ``level``, as its study row says (studies without the count are left out)."""
    tag = dj.NUMBER_OF_STUDY_INSTANCES if level == "instances" else dj.NUMBER_OF_SERIES
    out: dict[str, int] = {}
    for row in study_rows:
        uid, n = dj.text(row, dj.STUDY_UID), dj.integer(row, tag)
        if uid and n is not None and n >= 0:
            out[uid] = n
    return out


def groups(uids: Sequence[str], parts: int, sizes: Mapping[str, int] | None = None) -> list[tuple[str, ...]]:
    """The studies in at most ``parts`` groups of about equal rows, each group and the list in a stable order.

    ``sizes`` (rows per study) balances the groups when it covers every study; without it the groups hold equal
    numbers of studies. One group (no split) when ``parts`` < 2, fewer than two studies, or known sizes that add up
    to less than :data:`MIN_SPLIT_ROWS`.
    """
    ordered = sorted(dict.fromkeys(uids))
    known = sizes is not None and all(u in sizes for u in ordered)
    weight = {u: (sizes[u] if known and sizes is not None else 1) for u in ordered}
    if parts < 2 or len(ordered) < 2 or (known and sum(weight.values()) < MIN_SPLIT_ROWS):
        return [tuple(ordered)] if ordered else []
    # Longest processing time first: the largest study goes to the lightest group (ties: the first group).
    bins: list[list[str]] = [[] for _ in range(min(parts, len(ordered)))]
    loads = [0] * len(bins)
    for uid in sorted(ordered, key=lambda u: (-weight[u], u)):
        lightest = loads.index(min(loads))
        bins[lightest].append(uid)
        loads[lightest] += max(weight[uid], 1)
    return [tuple(sorted(b)) for b in sorted(bins, key=lambda b: min(b)) if b]


def splits_study(parts: int, row_limit: int) -> bool:
    """Whether one study's rows are asked for in windows (``instance_query_split`` ≥ 2, and a first window smaller
    than the rows one request may carry)."""
    return parts >= 2 and row_limit > SPLIT_ROWS


def first_window(uid: str) -> QidoQuery:
    """The first :data:`SPLIT_ROWS` instance rows of one study: sent before its size is known."""
    return row_query([uid], "instances", limit=SPLIT_ROWS)


def joined(first: list[dj.Dataset], rest: list[dj.Dataset]) -> tuple[list[dj.Dataset], bool]:
    """Both windows' rows, each instance once; and whether the windows were disjoint (no instance in both, which
    a shifted order between the two requests would show)."""
    seen: set[str] = set()
    out: list[dj.Dataset] = []
    disjoint = True
    for row in (*first, *rest):
        sop = dj.text(row, dj.SOP_INSTANCE_UID)
        if sop is not None:
            if sop in seen:
                disjoint = False
                continue
            seen.add(sop)
        out.append(row)
    return out, disjoint


def complete(rows: list[dj.Dataset], expected: int | None) -> bool:
    """Whether the windows gave at least the instances the study row counts (more: stored since; unknown: yes)."""
    return expected is None or len(rows) >= expected
