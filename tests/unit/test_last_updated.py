"""``_lastUpdated`` and ``meta.lastUpdated`` beyond one PACS's studies (issue 22): which archives can answer, the
latest of several archives' times, archives that fail, manifests (the studies their KOS is stored in), and meta
kept through subsetting. Pure values and fake lookups; the HTTP and Orthanc sides are in tests/api and
tests/integration."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from app.dicom.kos import KeyObjectSelection
from app.errors import InvalidRequest, UnsupportedSearch, UpstreamUnavailable
from app.fhir.dates import parse_search_date
from app.fhir.search import SearchRequest, parse_search
from app.fhir.search_params import DOCUMENT_REFERENCE, IMAGING_SELECTION, IMAGING_STUDY, PATIENT
from app.fhir.subsetting import SUBSETTED, drop_narrative, subset
from app.pacs.request_scope import SOURCE_NOTES, SourceNotes
from app.settings import Settings
from app.source_settings import SourceSettings
from app.usecases.last_updated import Archive, ArchiveTimes, ChangeTimes, Groups, refusal, satisfies
from tests.unit.helpers import SEARCH_CTX

T1, T2, T3 = "20260101T100000", "20260102T100000", "20260103T100000"


NOW = datetime(2026, 1, 12, 10, tzinfo=UTC)


def groups(*values: str, now: datetime = NOW) -> Groups:
    return tuple(tuple(parse_search_date(v, UTC, approximate_at=now) for v in value.split(",")) for value in values)


def kos(uid: str, study: str, *, copies: tuple[tuple[str, str], ...] = ()) -> KeyObjectSelection:
    return KeyObjectSelection(
        sop_instance_uid=uid,
        study_uid=study,
        series_uid=None,
        patient_id="P",
        issuer_of_patient_id=None,
        patient_name=None,
        title=None,
        description=None,
        observer_name=None,
        device_observer_name=None,
        content_date=None,
        content_time=None,
        timezone_offset=None,
        references=(),
        identical=tuple(u for u, _ in copies),
        identical_studies=tuple(s for _, s in copies),
    )


class Lookup:
    def __init__(self, stamps: dict[str, str], *, fails: bool = False) -> None:
        self.stamps = stamps
        self.fails = fails
        self.asked: list[list[str]] = []

    async def __call__(self, uids: list[str]) -> dict[str, str]:
        self.asked.append(list(uids))
        if self.fails:
            raise UpstreamUnavailable("the PACS's REST API is unreachable")
        return {u: t for u, t in self.stamps.items() if u in uids}


def run(coro: Any, notes: SourceNotes | None = None) -> Any:
    async def scoped() -> Any:
        token = SOURCE_NOTES.set(notes)
        try:
            return await coro
        finally:
            SOURCE_NOTES.reset(token)

    return asyncio.run(scoped())


class TestWhoCanAnswer:
    def test_one_pacs(self):
        assert refusal(Settings(dicomweb_url="http://p/dicom-web", pacs_kind="orthanc", auth_mode="open")) is None
        why = refusal(Settings(dicomweb_url="http://p/dicom-web", auth_mode="open"))
        assert why is not None and "pacs_kind = dicomweb" in why

    def test_several_archives_every_one_an_orthanc(self):
        sources = (
            SourceSettings(name="north", dicomweb_url="http://n/dicom-web", pacs_kind="orthanc"),
            SourceSettings(name="south", dicomweb_url="http://s/dicom-web"),
            SourceSettings(name="east", dicomweb_url="http://e/dicom-web"),
        )
        why = refusal(Settings(sources=sources, auth_mode="open"))
        assert why is not None and "'south', 'east'" in why and "north" not in why
        assert (
            refusal(Settings(sources=sources, pacs_kind="orthanc", auth_mode="open")) is None
        )  # the facade's kind is their default
        one = refusal(Settings(sources=sources[:2], pacs_kind="dicomweb", auth_mode="open"))
        assert one is not None and "the archive 'south'" in one


class TestPrefixes:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("gt2026-01-02T10:00:00Z", [T3]),
            ("ge2026-01-02T10:00:00Z", [T2, T3]),
            ("lt2026-01-02T10:00:00Z", [T1]),
            ("le2026-01-02T10:00:00Z", [T1, T2]),
            ("eq2026-01-02T10:00:00Z", [T2]),
            ("ne2026-01-02T10:00:00Z", [T1, T3]),
            ("sa2026-01-02T10:00:00Z", [T3]),
            ("eb2026-01-02T10:00:00Z", [T1]),
            ("ap2026-01-02", [T1, T2, T3]),  # ap: 10 % of the gap to now (10.4 days) either side of the day
            ("ap2026-01-04", [T3]),  # 8.4 days from now: 20 h either side
            ("eq2026-01-02", [T2]),  # a day: every second of it
            ("eq2026-01-02T10:00:00+01:00", []),
        ],
    )
    def test_each_prefix_on_the_second_named(self, value, expected):
        assert [t for t in (T1, T2, T3) if satisfies(t, groups(value))] == expected

    def test_ap_is_close_when_the_value_is_close_to_now(self):
        close = datetime(2026, 1, 2, 20, tzinfo=UTC)  # 9.5 h after the value: 57 min either side
        assert [t for t in (T1, T2, T3) if satisfies(t, groups("ap2026-01-02T10:30:00Z", now=close))] == [T2]
        assert not satisfies(T2, groups("ap2026-01-02T11:01:00Z", now=close))

    def test_groups_are_anded_values_ored(self):
        assert satisfies(T2, groups("eq2026-01-01,eq2026-01-02", "gt2026-01-01T12:00:00Z"))
        assert not satisfies(T1, groups("eq2026-01-01,eq2026-01-02", "gt2026-01-01T12:00:00Z"))

    def test_no_time_matches_nothing(self):
        assert not satisfies(None, groups("ne2000")) and not satisfies("yesterday", groups("ne2000"))


class TestSeveralArchives:
    def test_a_study_held_by_two_gets_the_latest_of_their_times(self):
        north, south = Lookup({"1.1": T1, "1.9": T3}), Lookup({"1.9": T2, "2.1": T1})
        times = ArchiveTimes([Archive("north", north), Archive("south", south)])
        assert run(times(["1.1", "1.9", "2.1"]), SourceNotes()) == {"1.1": T1, "1.9": T3, "2.1": T1}
        assert north.asked == south.asked == [["1.1", "1.9", "2.1"]]

    def test_a_failing_archive_is_noted_and_what_it_may_hold_is_not_judged(self):
        times = ArchiveTimes(
            [Archive("north", Lookup({"1.1": T1, "1.9": T3})), Archive("south", Lookup({}, fails=True))]
        )
        notes = SourceNotes()
        notes.held = {"north": {"1.1", "1.9"}, "south": {"1.9", "2.1"}}
        assert run(times(["1.1", "1.9", "2.1"]), notes) == {"1.1": T1}  # 1.9: south's time may be later
        assert list(notes.failed) == ["south"]

    def test_without_knowing_what_it_holds_nothing_is_judged(self):
        times = ArchiveTimes([Archive("north", Lookup({"1.1": T1})), Archive("south", Lookup({}, fails=True))])
        assert run(times(["1.1"]), SourceNotes()) == {}
        cut = SourceNotes()
        cut.held, cut.partial = {"north": {"1.1"}, "south": set()}, True  # an answer cut at its limit says nothing
        assert run(times(["1.1"]), cut) == {}

    def test_every_archive_failing_is_the_error(self):
        times = ArchiveTimes([Archive("north", Lookup({}, fails=True)), Archive("south", Lookup({}, fails=True))])
        with pytest.raises(UpstreamUnavailable):
            run(times(["1.1"]), SourceNotes())


class TestMeta:
    def test_an_archive_failing_for_meta_only_fails_nothing(self):
        times = ChangeTimes()
        times.lookup = ArchiveTimes([Archive("north", Lookup({"1.1": T1})), Archive("south", Lookup({}, fails=True))])
        notes = SourceNotes()
        notes.held = {"north": {"1.1"}, "south": set()}
        studies: list[dict[str, Any]] = [{"id": "1.1"}]
        run(times.stamp_studies(studies, {}), notes)
        assert studies[0]["meta"]["lastUpdated"] == "2026-01-01T10:00:00Z" and not notes.failed

    def test_one_pacs_failing_leaves_meta_out(self):
        times = ChangeTimes()
        times.lookup = Lookup({}, fails=True)
        studies: list[dict[str, Any]] = [{"id": "1.1"}]
        run(times.stamp_studies(studies, {}))
        assert "meta" not in studies[0]

    def test_times_the_search_read_are_not_asked_again(self):
        times = ChangeTimes()
        times.lookup = lookup = Lookup({"1.1": T1})
        studies: list[dict[str, Any]] = [{"id": "1.1", "meta": {"tag": [SUBSETTED]}}]
        run(times.stamp_studies(studies, {"1.1": T2}))
        assert studies[0]["meta"] == {"tag": [SUBSETTED], "lastUpdated": "2026-01-02T10:00:00Z"} and not lookup.asked

    def test_subsetting_keeps_meta_last_updated(self):
        full = {"resourceType": "ImagingStudy", "id": "1", "meta": {"lastUpdated": "2026-01-01T10:00:00Z"}, "text": {}}
        req = SearchRequest(elements=frozenset({"id"}), summary="data")
        (kept,) = subset([dict(full)], req, frozenset())
        assert kept["meta"] == {"lastUpdated": "2026-01-01T10:00:00Z", "tag": [SUBSETTED]}
        page = [dict(full)]
        drop_narrative(page, req)
        assert page[0]["meta"] == {"lastUpdated": "2026-01-01T10:00:00Z", "tag": [SUBSETTED]}


class TestManifests:
    def test_a_manifest_changes_with_the_study_it_is_stored_in(self):
        times = ChangeTimes()
        times.lookup = lookup = Lookup({"1.1": T1, "1.2": T2, "1.3": T3})
        docs = [kos("9.1", "1.1"), kos("9.2", "1.2"), kos("9.3", "1.3")]
        kept, stamps = run(times.manifests_as_asked(docs, groups("ge2026-01-02T10:00:00Z")))
        assert [d.sop_instance_uid for d in kept] == ["9.2", "9.3"] and stamps == {"9.1": T1, "9.2": T2, "9.3": T3}
        assert lookup.asked == [["1.1", "1.2", "1.3"]]

    def test_a_manifest_stored_as_a_copy_per_study_changes_with_the_latest(self):
        times = ChangeTimes()
        times.lookup = Lookup({"1.1": T1, "1.3": T3})
        copy_in_1 = kos("9.5", "1.1", copies=(("9.4", "1.3"),))
        (kept,), stamps = run(times.manifests_as_asked([copy_in_1], groups("gt2026-01-02")))
        assert kept is copy_in_1 and stamps == {"9.4": T3}  # by the canonical (smallest) UID
        resource: dict[str, Any] = {"id": "x"}
        run(times.stamp_manifests([(resource, copy_in_1)], {}))
        assert resource["meta"]["lastUpdated"] == "2026-01-03T10:00:00Z"

    def test_without_groups_nothing_is_asked(self):
        times = ChangeTimes()
        times.lookup = lookup = Lookup({"1.1": T1})
        docs = [kos("9.1", "1.1")]
        assert run(times.manifests_as_asked(docs, ())) == (docs, {}) and not lookup.asked


class TestParsing:
    CTX = dataclasses.replace(SEARCH_CTX, last_updated=True, now=NOW)

    @pytest.mark.parametrize("spec", [IMAGING_STUDY, IMAGING_SELECTION, DOCUMENT_REFERENCE])
    def test_answered_on_studies_and_manifests(self, spec):
        req = parse_search([("_lastUpdated", "ap2026-01-02"), ("_lastUpdated", "lt2027")], self.CTX, spec)
        assert [[c.prefix for c in group] for group in req.last_updated] == [["ap"], ["lt"]]
        assert ("_lastUpdated", "ap2026-01-02") in req.link_params()

    def test_refused_on_patient_and_where_an_archive_cannot_say(self):
        with pytest.raises(UnsupportedSearch, match="not supported on Patient"):
            parse_search([("_lastUpdated", "gt2026")], self.CTX, PATIENT)
        ctx = dataclasses.replace(self.CTX, last_updated=False, last_updated_refusal="the archive 'south' cannot")
        with pytest.raises(UnsupportedSearch, match="not supported here: the archive 'south' cannot"):
            parse_search([("_lastUpdated", "gt2026")], ctx, DOCUMENT_REFERENCE)

    def test_ap_stays_refused_on_other_dates(self):
        with pytest.raises(InvalidRequest, match="'ap' is not supported"):
            parse_search([("started", "ap2026")], self.CTX, IMAGING_STUDY)
