"""The KOS write path through a real Orthanc: QIDO rows → app.dicom.kos_build → STOW-RS → WADO-RS metadata →
app.dicom.kos.

A private Orthanc (module-scoped, so the session fixture's dataset stays as it is) holds one patient's images in
three studies (CT with two series and a multi-frame image, MR, and a study with a TimezoneOffsetFromUTC). Each test
builds KOS documents from what QIDO-RS says about those images (the facade has nothing else), stores them with
:class:`app.pacs.dicomweb_write.DicomWebStore`, reads them back with its ``series_metadata`` and parses them with
:func:`app.dicom.kos.parse_kos`: the result must equal what the builder produced locally.

Through the facade (POST /fhir/R5/ImagingSelection, pacs_timezone Europe/Berlin), creating a manifest must leave its
study's ``started`` (R4 and R5) exactly as it was, for a study with a TimezoneOffsetFromUTC and for one without
(issue 9 item 7: Orthanc answers a study's offset from one of its instances, the new KOS included).

It also records what Orthanc 1.10 / DICOMweb 1.7 answers to a STOW-RS of the same document twice, of a different
document under a UID it already has, of a request with an unreadable part, and to metadata of a series it lacks.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx
import pytest
from pydicom import Dataset, dcmread

from app.dicom.kos import KOS_SOP_CLASS_UID, Code, KeyObjectSelection, PersonName, parse_kos
from app.dicom.kos_build import Evidence, KosCopy, PatientStudy, build_kos, build_kos_copies, encode
from app.main import create_app
from app.pacs.dicomweb_write import DicomWebStore, StowRefused, StowResult
from app.settings import Settings
from tests.support.dataset import make_uid
from tests.support.fhir_check import checking_client
from tests.support.kos import (
    FOR_CONFERENCE,
    FOR_REFERRING_PROVIDER,
    FOR_TEACHING,
    QUALITY_ISSUE,
    make_multiframe,
    make_study,
)
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store

pytestmark = pytest.mark.integration

SEED = 31
PATIENT: dict[str, Any] = {"patient_id": "KOSW0001", "patient_name": "Müller^Jürgen", "issuer": "HOSP-W"}
CET = timezone(timedelta(hours=1))
WHEN = datetime(2024, 3, 1, 9, 30, tzinfo=CET)
TIMEOUT = httpx.Timeout(30.0)

# DICOM JSON tags.
SOP_UID, STUDY_UID, SERIES_UID, TZ_OFFSET, IDENTICAL = "00080018", "0020000D", "0020000E", "00080201", "0040A525"

T = TypeVar("T")


@dataclass
class WritePacs:
    server: OrthancServer
    ct: list[Dataset]
    mr: list[Dataset]
    cine: Dataset
    zone: list[Dataset]

    @property
    def url(self) -> str:
        return self.server.dicomweb_url


def _skip_without_orthanc() -> None:
    # Module-scoped fixtures are set up before the package's autouse skip runs, so check here as well.
    if orthanc_binary() is None or dicomweb_plugin() is None:
        reason = "Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pacs() -> Iterator[WritePacs]:
    _skip_without_orthanc()
    ct = make_study(SEED, "ct", series_sizes=(3, 2), **PATIENT)
    mr = make_study(SEED, "mr", modality="MR", study_date="20240210", study_time="080000", **PATIENT)
    cine = make_multiframe(ct[0], frames=5, seed=SEED)
    zone = make_study(SEED, "zone", series_sizes=(1,), study_date="20240320", tz_offset="+0100", **PATIENT)
    with OrthancServer() as server:
        assert store(server.dicomweb_url, [*ct, *mr, cine, *zone]) == len(ct) + len(mr) + 1 + len(zone)
        yield WritePacs(server, ct, mr, cine, zone)


# -- helpers ---------------------------------------------------------------------------------------------------


def qido(url: str, path: str) -> list[dict[str, Any]]:
    response = httpx.get(url + path, headers={"Accept": "application/dicom+json"}, timeout=10)
    assert response.status_code in (200, 204), response.text
    rows: list[dict[str, Any]] = response.json() if response.status_code == 200 else []
    return rows


def first(row: Mapping[str, Any], tag: str) -> Any:
    return row.get(tag, {}).get("Value", [None])[0]


def study_of(url: str, ds: Dataset) -> PatientStudy:
    """The QIDO study row, IssuerOfPatientID included (Orthanc returns it only when asked)."""
    (row,) = qido(url, f"/studies?StudyInstanceUID={ds.StudyInstanceUID}&includefield=00100021")
    return PatientStudy.from_qido(row)


def evidence_of(
    url: str, selected: Sequence[Dataset], frames: Mapping[str, Sequence[int]] | None = None
) -> list[Evidence]:
    """Evidence from the QIDO instance rows of ``selected`` (in that order), as the facade would build it."""
    frames = frames or {}
    rows: dict[str, dict[str, Any]] = {}
    for study in dict.fromkeys(str(ds.StudyInstanceUID) for ds in selected):
        rows.update({first(row, SOP_UID): row for row in qido(url, f"/studies/{study}/instances")})
    return [Evidence.from_qido(rows[str(ds.SOPInstanceUID)], frames.get(str(ds.SOPInstanceUID), ())) for ds in selected]


def kos_uids(*key: object) -> tuple[str, str]:
    """(series UID, SOP Instance UID) for one test's KOS."""
    return make_uid(SEED, "kos-write", "series", *key), make_uid(SEED, "kos-write", "instance", *key)


def build(
    url: str,
    selected: Sequence[Dataset],
    key: str,
    *,
    title: tuple[str, str, str] = FOR_TEACHING,
    description: str | None = None,
    frames: Mapping[str, Sequence[int]] | None = None,
    **options: Any,
) -> Dataset:
    series_uid, sop_uid = kos_uids(key)
    arguments: dict[str, Any] = {
        "title": title,
        "description": description,
        "sop_instance_uid": sop_uid,
        "series_uid": series_uid,
        "series_number": 900,
        "instance_number": 1,
        "content_datetime": WHEN,
        **options,
    }
    return build_kos(study_of(url, selected[0]), evidence_of(url, selected, frames), **arguments)


def local(ds: Dataset) -> KeyObjectSelection:
    """What parse_kos makes of the document as built, after a local Part 10 round trip."""
    return parse_kos(dcmread(io.BytesIO(encode(ds))).to_json_dict())


def with_store(url: str, work: Callable[[DicomWebStore], Awaitable[T]]) -> T:
    """Run ``work`` on a DicomWebStore over a fresh pooled transport (one per event loop)."""

    async def main() -> T:
        async with httpx.AsyncHTTPTransport() as transport:
            return await work(DicomWebStore(transport, url, TIMEOUT))

    return asyncio.run(main())


def stow(url: str, *documents: Dataset) -> StowResult:
    return with_store(url, lambda s: s.store([encode(ds) for ds in documents]))


def read_back(url: str, ds: Dataset) -> list[dict[str, Any]]:
    return with_store(url, lambda s: s.series_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))


def uids(*datasets: Dataset) -> tuple[str, ...]:
    return tuple(str(ds.SOPInstanceUID) for ds in datasets)


# -- store and read back ------------------------------------------------------------------------------------------


class TestRoundTrip:
    def test_teaching_file(self, pacs: WritePacs) -> None:
        ds = build(
            pacs.url,
            pacs.ct[:3],
            "teaching",
            description="Klassischer Befund: Läsion im Segment 7",
            observer_name="Wélby^Marcus",
        )
        assert stow(pacs.url, ds) == StowResult(stored=uids(ds), failed=(), warning=False)
        metadata = read_back(pacs.url, ds)
        assert len(metadata) == 1
        got = parse_kos(metadata)
        assert got == local(ds)
        assert got.title == Code(*FOR_TEACHING)
        assert got.description == "Klassischer Befund: Läsion im Segment 7"
        assert got.observer_name == PersonName("Wélby^Marcus")
        assert (got.patient_id, got.issuer_of_patient_id, got.patient_name) == (
            "KOSW0001",
            "HOSP-W",
            PersonName("Müller^Jürgen"),
        )
        assert [r.sop_instance_uid for r in got.references] == list(uids(*pacs.ct[:3]))
        assert {(r.study_uid, r.series_uid) for r in got.references} == {
            (str(pacs.ct[0].StudyInstanceUID), str(pacs.ct[0].SeriesInstanceUID))
        }
        # The study has no TimezoneOffsetFromUTC, so neither has the KOS (PS3.3 C.12.1.1.8; app.dicom.kos_build).
        assert (got.content_date, got.content_time, got.timezone_offset) == ("20240301", "093000", None)

    def test_qido_finds_it(self, pacs: WritePacs) -> None:
        ds = build(pacs.url, [pacs.ct[4]], "qido", title=QUALITY_ISSUE)
        stow(pacs.url, ds)
        rows = qido(pacs.url, "/instances?Modality=KO&PatientID=KOSW0001")
        by_uid = {first(row, SOP_UID): row for row in rows}
        assert str(ds.SOPInstanceUID) in by_uid
        row = by_uid[str(ds.SOPInstanceUID)]
        assert (first(row, "00080016"), first(row, STUDY_UID), first(row, SERIES_UID)) == (
            KOS_SOP_CLASS_UID,
            str(pacs.ct[0].StudyInstanceUID),
            str(ds.SeriesInstanceUID),
        )
        # The KO series shows up in the study's modalities, next to the images'.
        (study,) = qido(pacs.url, f"/studies?StudyInstanceUID={pacs.ct[0].StudyInstanceUID}")
        assert "KO" in study["00080061"]["Value"]

    def test_frames_of_the_multiframe_image(self, pacs: WritePacs) -> None:
        cine = pacs.cine
        evidence = evidence_of(pacs.url, [cine])
        assert evidence[0].image is True  # QIDO sends NumberOfFrames/Rows for images
        ds = build(
            pacs.url, [pacs.ct[3], cine], "frames", title=FOR_CONFERENCE, frames={str(cine.SOPInstanceUID): [2, 4]}
        )
        assert stow(pacs.url, ds).stored == uids(ds)
        got = parse_kos(read_back(pacs.url, ds))
        assert got == local(ds)
        assert {r.sop_instance_uid: r.frames for r in got.references} == {
            str(pacs.ct[3].SOPInstanceUID): (),
            str(cine.SOPInstanceUID): (2, 4),
        }
        # The selected frames are what a viewer then fetches with WADO-RS.
        base = f"/studies/{cine.StudyInstanceUID}/series/{cine.SeriesInstanceUID}/instances/{cine.SOPInstanceUID}"
        assert httpx.get(pacs.url + base + "/frames/2,4", timeout=10).status_code == 200

    def test_cross_study_copies(self, pacs: WritePacs) -> None:
        selected = [pacs.ct[0], pacs.mr[0], pacs.mr[1]]
        (ct_series, ct_sop), (mr_series, mr_sop) = kos_uids("cross", "ct"), kos_uids("cross", "mr")
        documents = build_kos_copies(
            [
                KosCopy(study_of(pacs.url, pacs.ct[0]), ct_series, ct_sop),
                KosCopy(study_of(pacs.url, pacs.mr[0]), mr_series, mr_sop),
            ],
            evidence_of(pacs.url, selected),
            title=FOR_REFERRING_PROVIDER,
            description="Prior CT and current MR",
            series_number=900,
            instance_number=1,
            content_datetime=WHEN,
        )
        assert stow(pacs.url, *documents) == StowResult(stored=(ct_sop, mr_sop), failed=(), warning=False)
        ct_copy, mr_copy = (read_back(pacs.url, ds) for ds in documents)
        assert parse_kos(ct_copy).study_uid == str(pacs.ct[0].StudyInstanceUID)
        assert parse_kos(mr_copy).study_uid == str(pacs.mr[0].StudyInstanceUID)
        assert parse_kos(ct_copy).references == parse_kos(mr_copy).references == local(documents[0]).references
        assert [s.study_uid for s in parse_kos(ct_copy).series()] == [
            str(pacs.ct[0].StudyInstanceUID),
            str(pacs.mr[0].StudyInstanceUID),
        ]
        assert (parse_kos(ct_copy).identical, parse_kos(mr_copy).identical) == ((mr_sop,), (ct_sop,))
        for metadata, other in ((ct_copy, mr_sop), (mr_copy, ct_sop)):
            (study_item,) = metadata[0][IDENTICAL]["Value"]
            (series_item,) = study_item["00081115"]["Value"]
            assert [first(item, "00081155") for item in series_item["00081199"]["Value"]] == [other]
        # Each study now lists a KO series of its own.
        rows = qido(pacs.url, "/series?PatientID=KOSW0001&Modality=KO")
        assert {(first(r, STUDY_UID), first(r, SERIES_UID)) for r in rows} >= {
            (str(pacs.ct[0].StudyInstanceUID), ct_series),
            (str(pacs.mr[0].StudyInstanceUID), mr_series),
        }

    def test_the_study_zone_is_kept(self, pacs: WritePacs) -> None:
        # A KOS made in Tokyo for a study in +0100: written in +0100, so the study row's offset (which Orthanc
        # takes from one instance of the study, the KOS included) does not move (cf. test_kos_orthanc.py).
        tokyo = datetime(2024, 3, 21, 1, 0, tzinfo=timezone(timedelta(hours=9)))
        ds = build(pacs.url, pacs.zone, "zone", content_datetime=tokyo)
        stow(pacs.url, ds)
        got = parse_kos(read_back(pacs.url, ds))
        assert (got.content_date, got.content_time, got.timezone_offset) == ("20240320", "170000", "+0100")
        assert got.issued == tokyo
        (study,) = qido(pacs.url, f"/studies?StudyInstanceUID={pacs.zone[0].StudyInstanceUID}")
        assert first(study, TZ_OFFSET) == "+0100"

    def test_two_documents_in_one_series(self, pacs: WritePacs) -> None:
        series_uid, _ = kos_uids("shared")
        one = build(pacs.url, [pacs.ct[0]], "shared-1", series_uid=series_uid)
        two = build(pacs.url, [pacs.ct[1]], "shared-2", series_uid=series_uid, instance_number=2, title=FOR_CONFERENCE)
        assert stow(pacs.url, one, two).stored == uids(one, two)
        parsed = {k.sop_instance_uid: k for k in map(parse_kos, read_back(pacs.url, one))}
        assert parsed == {str(one.SOPInstanceUID): local(one), str(two.SOPInstanceUID): local(two)}

    def test_unknown_series(self, pacs: WritePacs) -> None:
        # Orthanc answers 404 "Accessing an inexistent series with WADO-RS".
        assert with_store(pacs.url, lambda s: s.series_metadata(str(pacs.ct[0].StudyInstanceUID), "2.25.1")) == []
        assert with_store(pacs.url, lambda s: s.series_metadata("2.25.1", "2.25.2")) == []

    def test_an_idle_keep_alive_connection(self, pacs: WritePacs) -> None:
        # Orthanc closes idle keep-alive connections after 1 s; the second request after a pause still works.
        ds = build(pacs.url, [pacs.ct[2]], "idle")
        stow(pacs.url, ds)

        async def twice(s: DicomWebStore) -> tuple[int, int]:
            first_answer = await s.series_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            await asyncio.sleep(1.5)
            second_answer = await s.series_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            assert first_answer == second_answer
            return len(second_answer), s.requests

        count, requests = with_store(pacs.url, twice)
        assert count == 1 and requests in (2, 3)  # 3 if the closed connection had to be retried


# -- through the facade: a new manifest leaves its study's start alone -------------------------------------------


DCM = "http://dicom.nema.org/resources/ontology/DCM"


# Module-level (not class-scoped methods): pytest 9.2 fails to tear down class-scoped method fixtures that depend
# on a module-scoped one ("assert not self._finalizers" in FixtureDef.execute).
@pytest.fixture(scope="module")
def zone_studies(pacs: WritePacs) -> dict[str, list[Dataset]]:
    out = {
        "with offset": make_study(SEED, "post-zone", study_date="20240715", tz_offset="+0200", **PATIENT),
        "without offset": make_study(SEED, "post-plain", study_date="20240715", **PATIENT),
    }
    for images in out.values():
        for ds in images:
            ds.BodyPartExamined = "KNEE"  # so the created ImagingSelection has a bodySite (0..1) to check
    store(pacs.url, [ds for images in out.values() for ds in images])
    return out


@pytest.fixture(scope="module")
def zone_facade(pacs: WritePacs) -> Iterator[Any]:
    settings = Settings(auth_mode="open", dicomweb_url=pacs.url, pacs_timezone="Europe/Berlin")
    with checking_client(create_app(settings)) as client:  # check / check_r5 on every answer
        yield client


class TestCreateKeepsTheStudyStart:
    """POST /fhir/R5/ImagingSelection into a study with TimezoneOffsetFromUTC +0200 and into one without (read in
    the PACS zone, Europe/Berlin, CEST in July): ``started`` is the same before and after, in R4 and R5. Before the
    fix the KOS carried +0000 (the facade's clock) and the zone-less study's start moved from +02:00 to +00:00."""

    @staticmethod
    def started(facade: Any, study_uid: str) -> dict[str, str]:
        out = {}
        for base in ("R4", "R5"):
            read = facade.get(f"/fhir/{base}/ImagingStudy/{study_uid}")
            assert read.status_code == 200, read.text
            (entry,) = facade.get(f"/fhir/{base}/ImagingStudy?_id={study_uid}").json()["entry"]
            assert entry["resource"]["started"] == read.json()["started"]
            out[base] = read.json()["started"]
        return out

    @pytest.mark.parametrize("which", ["with offset", "without offset"])
    def test_started_is_the_same_before_and_after(
        self, pacs: WritePacs, zone_facade: Any, zone_studies: dict[str, list[Dataset]], which: str
    ) -> None:
        facade = zone_facade
        images = zone_studies[which]
        study_uid = str(images[0].StudyInstanceUID)
        before = self.started(facade, study_uid)
        assert before == {"R4": "2024-07-15T10:15:00+02:00", "R5": "2024-07-15T10:15:00+02:00"}
        body = {
            "resourceType": "ImagingSelection",
            "status": "available",
            "code": {"coding": [{"system": DCM, "code": "113004"}]},
            "studyUid": study_uid,
            "seriesUid": str(images[0].SeriesInstanceUID),
            "instance": [{"uid": str(ds.SOPInstanceUID)} for ds in images],
        }
        r = facade.post("/fhir/R5/ImagingSelection", json=body, headers={"content-type": "application/fhir+json"})
        assert r.status_code == 201, r.text
        created = r.json()
        assert self.started(facade, study_uid) == before
        # The cached answers of before the POST (QIDO rows and finished answers alike) are gone: without no-cache,
        # the study's read and search show the new KO series at once.
        kos_series = {s["uid"] for s in facade.get(f"/fhir/R4/ImagingStudy/{study_uid}").json()["series"]}
        (found,) = facade.get(f"/fhir/R4/ImagingStudy?_id={study_uid}").json()["entry"]
        assert {s["uid"] for s in found["resource"]["series"]} == kos_series
        assert any(s["modality"]["code"] == "KO" for s in found["resource"]["series"])
        # The KOS is in the PACS, in the study, with the study's own offset or none.
        kos_uid = created["identifier"][0]["value"].removeprefix("urn:oid:")
        (row,) = qido(pacs.url, f"/instances?SOPInstanceUID={kos_uid}&includefield=00080201")
        assert first(row, STUDY_UID) == study_uid
        assert first(row, TZ_OFFSET) == ("+0200" if which == "with offset" else None)
        # Read afresh from the PACS too, past the facade's cache.
        fresh = facade.get(f"/fhir/R4/ImagingStudy/{study_uid}", headers={"Cache-Control": "no-cache"})
        assert fresh.json()["started"] == before["R4"]
        # And the manifest's own time is the instant it was made: an ``issued`` with a zone.
        assert created["issued"].endswith(("+02:00", "+01:00"))
        (entry,) = facade.get(f"/fhir/R5/ImagingSelection?study-uid={study_uid}").json()["entry"]
        assert entry["resource"]["id"] == created["id"]
        assert entry["resource"]["bodySite"] == {  # one CodeableReference (0..1), checked by check_r5 too
            "concept": {
                "coding": [{"system": "http://snomed.info/sct", "code": "72696002", "display": "Knee"}],
                "text": "KNEE",
            }
        }


# -- what Orthanc answers ----------------------------------------------------------------------------------------


class TestOrthancAnswers:
    def test_the_same_document_twice(self, pacs: WritePacs) -> None:
        ds = build(pacs.url, [pacs.ct[0]], "twice")
        first_answer, second_answer = stow(pacs.url, ds), stow(pacs.url, ds)
        assert first_answer == second_answer == StowResult(stored=uids(ds), failed=(), warning=False)
        assert len(qido(pacs.url, f"/instances?SOPInstanceUID={ds.SOPInstanceUID}")) == 1

    def test_a_different_document_under_the_same_uid_replaces_it(self, pacs: WritePacs) -> None:
        # The harness runs with OverwriteInstances: true.
        old = build(pacs.url, [pacs.ct[0]], "replace", description="first")
        new = build(pacs.url, [pacs.ct[1]], "replace", description="second", title=FOR_CONFERENCE)
        assert stow(pacs.url, old).stored == stow(pacs.url, new).stored == uids(old)
        assert parse_kos(read_back(pacs.url, old)) == local(new)

    def test_without_overwrite_the_old_document_stays_and_stow_still_succeeds(self) -> None:
        _skip_without_orthanc()
        images = make_study(SEED, "keep", series_sizes=(2,), **PATIENT)
        with OrthancServer(extra_config={"OverwriteInstances": False}) as server:
            store(server.dicomweb_url, images)
            old = build(server.dicomweb_url, [images[0]], "keep", description="first")
            new = build(server.dicomweb_url, [images[1]], "keep", description="second")
            assert stow(server.dicomweb_url, old) == StowResult(uids(old), (), False)
            # 200, listed as stored, no warning: yet the PACS keeps the first document.
            assert stow(server.dicomweb_url, new) == StowResult(uids(new), (), False)
            assert parse_kos(read_back(server.dicomweb_url, old)) == local(old)

    def test_an_unreadable_part(self, pacs: WritePacs) -> None:
        # 400 for the request, but the readable document is stored and listed as such.
        ds = build(pacs.url, [pacs.ct[4]], "mixed")
        with pytest.raises(StowRefused) as info:
            with_store(pacs.url, lambda s: s.store([encode(ds), b"not a DICOM file"]))
        assert "HTTP 400" in info.value.message and "1 stored nonetheless" in info.value.message
        assert info.value.result == StowResult(stored=uids(ds), failed=(), warning=False)
        assert parse_kos(read_back(pacs.url, ds)) == local(ds)
        assert pacs.url not in info.value.message

    def test_only_unreadable_parts(self, pacs: WritePacs) -> None:
        with pytest.raises(StowRefused) as info:
            with_store(pacs.url, lambda s: s.store([b"not a DICOM file"]))
        assert info.value.message == "the PACS refused to store the instances (HTTP 400)"
        assert info.value.result == StowResult((), (), False)
