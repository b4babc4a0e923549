"""The test harness itself: the generator's ground truth, the private Orthanc, and STOW-RS loading.

Query URLs are written as one string on purpose: Orthanc 1.10 (Debian) does not percent-decode query
values, so ``^`` and ``*`` must stay raw (shared/docs/orthanc-qido.md).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.dataset import Manifest, StudyTruth, build_bulk, build_dataset
from tests.support.orthanc import OrthancServer, StowError, store

if TYPE_CHECKING:
    from tests.integration.conftest import OrthancFixture

pytestmark = pytest.mark.integration

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# DICOM JSON tags used below.
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_DESCRIPTION = "00081030"
CHARSET = "00080005"
N_STUDY_INSTANCES = "00201208"
RETRIEVE_URL = "00081190"


def qido(orthanc: OrthancFixture, path_and_query: str) -> list[dict[str, Any]]:
    response = httpx.get(orthanc.dicomweb_url + path_and_query, timeout=10)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def values(row: dict[str, Any], tag: str) -> list[Any]:
    found: list[Any] = row.get(tag, {}).get("Value", [])
    return found


def study_uids(rows: list[dict[str, Any]]) -> set[str]:
    return {values(row, STUDY_UID)[0] for row in rows}


def truth_where(manifest: Manifest, **fields: object) -> set[str]:
    return {s.study_uid for s in manifest.studies if all(getattr(s, k) == v for k, v in fields.items())}


class TestGenerator:
    def test_same_seed_same_data(self) -> None:
        first_ds, first = build_dataset()
        second_ds, second = build_dataset()
        assert first == second
        assert [ds.SOPInstanceUID for ds in first_ds] == [ds.SOPInstanceUID for ds in second_ds]
        _, other = build_dataset(seed=8)
        assert {s.study_uid for s in other.studies}.isdisjoint({s.study_uid for s in first.studies})

    def test_uids_are_valid_and_unique(self) -> None:
        datasets, manifest = build_dataset()
        uids = [s.study_uid for s in manifest.studies]
        uids += [se.uid for st in manifest.studies for se in st.series]
        uids += [i.uid for st in manifest.studies for i in st.instances]
        assert len(uids) == len(set(uids))
        assert all(len(uid) <= 64 and UID_RE.match(uid) for uid in uids)
        assert len(datasets) == manifest.n_instances

    def test_every_instance_matches_its_study_and_series(self) -> None:
        datasets, manifest = build_dataset()
        for ds in datasets:
            study = manifest.study(ds.StudyInstanceUID)
            series = manifest.series(ds.SeriesInstanceUID)
            assert series in study.series
            assert str(ds.PatientName) == study.patient_name
            assert ds.PatientID == study.patient_id
            assert ds.get("IssuerOfPatientID") == study.issuer
            assert ds.get("StudyTime") == study.study_time
            assert ds.get("StudyDescription") == study.description
            assert ds.get("TimezoneOffsetFromUTC") == study.tz_offset
            assert ds.Modality == series.modality
            assert ds.get("BodyPartExamined") == series.body_part
            assert ds.get("Laterality") == series.laterality
            assert ds.SOPInstanceUID in {i.uid for i in series.instances}

    def test_curated_edge_cases_are_present(self) -> None:
        _, m = build_dataset()
        names = {s.patient_name for s in m.studies}
        assert {"Müller^Jürgen", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Gómez^María"} <= names
        tricky = {("SHARED01", "HOSP-A"), ("SHARED01", "HOSP-B"), ("MRN0100", None), ("mrn0100", None)}
        assert tricky <= set(m.patients)
        assert len(m.patients) >= 6 and len(m.studies) >= 12
        assert {"ACC2001", "acc2001"} <= {s.accession for s in m.studies}
        assert any(s.description == "" for s in m.studies)
        assert any(s.study_time is None for s in m.studies)
        assert {"+0100", "-0500"} <= {s.tz_offset for s in m.studies}
        assert any(len(s.modalities) > 1 for s in m.studies)
        assert {"CT", "MR", "CR", "US"} <= {mod for s in m.studies for mod in s.modalities}
        dates = [s.study_date for s in m.studies]
        assert any(dates.count(d) > 1 for d in dates)
        assert {d[:4] for d in dates if d} >= {"2018", "2024"}
        assert {"L", "R"} <= {se.laterality for s in m.studies for se in s.series}

    def test_bulk_shape(self) -> None:
        datasets, manifest = build_bulk(3, 2, 2, 2, seed=1)
        assert len(manifest.studies) == 6 and manifest.n_series == 12 and len(datasets) == 24
        assert len(manifest.patients) == 3
        again, _ = build_bulk(3, 2, 2, 2, seed=1)
        assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in datasets]


class TestLoadedOrthanc:
    def test_every_study_is_there_with_its_instance_count(self, orthanc: OrthancFixture) -> None:
        rows = qido(orthanc, "/studies")
        assert len(rows) == len(orthanc.manifest.studies)
        for row in rows:
            study = orthanc.manifest.study(values(row, STUDY_UID)[0])
            assert values(row, N_STUDY_INSTANCES) == [study.n_instances]

    def test_series_and_instances_are_not_truncated(self, orthanc: OrthancFixture) -> None:
        assert len(qido(orthanc, "/series")) == orthanc.manifest.n_series
        assert len(qido(orthanc, "/instances")) == orthanc.manifest.n_instances

    def test_non_ascii_name_matches_only_with_ascii_wildcards(self, orthanc: OrthancFixture) -> None:
        expected = truth_where(orthanc.manifest, patient_name="Müller^Jürgen")
        rows = qido(orthanc, "/studies?PatientName=M*ller*")
        assert study_uids(rows) == expected
        assert all(values(r, PATIENT_NAME) == [{"Alphabetic": "Müller^Jürgen"}] for r in rows)
        # The trap the facade must avoid: a percent-encoded value is matched literally (0 results).
        encoded = httpx.get(orthanc.dicomweb_url + "/studies", params={"PatientName": "M*ller*"})
        assert encoded.json() == []

    def test_three_group_name_keeps_ideographic_and_phonetic(self, orthanc: OrthancFixture) -> None:
        rows = qido(orthanc, "/studies?PatientName=Yamada*")
        assert study_uids(rows) == truth_where(orthanc.manifest, patient_id="JP0002")
        assert values(rows[0], PATIENT_NAME) == [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
        ]
        assert values(rows[0], CHARSET) == ["ISO_IR 192"]

    def test_latin1_study_comes_back_as_utf8(self, orthanc: OrthancFixture) -> None:
        rows = qido(orthanc, "/studies?PatientID=ES0003&includefield=00081030")
        by_uid = {values(r, STUDY_UID)[0]: r for r in rows}
        assert set(by_uid) == truth_where(orthanc.manifest, patient_id="ES0003")
        for uid, row in by_uid.items():
            assert values(row, PATIENT_NAME) == [{"Alphabetic": "Gómez^María"}]
            truth: StudyTruth = orthanc.manifest.study(uid)
            assert values(row, STUDY_DESCRIPTION) == ([truth.description] if truth.description else [])

    def test_empty_description_is_present_without_value(self, orthanc: OrthancFixture) -> None:
        (empty,) = [s for s in orthanc.manifest.studies if s.description == ""]
        (row,) = qido(orthanc, f"/studies?StudyInstanceUID={empty.study_uid}&includefield=00081030")
        assert row[STUDY_DESCRIPTION] == {"vr": "LO"}

    def test_shared_patient_id_is_told_apart_by_issuer(self, orthanc: OrthancFixture) -> None:
        m = orthanc.manifest
        rows = qido(orthanc, "/studies?PatientID=SHARED01")
        assert study_uids(rows) == truth_where(m, patient_id="SHARED01")
        rows = qido(orthanc, "/studies?PatientID=SHARED01&IssuerOfPatientID=HOSP-B")
        assert study_uids(rows) == truth_where(m, patient_id="SHARED01", issuer="HOSP-B")

    def test_patient_id_matching_ignores_case(self, orthanc: OrthancFixture) -> None:
        # Orthanc quirk (QidoCaseSensitive unset): the facade has to re-filter on its side.
        rows = qido(orthanc, "/studies?PatientID=mrn0100")
        assert {values(r, PATIENT_ID)[0] for r in rows} == {"mrn0100", "MRN0100"}

    def test_retrieve_url_follows_the_request_host(self, orthanc: OrthancFixture) -> None:
        (row,) = qido(orthanc, "/studies?limit=1")
        assert values(row, RETRIEVE_URL)[0].startswith(orthanc.dicomweb_url + "/studies/")

    def test_storing_again_is_idempotent(self, orthanc: OrthancFixture) -> None:
        before = httpx.get(orthanc.url + "/statistics").json()
        assert store(orthanc.dicomweb_url, orthanc.datasets[:3]) == 3
        after = httpx.get(orthanc.url + "/statistics").json()
        assert after["CountInstances"] == before["CountInstances"] == orthanc.manifest.n_instances

    def test_store_reports_an_instance_orthanc_drops(self, orthanc: OrthancFixture) -> None:
        broken = copy.deepcopy(orthanc.datasets[0])
        del broken.SOPInstanceUID  # Orthanc answers 400 with an empty FailedSOPSequence
        with pytest.raises(StowError, match="sent 2, stored 1"):
            store(orthanc.dicomweb_url, [orthanc.datasets[1], broken])


class TestServerLifecycle:
    # Each Orthanc takes ~2.5 s to stop (civetweb), so one test covers config, stop and restart.
    def test_config_merge_stop_by_pid_and_kept_storage(self, tmp_path: Path) -> None:
        datasets, _ = build_dataset()
        extra = {"DicomWeb": {"QidoCaseSensitive": True}}
        server = OrthancServer(extra_config=extra, storage_dir=tmp_path / "pacs")
        with server:
            pid, workdir = server.pid, server.workdir
            os.kill(pid, 0)  # alive
            assert server.config["DicomWeb"]["Root"] == "/dicom-web/"
            assert server.config["DicomWeb"]["QidoCaseSensitive"] is True
            assert httpx.get(server.url + "/system").status_code == 200
            assert store(server.dicomweb_url, datasets[:2]) == 2
        assert not workdir.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with OrthancServer(storage_dir=tmp_path / "pacs") as again:
            assert httpx.get(again.url + "/statistics").json()["CountInstances"] == 2
