"""A page's instance rows in up to instance_query_split concurrent requests: the pure split
(app.planning.instance_split) and the use case that sends it (app.usecases.studies.instances_of / read_study),
against an in-memory PACS that pages like Orthanc (insertion order, limit and offset)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.dicom import dicom_json as dj
from app.dicom.qido import QidoQuery
from app.pacs.upstream import QidoResult
from app.planning import instance_split as split
from app.usecases.studies import Limits, instances_of, read_study


def _study(uid: str, n: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {dj.STUDY_UID: {"vr": "UI", "Value": [uid]}}
    if n is not None:
        row[dj.NUMBER_OF_STUDY_INSTANCES] = {"vr": "IS", "Value": [n]}
    return row


def _instance(study: str, i: int) -> dict[str, Any]:
    return {
        dj.STUDY_UID: {"vr": "UI", "Value": [study]},
        dj.SOP_INSTANCE_UID: {"vr": "UI", "Value": [f"{study}.{i}"]},
    }


class TestGroups:
    def test_one_group_without_a_split(self):
        assert split.groups(["1.2", "1.1"], 1) == [("1.1", "1.2")]
        assert split.groups(["1.1"], 4) == [("1.1",)]
        assert split.groups([], 2) == []

    def test_equal_numbers_of_studies_when_sizes_are_unknown(self):
        got = split.groups([f"1.{i}" for i in range(5)], 2)
        assert sorted(len(g) for g in got) == [2, 3]
        assert sorted(u for g in got for u in g) == [f"1.{i}" for i in range(5)]

    def test_balanced_by_instance_counts(self):
        sizes = {"1.1": 100, "1.2": 10, "1.3": 50, "1.4": 45}
        got = split.groups(list(sizes), 2, sizes)
        loads = sorted(sum(sizes[u] for u in g) for g in got)
        assert loads == [100, 105]

    def test_every_study_in_exactly_one_group(self):
        uids = [f"1.{i}" for i in range(37)]
        sizes = {u: (i * 7) % 13 for i, u in enumerate(uids)}
        for parts in (2, 3, 5, 40):
            got = split.groups(uids + uids[:3], parts, sizes)  # repeated UIDs are asked for once
            flat = [u for g in got for u in g]
            assert sorted(flat) == sorted(uids) and len(got) <= parts
            assert all(list(g) == sorted(g) for g in got)

    def test_a_small_counted_page_is_not_split(self):
        sizes = {"1.1": 3, "1.2": 3}
        assert split.groups(list(sizes), 2, sizes) == [("1.1", "1.2")]
        sizes = {"1.1": split.MIN_SPLIT_ROWS, "1.2": 0}
        assert len(split.groups(list(sizes), 2, sizes)) == 2

    def test_sizes_missing_for_a_study_count_studies_instead(self):
        got = split.groups(["1.1", "1.2", "1.3", "1.4"], 2, {"1.1": 1000})
        assert sorted(len(g) for g in got) == [2, 2]

    def test_the_same_page_gives_the_same_requests(self):
        sizes = {f"1.{i}": 12 for i in range(6)}
        assert split.groups(list(sizes), 2, sizes) == split.groups(list(reversed(sizes)), 2, sizes)


class TestWindows:
    def test_counts_from_study_rows(self):
        rows = [_study("1.1", 12), _study("1.2", None), {dj.NUMBER_OF_STUDY_INSTANCES: {"vr": "IS", "Value": [3]}}]
        assert split.counts(rows, "instances") == {"1.1": 12}

    def test_first_window_is_one_query_whatever_is_known(self):
        query = split.first_window("1.2.3")
        assert ("limit", str(split.SPLIT_ROWS)) in query.params and "offset" not in dict(query.params)
        assert split.splits_study(2, 20000) and not split.splits_study(1, 20000)
        assert not split.splits_study(2, split.SPLIT_ROWS)  # a window as large as a request: nothing to gain

    def test_joined_drops_an_instance_seen_twice_and_says_so(self):
        a = [_instance("1.1", i) for i in range(3)]
        rows, disjoint = split.joined(a, [_instance("1.1", 3)])
        assert len(rows) == 4 and disjoint
        rows, disjoint = split.joined(a, [_instance("1.1", 2), _instance("1.1", 3)])
        assert [dj.text(r, dj.SOP_INSTANCE_UID) for r in rows] == [f"1.1.{i}" for i in range(4)] and not disjoint

    def test_complete_against_the_count(self):
        rows = [_instance("1.1", i) for i in range(3)]
        assert split.complete(rows, 3) and split.complete(rows, 2) and split.complete(rows, None)
        assert not split.complete(rows, 4)


class FakePacs:
    """Instance-level QIDO over a StudyInstanceUID list, in insertion order, with limit and offset; records each
    query and how many were in flight at once. ``shift`` reorders the answer of offset requests (an order that is
    not stable); ``drop`` is an instance the offset requests no longer see (deleted between two requests)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.rows = [_instance(uid, i) for uid, n in sizes.items() for i in range(n)]
        self.studies = {uid: _study(uid, n) for uid, n in sizes.items()}
        self.queries: list[QidoQuery] = []
        self.in_flight = self.most_in_flight = 0
        self.shift = False
        self.drop: str | None = None

    async def __call__(self, query: QidoQuery) -> QidoResult:
        self.queries.append(query)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        params = dict(query.params)
        uids = set(params["StudyInstanceUID"].split(","))
        if query.level == "studies":
            return QidoResult([self.studies[u] for u in sorted(uids) if u in self.studies], 1)
        offset, limit = int(params.get("offset", 0)), int(params["limit"])
        rows = [r for r in self.rows if dj.text(r, dj.STUDY_UID) in uids]
        if offset and self.shift:
            rows = rows[1:] + rows[:1]
        if offset and self.drop:
            rows = [r for r in rows if dj.text(r, dj.SOP_INSTANCE_UID) != self.drop]
        return QidoResult(rows[offset : offset + limit], 1)

    def sops(self, uid: str) -> list[str]:
        return [f"{uid}.{i}" for i in range(int(dj.integer(self.studies[uid], dj.NUMBER_OF_STUDY_INSTANCES) or 0))]


def _limits(split_: int, instances: int = 20000) -> Limits:
    return Limits(uid_batch=100, instances=instances, prequery=2000, split=split_)


def _got(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {uid: sorted(dj.text(r, dj.SOP_INSTANCE_UID) or "" for r in rows) for uid, rows in found.items()}


def _want(pacs: FakePacs) -> dict[str, list[str]]:
    return {uid: sorted(pacs.sops(uid)) for uid in pacs.studies}


class TestInstancesOf:
    def test_several_studies_in_two_concurrent_requests_with_the_same_rows(self):
        sizes = {f"1.{i}": 12 for i in range(5)}
        one, two = FakePacs(sizes), FakePacs(sizes)
        rows = list(one.studies.values())
        a = asyncio.run(instances_of(list(sizes), one, _limits(1), study_rows=rows))
        b = asyncio.run(instances_of(list(sizes), two, _limits(2), study_rows=rows))
        assert _got(a) == _got(b) == _want(one)
        assert len(one.queries) == 1 and len(two.queries) == 2 and two.most_in_flight == 2

    def test_split_1_asks_exactly_as_before(self):
        pacs = FakePacs({"1.1": 1200})
        asyncio.run(instances_of(["1.1"], pacs, _limits(1), study_rows=list(pacs.studies.values())))
        (query,) = pacs.queries
        assert query.path.startswith("instances?StudyInstanceUID=1.1&") and "limit=20000" in query.path

    def test_one_large_study_in_two_windows_at_once(self):
        pacs = FakePacs({"1.1": 1200})
        found = asyncio.run(instances_of(["1.1"], pacs, _limits(2), study_rows=list(pacs.studies.values())))
        assert _got(found) == _want(pacs)
        windows = sorted((dict(q.params).get("offset", "0"), dict(q.params)["limit"]) for q in pacs.queries)
        assert windows == [("0", str(split.SPLIT_ROWS)), (str(split.SPLIT_ROWS), "20000")]
        assert pacs.most_in_flight == 2

    def test_a_small_study_is_one_request(self):
        pacs = FakePacs({"1.1": 12})
        found = asyncio.run(instances_of(["1.1"], pacs, _limits(2), study_rows=list(pacs.studies.values())))
        assert _got(found) == _want(pacs) and pacs.queries == [split.first_window("1.1")]

    @pytest.mark.parametrize("n", [split.SPLIT_ROWS, split.SPLIT_ROWS + 1, 1234])
    def test_without_a_count_a_full_first_window_is_followed(self, n):
        pacs = FakePacs({"1.1": n})
        found = asyncio.run(instances_of(["1.1"], pacs, _limits(2), study_rows=[]))
        assert _got(found) == _want(pacs) and len(pacs.queries) == 2 and pacs.most_in_flight == 1

    def test_windows_in_another_order_are_asked_again_in_one_request(self):
        pacs = FakePacs({"1.1": 900})
        pacs.shift = True  # the offset window's order moved by one: one instance twice, one missing
        found = asyncio.run(instances_of(["1.1"], pacs, _limits(2), study_rows=list(pacs.studies.values())))
        assert _got(found) == _want(pacs)
        assert len(pacs.queries) == 3 and "limit=20000" in pacs.queries[-1].path
        assert "offset" not in pacs.queries[-1].path

    def test_fewer_instances_than_the_count_are_asked_again_in_one_request(self):
        pacs = FakePacs({"1.1": 900})
        pacs.drop = "1.1.0"  # deleted between the two windows: the offset window skips a kept instance
        found = asyncio.run(instances_of(["1.1"], pacs, _limits(2), study_rows=list(pacs.studies.values())))
        assert _got(found) == _want(pacs) and len(pacs.queries) == 3

    def test_the_rest_is_paged_past_the_row_limit(self):
        pacs = FakePacs({"1.1": 1700})
        found = asyncio.run(
            instances_of(["1.1"], pacs, _limits(2, instances=600), study_rows=list(pacs.studies.values()))
        )
        assert _got(found) == _want(pacs)
        offsets = sorted(int(dict(q.params).get("offset", 0)) for q in pacs.queries)
        assert offsets == [0, 500, 1100, 1700]

    def test_rows_of_studies_another_request_asked_for_are_not_taken_twice(self):
        sizes = {f"1.{i}": 20 for i in range(4)}
        pacs = FakePacs(sizes)

        async def everything(query: QidoQuery) -> QidoResult:
            await pacs(query)
            return QidoResult(pacs.rows, 1)  # a PACS that ignores the UID list

        found = asyncio.run(instances_of(list(sizes), everything, _limits(2), study_rows=list(pacs.studies.values())))
        assert _got(found) == _want(pacs)


class TestRead:
    def test_a_large_read_sends_the_rest_once_the_study_row_counts_it(self):
        pacs = FakePacs({"1.1": 1500})
        found = asyncio.run(read_study("1.1", pacs, _limits(2)))
        assert found is not None
        row, rows = found
        assert dj.text(row, dj.STUDY_UID) == "1.1"
        assert sorted(dj.text(r, dj.SOP_INSTANCE_UID) or "" for r in rows) == sorted(pacs.sops("1.1"))
        levels = sorted(q.level for q in pacs.queries)
        assert levels == ["instances", "instances", "studies"] and pacs.most_in_flight >= 2

    def test_a_small_read_costs_two_requests_as_before(self):
        pacs = FakePacs({"1.1": 12})
        found = asyncio.run(read_study("1.1", pacs, _limits(2)))
        assert found is not None and len(found[1]) == 12 and len(pacs.queries) == 2

    def test_an_unknown_study_has_no_rows(self):
        assert asyncio.run(read_study("1.9", FakePacs({"1.1": 3}), _limits(2))) is None
