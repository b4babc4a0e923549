"""app.pacs.change_clock and its use by the caches: a change in the PACS clears only the answers it touches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.dicom.qido import QidoQuery
from app.http.answers import Answer, AnswerCache
from app.pacs.cache import CachedQido
from app.pacs.change_clock import ChangeClock, patient_scope, query_scopes, study_scope
from app.pacs.request_scope import DEPENDS
from app.pacs.upstream import QidoResult


def q(level: str, **params: str) -> QidoQuery:
    return QidoQuery.build(level, params, limit=10)


@pytest.mark.parametrize(
    ("query", "scopes"),
    [
        (q("studies", PatientID="ABC"), ("p:abc",)),
        (q("studies", PatientID="b,a", IssuerOfPatientID="X"), ("p:a", "p:b")),
        (q("instances", StudyInstanceUID="1.2,1.3"), ("s:1.2", "s:1.3")),
        (q("studies", PatientID="a", StudyInstanceUID="1.2"), ("p:a",)),  # either names every change it can see
        (q("studies", PatientID="a?c"), None),  # a pattern: any patient may match
        (q("studies", PatientID="a*"), None),
        (q("studies", AccessionNumber="A1"), None),
        (q("studies", PatientName="DOE^J*"), None),
        (QidoQuery("studies", (("PatientID", "a"), ("PatientID", "b"))), None),
    ],
)
def test_a_querys_scopes(query, scopes):
    assert query_scopes(query) == scopes


def test_the_scopes_of_a_change_match_the_querys_whatever_the_case():
    assert patient_scope(" Abc") == query_scopes(q("studies", PatientID="aBC"))[0]
    assert study_scope("1.2.3") == query_scopes(q("series", StudyInstanceUID="1.2.3"))[0]


def test_a_stamp_moves_only_with_its_scopes_and_unscoped_ones_with_every_change():
    now = [0.0]
    clock = ChangeClock(keep=60, clock=lambda: now[0])
    a, b, both = ("p:a",), ("p:b",), ("p:a", "p:b")
    assert [clock.stamp(a), clock.stamp(b), clock.stamp(None)] == [0, 0, 0]
    assert clock.note(a, 5)
    assert [clock.stamp(a), clock.stamp(b), clock.stamp(both), clock.stamp(None)] == [5, 0, 5, 5]
    clock.note(b, 9)
    assert [clock.stamp(a), clock.stamp(b), clock.stamp(both), clock.stamp(None)] == [5, 9, 9, 9]
    now[0] = 61.0
    clock.note(("p:c",), 10)  # a and b noted more than keep seconds ago: forgotten (their answers expired)
    assert [clock.stamp(a), clock.stamp(b), len(clock)] == [0, 0, 1]
    clock.reset()
    assert [clock.stamp(("p:c",)), clock.stamp(None)] == [0, 0]


def test_too_many_scopes_are_forgotten_and_the_caller_told_to_clear_all():
    clock = ChangeClock(keep=60, max_scopes=4)
    assert clock.note(("p:1", "p:2", "p:3", "p:4"), 1)
    assert not clock.note(("p:5",), 2)
    assert len(clock) <= 4


class Upstream:
    def __init__(self) -> None:
        self.asked: list[QidoQuery] = []

    async def search(self, query: QidoQuery) -> QidoResult:
        self.asked.append(query)
        return QidoResult([{"n": len(self.asked)}], 10)


def test_a_change_clears_the_answers_of_its_scopes_only():
    upstream = Upstream()
    cache = CachedQido(upstream, ttl=60, max_bytes=10_000, clock=ChangeClock(keep=60))
    of_a, of_b, anyone = q("studies", PatientID="a"), q("studies", PatientID="b"), q("studies", ModalitiesInStudy="CT")

    async def go() -> list[int]:
        for query in (of_a, of_b, anyone):
            await cache.search(query)
        await cache.changed(("p:a", "s:1.2"), 3)
        for query in (of_a, of_b, anyone):
            await cache.search(query)
        await cache.changed(None, 4)  # a deletion: anywhere
        await cache.search(of_b)
        return [len(upstream.asked), cache.generation]

    asked, generation = asyncio.run(go())
    assert upstream.asked[3:] == [of_a, anyone, of_b]  # b's answer survived the change of a; not the deletion
    assert (asked, generation) == (6, 1)


def test_a_cache_without_a_clock_clears_everything_on_a_change():
    upstream = Upstream()
    cache = CachedQido(upstream, ttl=60, max_bytes=10_000)

    async def go() -> None:
        await cache.search(q("studies", PatientID="b"))
        await cache.changed(("p:a",), 3)
        await cache.search(q("studies", PatientID="b"))

    asyncio.run(go())
    assert len(upstream.asked) == 2


def test_a_finished_answer_goes_when_a_stamp_it_was_made_from_moves():
    upstream = Upstream()
    clock = ChangeClock(keep=60)
    cache = CachedQido(upstream, ttl=60, max_bytes=10_000, clock=clock)
    answers = AnswerCache(cache, ttl=60, max_bytes=10_000)

    async def made(query: QidoQuery) -> tuple[Any, ...]:
        DEPENDS.set([])
        await cache.search(query)
        await cache.search(q("instances", StudyInstanceUID="1.2"))
        return tuple(DEPENDS.get() or ())

    async def go() -> list[bool]:
        answers.put("A", Answer(b"a", {}, await made(q("studies", PatientID="a"))))
        answers.put("B", Answer(b"b", {}, await made(q("studies", PatientID="b"))))
        await cache.changed(("p:b", "s:9.9"), 4)
        kept = [answers.get("A") is not None, answers.get("B") is not None]
        await cache.changed(("s:1.2",), 5)  # a study both answers listed instances of
        return [*kept, answers.get("A") is not None]

    assert asyncio.run(go()) == [True, False, False]


def test_concurrent_misses_of_one_answer_make_it_once_and_a_waiter_never_takes_one_not_kept():
    clock = ChangeClock(keep=60)
    cache = CachedQido(Upstream(), ttl=60, max_bytes=10_000, clock=clock)
    answers = AnswerCache(cache, ttl=60, max_bytes=10_000)

    async def go() -> list[Any]:
        settle = answers.making("K")
        assert settle is not None and answers.making("K") is None  # one maker at a time
        waiters = [asyncio.ensure_future(answers.shared("K")) for _ in range(3)]
        await asyncio.sleep(0)
        settle(Answer(b"made", {}, ((clock, ("p:a",), 0),)))
        got = [a.body for a in await asyncio.gather(*waiters)]
        failed = answers.making("E")
        waiter = asyncio.ensure_future(answers.shared("E"))
        await asyncio.sleep(0)
        failed(None)  # the maker's answer was not kept (an error, a warning)
        moved = answers.making("M")
        late = asyncio.ensure_future(answers.shared("M"))
        await asyncio.sleep(0)
        clock.note(("p:a",), 7)  # a change the waiter must see came while it was being made
        moved(Answer(b"old", {}, ((clock, ("p:a",), 0),)))
        return [got, await waiter, await late, await answers.shared("K"), answers.shared_hits]

    got, failed, late, after, shared = asyncio.run(go())
    assert got == [b"made"] * 3 and failed is None and late is None
    assert after is None and shared == 3  # nothing in flight: the caller looks in the store, as before
