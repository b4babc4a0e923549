"""app.pacs.changes: Orthanc's change feed read exactly, and the follower that clears cached answers on it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.pacs.changes import ChangeFollower, FeedError, OrthancChanges, Poll


class Orthanc:
    """/changes and /statistics as Orthanc 1.10 answers them (shared/docs/change-feeds.md)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.instances = 10
        self.status = 200
        self.asked: list[str] = []

    def add(self, kind: str) -> None:
        seq = (self.entries[-1]["Seq"] if self.entries else 0) + 1
        self.entries.append({"Seq": seq, "ChangeType": kind, "ResourceType": "Instance", "Path": f"/x/{seq}"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path)
        if self.status != 200:
            return httpx.Response(self.status)
        last = self.entries[-1]["Seq"] if self.entries else 0
        if request.url.path == "/statistics":
            return httpx.Response(200, json={"CountInstances": self.instances, "CountStudies": 1})
        if "last" in request.url.params:
            return httpx.Response(200, json={"Changes": self.entries[-1:], "Done": True, "Last": last})
        since, limit = int(request.url.params["since"]), int(request.url.params["limit"])
        page = [e for e in self.entries if e["Seq"] > since][:limit]
        done = not page or page[-1]["Seq"] == last
        return httpx.Response(200, json={"Changes": page, "Done": done, "Last": last})


@pytest.fixture
def orthanc() -> Orthanc:
    return Orthanc()


@pytest.fixture
def feed(orthanc: Orthanc) -> OrthancChanges:
    return OrthancChanges(httpx.MockTransport(orthanc), "http://pacs:8042", token=None, timeout=1.0, name="pacs")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_new_entries_are_a_change_stable_ones_are_not(orthanc, feed):
    orthanc.add("NewStudy")

    async def go() -> list[Poll]:
        await feed.start()
        polls = [await feed.poll()]
        orthanc.add("NewInstance")
        polls.append(await feed.poll())
        orthanc.add("StableStudy")
        polls.append(await feed.poll())
        return polls

    assert run(go()) == [Poll(), Poll(changed=True), Poll()]


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


def test_the_follower_clears_on_a_change_on_a_lost_feed_and_while_it_cannot_read_it():
    cleared: list[int] = []
    events: list[tuple[str, str]] = []

    async def invalidate() -> None:
        cleared.append(1)

    feed = Feed([Poll(), Poll(changed=True), Poll(lost="reset"), FeedError("down"), FeedError("down"), Poll(), Poll()])
    follower = ChangeFollower(feed, invalidate, interval=0.01, on_event=lambda s, e: events.append((s, e)))

    async def go() -> list[str]:
        return [await follower.step() for _ in range(7)]

    assert run(go()) == ["idle", "change", "lost", "error", "error", "lost", "idle"]
    assert len(cleared) == 5  # change, lost, two errors, and once back (what changed meanwhile is unknown)
    assert events[0] == ("pacs", "idle")
