"""app.pacs.changes: Orthanc's change feed read exactly, and the follower that clears cached answers on it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.pacs.changes import ChangeFollower, FeedError, OrthancChanges, Poll


class Orthanc:
    """/changes, /statistics and the resources the entries name, as Orthanc 1.10 answers them
    (shared/docs/change-feeds.md): patient "P<n>" holds studies "S<n>", series "R<n>" and instances "I<n>"."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.instances = 10
        self.status = 200
        self.asked: list[str] = []
        self.parents: dict[str, str] = {}  # resource id -> parent id
        self.gone: set[str] = set()

    def add(self, kind: str, rid: str = "I1", level: str = "Instance") -> None:
        seq = (self.entries[-1]["Seq"] if self.entries else 0) + 1
        entry = {"Seq": seq, "ChangeType": kind, "ResourceType": level, "ID": rid, "Path": f"/x/{rid}"}
        self.entries.append(entry)

    def store(self, patient: str, study: str, series: str, *instances: str) -> None:
        """Instances stored: their entries as Orthanc logs them (NewPatient, NewStudy, NewSeries when new)."""
        for rid, parent, level in ((study, patient, "Study"), (series, study, "Series")):
            if rid not in self.parents:
                self.parents[rid] = parent
                self.add(f"New{level}", rid, level)
        for rid in instances:
            self.parents[rid] = series
            self.add("NewInstance", rid)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.asked.append(path)
        if self.status != 200:
            return httpx.Response(self.status)
        last = self.entries[-1]["Seq"] if self.entries else 0
        if path == "/statistics":
            return httpx.Response(200, json={"CountInstances": self.instances, "CountStudies": 1})
        if path == "/changes":
            if "last" in request.url.params:
                return httpx.Response(200, json={"Changes": self.entries[-1:], "Done": True, "Last": last})
            since, limit = int(request.url.params["since"]), int(request.url.params["limit"])
            page = [e for e in self.entries if e["Seq"] > since][:limit]
            done = not page or page[-1]["Seq"] == last
            return httpx.Response(200, json={"Changes": page, "Done": done, "Last": last})
        return self._resource(path)

    def _resource(self, path: str) -> httpx.Response:
        parts = path.strip("/").split("/")
        rid = parts[1]
        if rid in self.gone or (rid not in self.parents and not rid.startswith("P")):
            return httpx.Response(404, json={"Message": "Unknown resource"})
        if parts[0] == "instances" and parts[2:] == ["series"]:
            return httpx.Response(200, json={"ID": self.parents[rid], "Type": "Series"})
        if parts[0] == "patients":
            return httpx.Response(200, json={"ID": rid, "MainDicomTags": {"PatientID": rid.lower()}})
        if parts[0] == "studies":
            body = {
                "ID": rid,
                "MainDicomTags": {"StudyInstanceUID": f"1.2.{rid[1:]}"},
                "PatientMainDicomTags": {"PatientID": self.parents[rid].lower()},
            }
            return httpx.Response(200, json=body)
        if parts[0] == "series":
            listed = [i for i, p in self.parents.items() if p == rid and i.startswith("I")]
            return httpx.Response(200, json={"ID": rid, "ParentStudy": self.parents[rid], "Instances": listed})
        return httpx.Response(404)


@pytest.fixture
def orthanc() -> Orthanc:
    return Orthanc()


@pytest.fixture
def feed(orthanc: Orthanc) -> OrthancChanges:
    return OrthancChanges(httpx.MockTransport(orthanc), "http://pacs:8042", token=None, timeout=1.0, name="pacs")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_new_entries_are_a_change_where_they_happened_stable_ones_are_not(orthanc, feed):
    orthanc.store("P1", "S1", "R1", "I1")

    async def go() -> list[Poll]:
        await feed.start()
        polls = [await feed.poll()]
        orthanc.store("P1", "S1", "R1", "I2")
        polls.append(await feed.poll())
        orthanc.add("StableStudy", "S1", "Study")
        polls.append(await feed.poll())
        return polls

    where = ("p:p1", "s:1.2.1")
    assert run(go()) == [Poll(position=3), Poll(changed=True, scopes=where, position=4), Poll(position=5)]


def test_a_new_study_and_many_new_instances_cost_a_few_requests_not_one_each(orthanc, feed):
    async def go() -> list[Poll]:
        await feed.start()
        orthanc.store("P1", "S1", "R1", *(f"I{n}" for n in range(1, 201)))
        orthanc.store("P2", "S2", "R2", "I900")
        first = await feed.poll()
        asked = len(orthanc.asked)
        orthanc.store("P1", "S1", "R1", *(f"I{n}" for n in range(201, 401)))  # a series growing: listed once
        second = await feed.poll()
        return [first, second, len(orthanc.asked) - asked]

    first, second, asked = run(go())
    assert first.scopes == ("p:p1", "p:p2", "s:1.2.1", "s:1.2.2")
    assert second.scopes == ("p:p1", "s:1.2.1")
    assert asked <= 4  # /changes, and the instance lists of the two series changed last


def test_an_instance_of_a_series_not_seen_changing_is_asked_for_once(orthanc, feed):
    orthanc.store("P3", "S3", "R3", "I1")

    async def go() -> Poll:
        await feed.start()
        orthanc.store("P3", "S3", "R3", "I2")  # only NewInstance: its series never showed in this feed
        return await feed.poll()

    assert run(go()).scopes == ("p:p3", "s:1.2.3")
    assert "/instances/I2/series" in orthanc.asked


def test_a_series_growing_unseen_costs_two_requests_not_one_per_instance(orthanc, feed):
    orthanc.store("P3", "S3", "R3", "I1")

    async def go() -> tuple[Poll, int]:
        await feed.start()
        asked = len(orthanc.asked)
        orthanc.store("P3", "S3", "R3", *(f"I{n}" for n in range(2, 300)))
        return await feed.poll(), len(orthanc.asked) - asked

    poll, asked = run(go())
    assert poll.scopes == ("p:p3", "s:1.2.3")
    assert asked == 1 + 4  # /changes; the first instance's series, the series, its study, its instance list


def test_a_change_that_cannot_be_placed_is_anywhere(orthanc, feed):
    async def go() -> list[Poll]:
        await feed.start()
        orthanc.store("P1", "S1", "R1", "I1")
        orthanc.gone.add("I1")
        orthanc.gone.add("R1")  # stored and deleted again before the poll asked
        gone = await feed.poll()
        orthanc.add("UpdatedMetadata", "X1", "Something")
        odd = await feed.poll()
        orthanc.store("P2", "S2", "R2", "I2")
        for n in range(100, 200):  # an instance in each of 100 series whose own entries this feed never saw
            orthanc.parents[f"R{n}"] = "S2"
            orthanc.parents[f"I{n}"] = f"R{n}"
            orthanc.add("NewInstance", f"I{n}")
        costly = await feed.poll()
        return [gone, odd, costly]

    for poll in run(go()):
        assert poll.changed and poll.scopes is None


def test_a_reset_log_and_a_gap_are_said(orthanc, feed):
    for _ in range(3):
        orthanc.add("NewInstance")

    async def go() -> list[Poll]:
        await feed.start()
        orthanc.entries.clear()  # DELETE /changes
        reset = await feed.poll()
        for _ in range(3):
            orthanc.add("NewInstance")
        del orthanc.entries[1]  # created and deleted since
        gap = await feed.poll()
        return [reset, gap]

    reset, gap = run(go())
    assert reset.lost and "reset" in reset.lost
    assert gap.changed and gap.lost and "gap" in gap.lost


def test_a_deletion_is_seen_in_the_counts_every_fifth_poll(orthanc, feed):
    async def go() -> list[Poll]:
        await feed.start()
        orthanc.instances -= 1  # Orthanc logs nothing for a deletion
        return [await feed.poll() for _ in range(5)]

    polls = run(go())
    assert [p.changed for p in polls] == [False, False, False, False, True]
    assert orthanc.asked.count("/statistics") == 2  # at start, and the fifth poll


def test_an_unreadable_feed_raises(orthanc, feed):
    orthanc.status = 500

    async def go() -> None:
        await feed.start()

    with pytest.raises(FeedError, match="HTTP 500"):
        run(go())


class Feed:
    name = "pacs"

    def __init__(self, polls: list[Poll | Exception]) -> None:
        self.polls = polls

    async def start(self) -> None:
        return None

    async def poll(self) -> Poll:
        item = self.polls.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class Cache:
    def __init__(self) -> None:
        self.told: list[object] = []

    async def changed(self, scopes: tuple[str, ...] | None, position: int) -> None:
        self.told.append((scopes, position))

    async def invalidate(self) -> None:
        self.told.append("all")


def test_the_follower_tells_where_on_a_change_and_clears_all_on_a_lost_feed_and_while_it_cannot_read_it():
    cache = Cache()
    events: list[tuple[str, str]] = []
    polls: list[Poll | Exception] = [Poll(), Poll(changed=True, scopes=("p:a",), position=7), Poll(lost="reset")]
    polls += [FeedError("down"), FeedError("down"), Poll(), Poll()]
    follower = ChangeFollower(Feed(polls), cache, interval=0.01, on_event=lambda s, e: events.append((s, e)))

    async def go() -> list[str]:
        return [await follower.step() for _ in range(7)]

    assert run(go()) == ["idle", "change", "lost", "error", "error", "lost", "idle"]
    # a change where it was; all on lost, on two errors, and once back (what changed meanwhile is unknown)
    assert cache.told == [(("p:a",), 7), "all", "all", "all", "all"]
    assert events[0] == ("pacs", "idle")


def test_another_database_with_as_many_changes_is_a_reset_and_a_deleted_last_entry_a_change(orthanc, feed):
    orthanc.store("P1", "S1", "R1", "I1", "I2")

    async def go() -> list[Poll]:
        await feed.start()
        polls = [await feed.poll()]
        orthanc.entries[-1] = dict(orthanc.entries[-1], ID="I9", Date="20261205T001500")  # same Seq, same Last
        polls.append(await feed.poll())
        orthanc.store("P1", "S1", "R1", "I3")
        polls.append(await feed.poll())
        del orthanc.entries[-1]  # I3 deleted: its entry goes, Last stays (Orthanc keeps counting)
        orthanc.entries.append(dict(orthanc.entries[-1], Seq=6, ID="I4", ChangeType="NewInstance"))
        orthanc.parents["I4"] = "R1"
        polls.append(await feed.poll())
        return polls

    idle, swapped, new, deleted = run(go())
    assert idle == Poll(position=4)
    assert swapped.lost and "another entry" in swapped.lost
    assert new == Poll(changed=True, scopes=("p:p1", "s:1.2.1"), position=5)
    assert deleted.changed and deleted.scopes is None  # the entry read last is gone: anywhere
