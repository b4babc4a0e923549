"""KOS documents through a real Orthanc: STOW-RS in, WADO-RS metadata out, app.dicom.kos in between.

A private Orthanc (its own, module-scoped: the session fixture's dataset stays as it is) receives one patient's
images in two studies, a multi-frame image and nine KOS: four purposes (one with a frame selection, one spanning
both studies, two sharing a series) and the four IOCM rejection titles. Each KOS's ``/metadata`` is parsed with
:func:`app.dicom.kos.parse_kos` and must equal the oracle built from the same inputs.

The QIDO tests record what Orthanc 1.10 / DICOMweb 1.7 answers about KOS, because the ImagingSelection read path
depends on it: KO series and instances are found by Modality and SOPClassUID, but no title, evidence or content is
ever in a QIDO row, so the title needs one ``/metadata`` request (per instance, or per KO series).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydicom import Dataset

from app.dicom.kos import KOS_SOP_CLASS_UID, KeyObjectSelection, parse_kos
from tests.support.kos import (
    FOR_CONFERENCE,
    FOR_REFERRING_PROVIDER,
    FOR_TEACHING,
    QUALITY_ISSUE,
    REJECTIONS,
    Title,
    expected_kos,
    make_kos,
    make_multiframe,
    make_study,
)
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store

pytestmark = pytest.mark.integration

SEED = 23
PATIENT: dict[str, Any] = {"patient_id": "KOS0001", "patient_name": "Müller^Jürgen", "issuer": "HOSP-K"}
LONG_DESCRIPTION = "Key images for the tumour board. " * 200  # ~6.6 kB of UT: inline or bulk data?

# DICOM JSON tags.
SOP_CLASS, SOP_UID, STUDY_UID, SERIES_UID, MODALITY = "00080016", "00080018", "0020000D", "0020000E", "00080060"
CONTENT_DATE, CONTENT_TIME, TZ_OFFSET, CONCEPT_NAME = "00080023", "00080033", "00080201", "0040A043"
EVIDENCE, CONTENT_SEQUENCE, ROWS, N_SERIES_INSTANCES = "0040A375", "0040A730", "00280010", "00201209"


@dataclass(frozen=True)
class Built:
    """One KOS as built, and what parse_kos must make of it."""

    name: str
    ds: Dataset
    referenced: list[Dataset]
    expected: KeyObjectSelection


@dataclass
class KosPacs:
    server: OrthancServer
    ct: list[Dataset]
    mr: list[Dataset]
    cine: Dataset
    zone: list[Dataset]
    kos: dict[str, Built] = field(default_factory=dict)

    @property
    def dicomweb_url(self) -> str:
        return self.server.dicomweb_url


def _build(
    name: str,
    referenced: list[Dataset],
    title: Title,
    *,
    description: str | None = None,
    frames: dict[str, list[int]] | None = None,
    observer_name: str | None = None,
    **options: Any,
) -> Built:
    ds = make_kos(
        referenced,
        title=title,
        description=description,
        frames=frames,
        observer_name=observer_name,
        seed=SEED,
        **options,
    )
    expected = expected_kos(
        ds, referenced, title=title, description=description, frames=frames, observer_name=observer_name
    )
    return Built(name, ds, referenced, expected)


@pytest.fixture(scope="module")
def pacs() -> Iterator[KosPacs]:
    # Module-scoped fixtures are set up before the package's autouse skip runs, so check here as well.
    if orthanc_binary() is None or dicomweb_plugin() is None:
        reason = "Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)

    ct = make_study(SEED, "ct", series_sizes=(3, 2), study_date="20240105", **PATIENT)
    mr = make_study(SEED, "mr", modality="MR", study_date="20240210", study_time="080000", **PATIENT)
    cine = make_multiframe(ct[0], frames=5, seed=SEED)
    # A study whose one image has no TimezoneOffsetFromUTC, and a KOS made in another zone, stored after it.
    zone = make_study(SEED, "zone", series_sizes=(1,), study_date="20240320", **PATIENT)
    shared_series = "2.25.1" + "0" * 20 + "23"  # two conference KOS in one KO series
    built = [
        _build(
            "teaching",
            ct[:3],
            FOR_TEACHING,
            description="Classic presentation",
            observer_name="Wélby^Marcus",
            timezone_offset="+0100",
            content_time="101112.25",
        ),
        _build(
            "frames",
            [ct[3], cine],
            FOR_CONFERENCE,
            frames={str(cine.SOPInstanceUID): [2, 4]},
            series_uid=shared_series,
            instance_number=1,
        ),
        _build(
            "conference-long",
            [cine],
            FOR_CONFERENCE,
            description=LONG_DESCRIPTION,
            series_uid=shared_series,
            instance_number=2,
        ),
        _build(
            "two-studies",
            [ct[0], mr[0], mr[1]],
            FOR_REFERRING_PROVIDER,
            study_uid=str(mr[0].StudyInstanceUID),
        ),
        _build("quality", [ct[4]], QUALITY_ISSUE),
        *(_build(f"rejection-{title[0]}", [ct[4]], title) for title in REJECTIONS),
        _build("zone", zone, FOR_TEACHING, timezone_offset="+0900"),
    ]
    with OrthancServer() as server:
        stored = store(server.dicomweb_url, [*ct, *mr, cine, *zone, *(b.ds for b in built)])
        assert stored == len(ct) + len(mr) + 1 + len(zone) + len(built)
        yield KosPacs(server, ct, mr, cine, zone, {b.name: b for b in built})


def get_json(pacs: KosPacs, path: str, **headers: str) -> Any:
    response = httpx.get(pacs.dicomweb_url + path, headers={"Accept": "application/dicom+json", **headers}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def metadata(pacs: KosPacs, ds: Dataset) -> list[dict[str, Any]]:
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"
    answer: list[dict[str, Any]] = get_json(pacs, path)
    return answer


def values(row: dict[str, Any], tag: str) -> list[Any]:
    found: list[Any] = row.get(tag, {}).get("Value", [])
    return found


def sop_uids(rows: list[dict[str, Any]]) -> set[str]:
    return {values(row, SOP_UID)[0] for row in rows}


KOS_NAMES = [
    "teaching",
    "frames",
    "conference-long",
    "two-studies",
    "quality",
    *(f"rejection-{t[0]}" for t in REJECTIONS),
    "zone",
]


# -- WADO-RS metadata → app.dicom.kos ---------------------------------------------------------------------------------


class TestWadoMetadata:
    @pytest.mark.parametrize("name", KOS_NAMES)
    def test_parsed_metadata_equals_what_was_built(self, pacs: KosPacs, name: str) -> None:
        built = pacs.kos[name]
        answer = metadata(pacs, built.ds)
        assert len(answer) == 1
        assert parse_kos(answer) == built.expected

    def test_every_field_of_one(self, pacs: KosPacs) -> None:
        got = parse_kos(metadata(pacs, pacs.kos["teaching"].ds))
        assert got.patient_name is not None and got.patient_name.alphabetic == "Müller^Jürgen"
        assert got.observer_name is not None and got.observer_name.alphabetic == "Wélby^Marcus"
        assert (got.patient_id, got.issuer_of_patient_id) == ("KOS0001", "HOSP-K")
        assert got.description == "Classic presentation"
        assert (got.content_date, got.content_time, got.timezone_offset) == ("20240301", "101112.25", "+0100")
        assert got.issued is not None and got.issued.isoformat() == "2024-03-01T10:11:12.250000+01:00"
        assert len(got.series()) == 1 and len(got.references) == 3

    def test_frames_come_back_as_json_numbers(self, pacs: KosPacs) -> None:
        # PS3.18 F.2.3: IS is a JSON number, nested sequences included.
        built = pacs.kos["frames"]
        items = values(metadata(pacs, built.ds)[0], CONTENT_SEQUENCE)
        frame_lists = [values(ref, "00081160") for item in items for ref in values(item, "00081199")]
        assert [2, 4] in frame_lists
        got = parse_kos(metadata(pacs, built.ds))
        assert {r.sop_instance_uid: r.frames for r in got.references}[str(pacs.cine.SOPInstanceUID)] == (2, 4)

    def test_selected_frames_exist(self, pacs: KosPacs) -> None:
        # A viewer fetches the selected frames with WADO-RS …/frames/{n}; Orthanc serves them from the SC image.
        cine = pacs.cine
        base = f"/studies/{cine.StudyInstanceUID}/series/{cine.SeriesInstanceUID}/instances/{cine.SOPInstanceUID}"
        response = httpx.get(pacs.dicomweb_url + base + "/frames/2,4", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/related")

    def test_two_studies_kos_lives_in_one_study(self, pacs: KosPacs) -> None:
        built = pacs.kos["two-studies"]
        got = parse_kos(metadata(pacs, built.ds))
        ct_study, mr_study = str(pacs.ct[0].StudyInstanceUID), str(pacs.mr[0].StudyInstanceUID)
        assert got.study_uid == mr_study
        assert [s.study_uid for s in got.series()] == [mr_study, ct_study]
        # The KOS is stored in the MR study only: the CT study's WADO-RS metadata does not hold it.
        ct_meta = get_json(pacs, f"/studies/{ct_study}/metadata")
        assert str(built.ds.SOPInstanceUID) not in sop_uids(ct_meta)

    def test_long_description_is_inline(self, pacs: KosPacs) -> None:
        # A 6.6 kB UT TextValue comes back inline ("Value"), not as a BulkDataURI, so the parser sees it.
        got = parse_kos(metadata(pacs, pacs.kos["conference-long"].ds))
        assert got.description == LONG_DESCRIPTION.strip()

    def test_series_metadata_returns_every_kos_of_the_series(self, pacs: KosPacs) -> None:
        # One request per KO series instead of one per KOS.
        ds = pacs.kos["frames"].ds
        answer = get_json(pacs, f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata")
        parsed = {parse_kos(item).sop_instance_uid: parse_kos(item) for item in answer}
        assert parsed == {
            b.expected.sop_instance_uid: b.expected for b in (pacs.kos["frames"], pacs.kos["conference-long"])
        }


# -- what QIDO-RS tells about KOS ---------------------------------------------------------------------------------


class TestQido:
    def kos_uids(self, pacs: KosPacs) -> set[str]:
        return {str(b.ds.SOPInstanceUID) for b in pacs.kos.values()}

    def test_instances_by_modality_ko(self, pacs: KosPacs) -> None:
        rows = get_json(pacs, "/instances?Modality=KO")
        assert sop_uids(rows) == self.kos_uids(pacs)
        assert {values(row, SOP_CLASS)[0] for row in rows} == {KOS_SOP_CLASS_UID}

    def test_instances_by_sop_class(self, pacs: KosPacs) -> None:
        # Works because the harness runs with StorageAccessOnFind: Always (SOPClassUID is not a main tag).
        rows = get_json(pacs, f"/instances?SOPClassUID={KOS_SOP_CLASS_UID}")
        assert sop_uids(rows) == self.kos_uids(pacs)

    def test_a_patients_ko_series(self, pacs: KosPacs) -> None:
        rows = get_json(pacs, "/series?PatientID=KOS0001&Modality=KO")
        want = {str(b.ds.SeriesInstanceUID) for b in pacs.kos.values()}
        assert {values(row, SERIES_UID)[0] for row in rows} == want
        assert len(rows) == len(pacs.kos) - 1  # two conference KOS share a series
        counts = {values(row, SERIES_UID)[0]: values(row, N_SERIES_INSTANCES)[0] for row in rows}
        assert counts[str(pacs.kos["frames"].ds.SeriesInstanceUID)] == 2

    def test_modalities_in_study_lists_ko(self, pacs: KosPacs) -> None:
        rows = get_json(pacs, "/studies?ModalitiesInStudy=KO")
        assert {values(row, STUDY_UID)[0] for row in rows} == {
            str(pacs.ct[0].StudyInstanceUID),
            str(pacs.mr[0].StudyInstanceUID),
            str(pacs.zone[0].StudyInstanceUID),
        }
        ct_row = next(row for row in rows if values(row, STUDY_UID)[0] == pacs.ct[0].StudyInstanceUID)
        assert set(values(ct_row, "00080061")) == {"CT", "OT", "KO"}

    def test_no_title_evidence_or_content_in_qido(self, pacs: KosPacs) -> None:
        # Sequences are never returned, even when asked for by includefield.
        query = f"/instances?Modality=KO&includefield={CONCEPT_NAME}&includefield={EVIDENCE}"
        rows = get_json(pacs, query + f"&includefield={CONTENT_SEQUENCE}&includefield=ConceptNameCodeSequence")
        assert rows and not any(tag in row for row in rows for tag in (CONCEPT_NAME, EVIDENCE, CONTENT_SEQUENCE))

    def test_content_date_only_when_asked(self, pacs: KosPacs) -> None:
        rows = get_json(pacs, "/instances?Modality=KO")
        assert not any(CONTENT_DATE in row or CONTENT_TIME in row for row in rows)
        rows = get_json(pacs, f"/instances?Modality=KO&includefield={CONTENT_DATE},{CONTENT_TIME}")
        by_uid = {values(row, SOP_UID)[0]: row for row in rows}
        teaching = by_uid[str(pacs.kos["teaching"].ds.SOPInstanceUID)]
        assert (values(teaching, CONTENT_DATE), values(teaching, CONTENT_TIME)) == (["20240301"], ["101112.25"])

    def test_kos_rows_have_no_image_attributes(self, pacs: KosPacs) -> None:
        rows = get_json(pacs, "/instances?Modality=KO")
        assert not any(ROWS in row for row in rows)

    def test_title_cannot_be_matched(self, pacs: KosPacs) -> None:
        # A sequence match key is ignored: every KOS comes back, rejection notes included. Telling a teaching file
        # from a rejection note needs the metadata.
        rows = get_json(pacs, f"/instances?Modality=KO&{CONCEPT_NAME}.00080100=113004")
        assert sop_uids(rows) == self.kos_uids(pacs)

    def test_rejected_instances_stay_visible(self, pacs: KosPacs) -> None:
        # Orthanc 1.10 does not implement IHE IOCM: after four rejection notes naming ct[4], it is still served.
        rejected = pacs.ct[4]
        assert all(parse_kos(metadata(pacs, pacs.kos[f"rejection-{t[0]}"].ds)).is_rejection for t in REJECTIONS)
        rows = get_json(pacs, f"/instances?SOPInstanceUID={rejected.SOPInstanceUID}")
        assert sop_uids(rows) == {str(rejected.SOPInstanceUID)}
        assert len(metadata(pacs, rejected)) == 1

    def test_a_kos_timezone_offset_leaks_into_the_study_row(self, pacs: KosPacs) -> None:
        # Orthanc answers study-level TimezoneOffsetFromUTC from one instance of the study, here the last stored:
        # the KOS's +0900, although the image has none. ImagingStudy.started takes its zone from the study row, so
        # a KOS written in another zone (or any instance with an offset the images lack) can shift it.
        study = pacs.zone[0].StudyInstanceUID
        row = get_json(pacs, f"/studies?StudyInstanceUID={study}")[0]
        assert values(row, TZ_OFFSET) == ["+0900"]
        image = get_json(pacs, f"/studies/{study}/instances?Modality=CT")[0]
        assert TZ_OFFSET not in image
