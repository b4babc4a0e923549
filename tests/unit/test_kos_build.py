"""app.dicom.kos_build: KOS documents from plain inputs, read back through a Part 10 round trip and
app.dicom.kos.parse_kos.

Categories:
- round trips: build → encode → pydicom.dcmread → to_json_dict → parse_kos, compared whole with the inputs,
  for several CID 7010 titles, frames, non-ASCII text, with and without a description;
- the attributes the KOS IOD requires (PS3.3 A.35.4), checked on the decoded dataset, and independent readers
  (highdicom's KeyObjectSelectionDocument.from_dataset; DCMTK's dsrdump when installed);
- cross-study selections: one copy per study with Identical Documents (PS3.3 C.17.6.2.1);
- time: ContentDate/Time from an aware datetime, with the study's TimezoneOffsetFromUTC when it has one, and none
  (the PACS zone's local time) when it has none, so storing a KOS never moves its study's start (issue 9 item 7);
- determinism, input validation, the QIDO-row constructors and the IMAGE/COMPOSITE choice.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from highdicom._standard_utils import get_iod_module_map, get_sop_class_iod_map
from highdicom.ko import KeyObjectSelectionDocument
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from app.dicom import dicom_json
from app.dicom.kos import KOS_SOP_CLASS_UID, Code, KeyObjectSelection, PersonName, ReferencedInstance, parse_kos
from app.dicom.kos_build import (
    DeviceObserver,
    DocumentRef,
    Evidence,
    KosCopy,
    PatientStudy,
    build_kos,
    build_kos_copies,
    encode,
    is_image_sop_class,
)
from app.mapping.imaging_selection import issued_instant
from tests.support.kos import FOR_CONFERENCE, FOR_REFERRING_PROVIDER, FOR_TEACHING, PURPOSES, QUALITY_ISSUE, REJECTIONS

DATA = Path(__file__).parent.parent / "data"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_SC_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"
ENHANCED_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
CET = timezone(timedelta(hours=1))
WHEN = datetime(2024, 3, 1, 9, 30, tzinfo=CET)

CT_STUDY = PatientStudy(
    patient_id="KOS0001",
    issuer="HOSP-K",
    patient_name="Müller^Jürgen",
    birth_date="19580214",
    sex="M",
    study_uid="2.25.100",
    study_date="20240105",
    study_time="101500",
    accession="ACC-1",
    study_id="S1",
    referring_physician="Pérez^Ana",
)
MR_STUDY = replace(CT_STUDY, study_uid="2.25.200", accession="ACC-2", study_id="S2", study_date="20240210")

CT_1 = Evidence("2.25.100", "2.25.100.1", "2.25.100.1.1", CT_CLASS)
CT_2 = Evidence("2.25.100", "2.25.100.1", "2.25.100.1.2", CT_CLASS)
CT_3 = Evidence("2.25.100", "2.25.100.2", "2.25.100.2.1", CT_CLASS)
CINE = Evidence("2.25.100", "2.25.100.50", "2.25.100.50.1", MULTIFRAME_SC_CLASS, frames=(2, 4))
REPORT = Evidence("2.25.100", "2.25.100.3", "2.25.100.3.1", ENHANCED_SR_CLASS)
MR_1 = Evidence("2.25.200", "2.25.200.1", "2.25.200.1.1", "1.2.840.10008.5.1.4.1.1.4")

# DICOM JSON tags read directly in a few tests.
CONTENT_SEQUENCE, VALUE_TYPE, IDENTICAL = "0040A730", "0040A040", "0040A525"


def build(evidence: list[Evidence], study: PatientStudy = CT_STUDY, **options: Any) -> Dataset:
    arguments: dict[str, Any] = {
        "title": FOR_TEACHING,
        "description": "Classic presentation",
        "sop_instance_uid": "2.25.900.1",
        "series_uid": "2.25.900",
        "series_number": 999,
        "instance_number": 1,
        "content_datetime": WHEN,
        **options,
    }
    return build_kos(study, evidence, **arguments)


def decoded(ds: Dataset) -> Dataset:
    return dcmread(io.BytesIO(encode(ds)))


def parsed(ds: Dataset) -> KeyObjectSelection:
    return parse_kos(decoded(ds).to_json_dict())


def refs(*evidence: Evidence) -> tuple[ReferencedInstance, ...]:
    return tuple(
        ReferencedInstance(e.study_uid, e.series_uid, e.sop_instance_uid, e.sop_class_uid, e.frames) for e in evidence
    )


def expected(
    evidence: tuple[ReferencedInstance, ...],
    *,
    title: tuple[str, str, str] = FOR_TEACHING,
    description: str | None = "Classic presentation",
    observer: PersonName | None = None,
    study: PatientStudy = CT_STUDY,
    sop_instance_uid: str = "2.25.900.1",
    series_uid: str = "2.25.900",
    content_time: str = "093000",
    timezone_offset: str | None = None,
    identical: tuple[str, ...] = (),
    identical_studies: tuple[str, ...] = (),
) -> KeyObjectSelection:
    return KeyObjectSelection(
        sop_instance_uid=sop_instance_uid,
        study_uid=study.study_uid,
        series_uid=series_uid,
        patient_id=study.patient_id,
        issuer_of_patient_id=study.issuer,
        patient_name=PersonName(*[*(study.patient_name or "").split("="), None, None][:3]),
        title=Code(*title),
        description=description,
        observer_name=observer,
        device_observer_name=None,
        content_date="20240301",
        content_time=content_time,
        timezone_offset=timezone_offset,
        references=evidence,
        identical=identical,
        identical_studies=identical_studies,
    )


# -- round trips ------------------------------------------------------------------------------------------------


class TestRoundTrip:
    @pytest.mark.parametrize("title", PURPOSES, ids=[t[2] for t in PURPOSES])
    def test_titles(self, title: tuple[str, str, str]) -> None:
        assert {t[0] for t in PURPOSES} == {"113004", "113005", "113002", "113010"}
        got = parsed(build([CT_1, CT_3], title=title))
        assert got == expected(refs(CT_1, CT_3), title=title)
        assert not got.is_rejection

    def test_frames_of_a_multiframe_image(self) -> None:
        got = parsed(build([CT_1, CINE], title=FOR_CONFERENCE))
        assert got == expected(refs(CT_1, CINE), title=FOR_CONFERENCE)
        assert {r.sop_instance_uid: r.frames for r in got.references} == {
            CT_1.sop_instance_uid: (),
            CINE.sop_instance_uid: (2, 4),
        }

    def test_frames_are_json_numbers_in_the_image_item(self) -> None:
        items = decoded(build([CINE])).to_json_dict()[CONTENT_SEQUENCE]["Value"]
        frames = [ref["00081160"]["Value"] for item in items for ref in item.get("00081199", {}).get("Value", [])]
        assert frames == [[2, 4]]

    def test_frame_order_is_kept(self) -> None:
        cine = replace(CINE, frames=(5, 1, 3))
        assert parsed(build([cine])).references == refs(cine)

    def test_non_ascii_everywhere(self) -> None:
        study = replace(CT_STUDY, patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", referring_physician="Ñúñez^José")
        description = "Läsion im Segment 7 — 3 cm; 肝臓"
        ds = build([CT_1], study=study, description=description, observer_name="Wélby^Marcus")
        got = parsed(ds)
        assert got == expected(refs(CT_1), description=description, observer=PersonName("Wélby^Marcus"), study=study)
        assert got.patient_name == PersonName("Yamada^Tarou", "山田^太郎", "やまだ^たろう")
        assert decoded(ds).SpecificCharacterSet == "ISO_IR 192"
        assert str(decoded(ds).ReferringPhysicianName) == "Ñúñez^José"

    def test_one_component_observer_name_is_kept_without_warning(self) -> None:
        # highdicom warns on a PN without "^"; PS3.5 allows it, and filterwarnings=error would turn it into a failure
        assert parsed(build([CT_1], observer_name="Bono")).observer_name == PersonName("Bono")

    @pytest.mark.parametrize("description", [None, "", "   "])
    def test_no_description(self, description: str | None) -> None:
        ds = build([CT_1], description=description)
        assert parsed(ds) == expected(refs(CT_1), description=None)
        assert "TEXT" not in {item.ValueType for item in ds.ContentSequence}

    def test_description_is_stripped(self) -> None:
        assert parsed(build([CT_1], description="  Nice case \n")).description == "Nice case"

    def test_long_description(self) -> None:
        text = "Key images for the tumour board. " * 300  # UT: no 64-character limit
        assert parsed(build([CT_1], description=text)).description == text.strip()

    def test_image_and_composite_items(self) -> None:
        ds = build([CT_1, REPORT, CINE])
        kinds = [
            (item.ValueType, str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            for item in ds.ContentSequence
            if "ReferencedSOPSequence" in item
        ]
        assert kinds == [
            ("IMAGE", CT_1.sop_instance_uid),
            ("COMPOSITE", REPORT.sop_instance_uid),
            ("IMAGE", CINE.sop_instance_uid),
        ]
        assert parsed(ds).references == refs(CT_1, REPORT, CINE)

    def test_evidence_is_grouped_by_series_in_order_of_appearance(self) -> None:
        # Content order is the caller's; the evidence groups by study, then series (first appearance).
        ds = build([CT_3, CT_1, CINE, CT_2])
        assert [
            str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in ds.ContentSequence
            if "ReferencedSOPSequence" in i
        ] == [e.sop_instance_uid for e in (CT_3, CT_1, CINE, CT_2)]
        assert parsed(ds).references == refs(CT_3, CT_1, CT_2, CINE)
        series = [
            str(s.SeriesInstanceUID) for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        ]
        assert series == ["2.25.100.2", "2.25.100.1", "2.25.100.50"]

    def test_unknown_patient_and_study_attributes_are_empty(self) -> None:
        study = PatientStudy("", None, None, None, None, "2.25.100", None, None, None, None, None)
        ds = decoded(build([CT_1], study=study))
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
        ):
            assert keyword in ds and not ds[keyword].value, keyword  # Type 2: present, empty
        assert "IssuerOfPatientID" not in ds
        got = parse_kos(ds.to_json_dict())
        assert (got.patient_id, got.patient_name, got.issuer_of_patient_id) == (None, None, None)


# -- what the IOD requires -----------------------------------------------------------------------------------------


class TestRequiredAttributes:
    def test_kos_iod(self) -> None:
        ds = decoded(build([CT_1, CINE], observer_name="Wélby^Marcus"))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == KOS_SOP_CLASS_UID
        assert ds.file_meta.MediaStorageSOPInstanceUID == "2.25.900.1"
        # SOP Common
        assert (ds.SOPClassUID, ds.SOPInstanceUID, ds.SpecificCharacterSet) == (
            KOS_SOP_CLASS_UID,
            "2.25.900.1",
            "ISO_IR 192",
        )
        assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20240301", "093000")
        assert "TimezoneOffsetFromUTC" not in ds  # the study has none (C.12.1.1.8)
        # Patient, General Study (copied from the study row)
        assert (str(ds.PatientName), ds.PatientID, ds.IssuerOfPatientID) == ("Müller^Jürgen", "KOS0001", "HOSP-K")
        assert (ds.PatientBirthDate, ds.PatientSex) == ("19580214", "M")
        assert (ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID) == (
            "2.25.100",
            "20240105",
            "101500",
            "ACC-1",
            "S1",
        )
        assert str(ds.ReferringPhysicianName) == "Pérez^Ana"
        # Key Object Document Series, General Equipment
        assert (ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber) == ("KO", "2.25.900", 999)
        assert (
            "ReferencedPerformedProcedureStepSequence" in ds and len(ds.ReferencedPerformedProcedureStepSequence) == 0
        )
        assert ds.Manufacturer == "imaging-fhir-facade"
        # Key Object Document
        assert (ds.InstanceNumber, ds.ContentDate, ds.ContentTime) == (1, "20240301", "093000")
        assert len(ds.CurrentRequestedProcedureEvidenceSequence) == 1
        assert "IdenticalDocumentsSequence" not in ds  # one study: no copies
        # SR Document Content (TID 2010 root)
        assert (ds.ValueType, ds.ContinuityOfContent) == ("CONTAINER", "SEPARATE")
        title = ds.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == FOR_TEACHING
        template = ds.ContentTemplateSequence[0]
        assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2010")
        items = ds.ContentSequence
        assert [(i.RelationshipType, i.ValueType) for i in items] == [
            ("HAS OBS CONTEXT", "CODE"),  # TID 1002 observer type = person
            ("HAS OBS CONTEXT", "PNAME"),
            ("CONTAINS", "TEXT"),
            ("CONTAINS", "IMAGE"),
            ("CONTAINS", "IMAGE"),
        ]
        description = items[2].ConceptNameCodeSequence[0]
        assert (description.CodeValue, description.CodingSchemeDesignator, description.CodeMeaning) == (
            "113012",
            "DCM",
            "Key Object Description",
        )

    def test_highdicom_reads_it_back(self) -> None:
        doc = KeyObjectSelectionDocument.from_dataset(decoded(build([CT_1, REPORT, CINE], observer_name="A^B")))
        assert [item.referenced_sop_instance_uid for item in doc.content.get_references()] == [
            e.sop_instance_uid for e in (CT_1, REPORT, CINE)
        ]
        assert doc.resolve_reference(CINE.sop_instance_uid) == (CINE.study_uid, CINE.series_uid, CINE.sop_instance_uid)
        assert len(doc.content.get_observer_contexts()) == 1

    @pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK dsrdump is not installed")
    @pytest.mark.parametrize("cross_study", [False, True])
    def test_dcmtk_accepts_it(self, tmp_path: Path, cross_study: bool) -> None:
        # DCMTK checks the KOS IOD's value types and relationship constraints while it reads the document.
        if cross_study:
            ds = copies([CT_1, MR_1, CINE])[0]
        else:
            ds = build([CT_1, REPORT, CINE], observer_name="Wélby^Marcus")
        path = tmp_path / "kos.dcm"
        path.write_bytes(encode(ds))
        run = subprocess.run(["dsrdump", "--log-level", "warn", str(path)], capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        errors = [line for line in run.stderr.splitlines() if line.startswith(("E:", "F:"))]
        assert not errors, run.stderr
        assert "Key Object Selection Document" in run.stdout
        root = [line for line in run.stdout.splitlines() if line.startswith("<CONTAINER:")]
        assert len(root) == 1 and root[0].endswith("=SEPARATE>")

    def test_encode_gives_a_part10_file(self) -> None:
        data = encode(build([CT_1]))
        assert data[128:132] == b"DICM"

    def test_encode_refuses_other_transfer_syntaxes(self) -> None:
        ds = build([CT_1])
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        with pytest.raises(ValueError, match="explicit VR little endian"):
            encode(ds)


# -- across studies ------------------------------------------------------------------------------------------------


def copies(evidence: list[Evidence], **options: Any) -> list[Dataset]:
    arguments: dict[str, Any] = {
        "title": FOR_REFERRING_PROVIDER,
        "description": "Prior and current",
        "series_number": 999,
        "instance_number": 1,
        "content_datetime": WHEN,
        **options,
    }
    placements = [
        KosCopy(CT_STUDY, "2.25.100.900", "2.25.100.900.1"),
        KosCopy(MR_STUDY, "2.25.200.900", "2.25.200.900.1"),
    ]
    return build_kos_copies(placements, evidence, **arguments)


class TestObservers:
    """TID 1002 observer context: a person (TID 1003, with the SMART fhirUser as Person Observer's Login Name) and/or
    a device (TID 1004: Device Observer UID, Name, Manufacturer), read back by app.dicom.kos."""

    FACADE = DeviceObserver("2.25.1234567890", "Imaging FHIR facade", "imaging-fhir-facade")

    @staticmethod
    def observer_items(ds: Dataset) -> list[tuple[str, str, str, Any]]:
        out = []
        for item in decoded(ds).ContentSequence:
            if item.RelationshipType != "HAS OBS CONTEXT":
                continue
            name = item.ConceptNameCodeSequence[0]
            value: Any = {
                "CODE": lambda i: i.ConceptCodeSequence[0].CodeValue,
                "PNAME": lambda i: str(i.PersonName),
                "TEXT": lambda i: i.TextValue,
                "UIDREF": lambda i: i.UID,
            }[item.ValueType](item)
            out.append((item.ValueType, name.CodeValue, name.CodingSchemeDesignator, value))
        return out

    def test_person_with_login(self) -> None:
        ds = build([CT_1], observer_name="Roe^Jane", observer_login="https://ehr.example.org/fhir/Practitioner/7")
        assert self.observer_items(ds) == [
            ("CODE", "121005", "DCM", "121006"),  # Observer Type: Person
            ("PNAME", "121008", "DCM", "Roe^Jane"),
            ("TEXT", "128774", "DCM", "https://ehr.example.org/fhir/Practitioner/7"),
        ]
        got = parsed(ds)
        assert got.observer_name == PersonName("Roe^Jane")
        assert got.observer_login == "https://ehr.example.org/fhir/Practitioner/7"
        assert got.device_observer_uid is None and got.device_observer_name is None

    def test_device(self) -> None:
        ds = build([CT_1], device_observer=self.FACADE)
        assert self.observer_items(ds) == [
            ("CODE", "121005", "DCM", "121007"),  # Observer Type: Device
            ("UIDREF", "121012", "DCM", "2.25.1234567890"),
            ("TEXT", "121013", "DCM", "Imaging FHIR facade"),
            ("TEXT", "121014", "DCM", "imaging-fhir-facade"),
        ]
        got = parsed(ds)
        assert (got.device_observer_uid, got.device_observer_name) == ("2.25.1234567890", "Imaging FHIR facade")
        assert got.observer_name is None and got.observer_login is None

    def test_person_and_device(self) -> None:
        got = parsed(build([CT_1], observer_name="Who^Doctor", device_observer=self.FACADE))
        assert got.observer_name == PersonName("Who^Doctor") and got.device_observer_uid == "2.25.1234567890"
        doc = KeyObjectSelectionDocument.from_dataset(decoded(build([CT_1], device_observer=self.FACADE)))
        assert len(doc.content.get_observer_contexts()) == 1

    @pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK dsrdump is not installed")
    def test_dcmtk_accepts_both_observers(self, tmp_path: Path) -> None:
        ds = build([CT_1, CINE], observer_name="Roe^Jane", observer_login="Practitioner/7", device_observer=self.FACADE)
        path = tmp_path / "kos.dcm"
        path.write_bytes(encode(ds))
        run = subprocess.run(["dsrdump", "--log-level", "warn", str(path)], capture_output=True, text=True, check=False)
        assert run.returncode == 0 and not [x for x in run.stderr.splitlines() if x.startswith(("E:", "F:"))]
        assert "Practitioner/7" in run.stdout and "2.25.1234567890" in run.stdout

    def test_a_login_needs_a_name(self) -> None:
        with pytest.raises(ValueError, match="login name needs"):
            build([CT_1], observer_login="Practitioner/7")

    def test_a_bad_device_uid(self) -> None:
        with pytest.raises(ValueError, match="not a DICOM UID"):
            build([CT_1], device_observer=DeviceObserver("urn:oid:1.2"))


class TestCrossStudy:
    def test_a_single_document_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"C\.17\.6\.2\.1"):
            build([CT_1, MR_1])

    def test_one_copy_per_study(self) -> None:
        ct_copy, mr_copy = copies([CT_1, MR_1, CINE])
        assert (ct_copy.StudyInstanceUID, mr_copy.StudyInstanceUID) == ("2.25.100", "2.25.200")
        assert (ct_copy.AccessionNumber, mr_copy.AccessionNumber) == ("ACC-1", "ACC-2")
        # Every copy lists every reference, in the same order, so each parses to the same selection.
        for ds, study, series, sop, other, other_study in (
            (ct_copy, CT_STUDY, "2.25.100.900", "2.25.100.900.1", "2.25.200.900.1", "2.25.200"),
            (mr_copy, MR_STUDY, "2.25.200.900", "2.25.200.900.1", "2.25.100.900.1", "2.25.100"),
        ):
            got = parsed(ds)
            assert got == expected(
                refs(CT_1, CINE, MR_1),
                title=FOR_REFERRING_PROVIDER,
                description="Prior and current",
                study=study,
                series_uid=series,
                sop_instance_uid=sop,
                identical=(other,),
                identical_studies=(other_study,),
            )
            assert got.canonical_uid == "2.25.100.900.1"  # the copies read as one manifest
            assert got.homes == (study.study_uid, other_study)  # where the manifest lives (its meta.lastUpdated)
            assert [str(s.StudyInstanceUID) for s in ds.CurrentRequestedProcedureEvidenceSequence] == [
                "2.25.100",
                "2.25.200",
            ]

    def test_identical_documents_point_at_the_other_copies(self) -> None:
        ct_copy, mr_copy = copies([CT_1, MR_1])

        def identical(ds: Dataset) -> list[tuple[str, str, str, str]]:
            return [
                (
                    str(study.StudyInstanceUID),
                    str(series.SeriesInstanceUID),
                    str(sop.ReferencedSOPClassUID),
                    str(sop.ReferencedSOPInstanceUID),
                )
                for study in decoded(ds).IdenticalDocumentsSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence
            ]

        assert identical(ct_copy) == [("2.25.200", "2.25.200.900", KOS_SOP_CLASS_UID, "2.25.200.900.1")]
        assert identical(mr_copy) == [("2.25.100", "2.25.100.900", KOS_SOP_CLASS_UID, "2.25.100.900.1")]
        assert IDENTICAL in decoded(ct_copy).to_json_dict()

    def test_a_single_study_selection_gives_one_document(self) -> None:
        (only,) = build_kos_copies(
            [KosCopy(CT_STUDY, "2.25.900", "2.25.900.1")],
            [CT_1],
            title=FOR_TEACHING,
            description="Classic presentation",
            series_number=999,
            instance_number=1,
            content_datetime=WHEN,
        )
        assert encode(only) == encode(build([CT_1]))

    def test_build_kos_with_identical_refs(self) -> None:
        ds = build([CT_1, MR_1], identical=[DocumentRef("2.25.200", "2.25.200.900", "2.25.200.900.1")])
        assert parsed(ds).references == refs(CT_1, MR_1)

    @pytest.mark.parametrize(
        "identical",
        [
            [DocumentRef("2.25.300", "2.25.300.9", "2.25.300.9.1")],  # not a referenced study
            [DocumentRef("2.25.200", "2.25.200.9", "2.25.200.9.1")] * 2,  # twice
            [DocumentRef("2.25.100", "2.25.100.9", "2.25.100.9.1")],  # its own study
        ],
    )
    def test_identical_refs_must_match_the_other_studies(self, identical: list[DocumentRef]) -> None:
        with pytest.raises(ValueError, match="Identical Documents"):
            build([CT_1, MR_1], identical=identical)

    def test_copies_must_cover_exactly_the_referenced_studies(self) -> None:
        with pytest.raises(ValueError, match="exactly one copy"):
            copies([CT_1])  # the MR copy would reference nothing of its study
        with pytest.raises(ValueError, match="exactly one copy"):
            build_kos_copies(
                [KosCopy(CT_STUDY, "2.25.9", "2.25.9.1")],
                [CT_1, MR_1],
                title=FOR_TEACHING,
                description=None,
                series_number=1,
                instance_number=1,
                content_datetime=WHEN,
            )

    def test_copies_are_of_one_patient(self) -> None:
        other = replace(MR_STUDY, patient_id="SOMEONE-ELSE")
        with pytest.raises(ValueError, match="one patient"):
            build_kos_copies(
                [KosCopy(CT_STUDY, "2.25.1.9", "2.25.1.9.1"), KosCopy(other, "2.25.2.9", "2.25.2.9.1")],
                [CT_1, MR_1],
                title=FOR_TEACHING,
                description=None,
                series_number=1,
                instance_number=1,
                content_datetime=WHEN,
            )


# -- time -------------------------------------------------------------------------------------------------------


class TestTime:
    def test_a_study_without_offset_gives_a_kos_without_one(self) -> None:
        # PS3.3 C.12.1.1.8: TimezoneOffsetFromUTC applies to every DA/TM of the instance, the StudyDate/StudyTime
        # copied from the study included, and Orthanc answers a study's offset from any one of its instances: a
        # KOS with "+0000" would give a zone-less study one (issue 9 item 7). No offset; the caller's wall clock.
        when = datetime(2024, 3, 1, 23, 45, 1, 250000, tzinfo=timezone(-timedelta(hours=5, minutes=30)))
        ds = decoded(build([CT_1], content_datetime=when))
        assert "TimezoneOffsetFromUTC" not in ds
        got = parse_kos(ds.to_json_dict())
        assert (got.content_date, got.content_time, got.timezone_offset) == ("20240301", "234501.25", None)
        # "The local timezone offset is undefined if this Attribute is absent": a naive time, and no FHIR instant.
        assert got.issued == when.replace(tzinfo=None) and issued_instant(got, None) is None

    @pytest.mark.parametrize(
        ("when", "local", "stamp"),
        [
            (datetime(2024, 7, 1, 8, 30, tzinfo=UTC), ("20240701", "103000"), "20240701103000+0200"),  # CEST
            (datetime(2024, 1, 31, 23, 30, tzinfo=UTC), ("20240201", "003000"), "20240201003000+0100"),  # CET
        ],
    )
    def test_without_study_offset_the_pacs_zone_gives_the_local_time(
        self, when: datetime, local: tuple[str, str], stamp: str
    ) -> None:
        # The facade reads zone-less DICOM times in the PACS zone (pacs_timezone), the study's StudyDate/Time
        # included: the KOS is written in that local time, so it reads back as the same instant.
        berlin = ZoneInfo("Europe/Berlin")
        ds = decoded(build([CT_1], content_datetime=when, zone=berlin))
        assert "TimezoneOffsetFromUTC" not in ds
        assert (ds.ContentDate, ds.ContentTime) == (ds.InstanceCreationDate, ds.InstanceCreationTime) == local
        # A DT may carry its own offset, which TimezoneOffsetFromUTC does not touch (C.12.1.1.8): the exact instant.
        assert [item.ContributionDateTime for item in ds.ContributingEquipmentSequence] == [stamp]
        assert (ds.StudyDate, ds.StudyTime) == ("20240105", "101500")  # copied verbatim, still the study's zone
        got = parse_kos(ds.to_json_dict())
        assert got.timezone_offset is None
        assert issued_instant(got, berlin) == when.astimezone(berlin).isoformat()

    def test_the_study_zone_wins(self) -> None:
        # TimezoneOffsetFromUTC applies to StudyDate/StudyTime too: a KOS written in Tokyo time would move the
        # study; the instant is converted to the study's zone instead, whatever the PACS zone.
        study = replace(CT_STUDY, timezone_offset="+0100")
        when = datetime(2024, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=9)))
        for zone in (None, ZoneInfo("America/New_York")):
            got = parsed(build([CT_1], study=study, content_datetime=when, zone=zone))
            assert (got.content_date, got.content_time, got.timezone_offset) == ("20240301", "173000", "+0100")
            assert got.issued == when

    def test_an_unreadable_study_offset_is_not_copied(self) -> None:
        # The facade ignores such a value (it reads the study in the PACS zone), so the KOS carries no offset.
        study = replace(CT_STUDY, timezone_offset="CET")
        got = parsed(build([CT_1], study=study))
        assert (got.content_time, got.timezone_offset) == ("093000", None)

    def test_naive_datetime_is_refused(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            build([CT_1], content_datetime=datetime(2024, 3, 1, 9, 30))

    def test_offset_with_seconds_is_refused(self) -> None:
        with pytest.raises(ValueError, match="whole minutes"):
            build([CT_1], content_datetime=datetime(2024, 3, 1, tzinfo=timezone(timedelta(seconds=30))))

    def test_no_wall_clock_in_the_document(self) -> None:
        for study, offset in ((CT_STUDY, None), (replace(CT_STUDY, timezone_offset="+0100"), "+0100")):
            ds = decoded(build([CT_1], study=study))
            assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20240301", "093000")
            assert ds.get("TimezoneOffsetFromUTC") == offset
            stamps = [item.ContributionDateTime for item in ds.get("ContributingEquipmentSequence", [])]
            assert stamps == ["20240301093000+0100"]


# -- determinism ---------------------------------------------------------------------------------------------------


class TestDeterminism:
    def test_same_inputs_same_bytes(self) -> None:
        def one() -> bytes:
            return encode(build([CT_1, CINE, REPORT], observer_name="Wélby^Marcus"))

        assert one() == one()
        assert [encode(ds) for ds in copies([CT_1, MR_1])] == [encode(ds) for ds in copies([CT_1, MR_1])]

    def test_encode_does_not_change_the_dataset(self) -> None:
        ds = build([CT_1])
        assert encode(ds) == encode(ds)

    def test_inputs_matter(self) -> None:
        base = encode(build([CT_1]))
        assert encode(build([CT_1], description="other")) != base
        assert encode(build([CT_1], content_datetime=WHEN + timedelta(seconds=1))) != base
        assert encode(build([CT_1], title=QUALITY_ISSUE)) != base


# -- validation --------------------------------------------------------------------------------------------------


class TestValidation:
    @pytest.mark.parametrize("uid", ["1.2.a", "1..2", "01.2", ".1.2", "1.2.", "1.2/../3", "", "1" * 65, "1.2 "])
    def test_malformed_uids(self, uid: str) -> None:
        with pytest.raises(ValueError, match="not a DICOM UID"):
            build([replace(CT_1, sop_instance_uid=uid)])
        with pytest.raises(ValueError, match="not a DICOM UID"):
            build([CT_1], series_uid=uid)

    def test_nothing_selected(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            build([])

    def test_an_instance_twice(self) -> None:
        with pytest.raises(ValueError, match="selected twice"):
            build([CT_1, replace(CT_1, frames=(1,))])

    def test_frames_of_a_non_image(self) -> None:
        with pytest.raises(ValueError, match="not an image"):
            build([replace(REPORT, frames=(1,), image=False)])

    @pytest.mark.parametrize("frames", [(0,), (-1,), (1, 1)])
    def test_bad_frame_numbers(self, frames: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match="frame numbers"):
            build([replace(CINE, frames=frames)])

    @pytest.mark.parametrize("title", REJECTIONS, ids=[t[2] for t in REJECTIONS])
    def test_rejection_titles_need_consent(self, title: tuple[str, str, str]) -> None:
        with pytest.raises(ValueError, match="rejection"):
            build([CT_1], title=title)
        assert parsed(build([CT_1], title=title, allow_rejection=True)).is_rejection

    @pytest.mark.parametrize("title", [("", "DCM", "For Teaching"), ("113004", "", "x"), ("113004", "DCM", " ")])
    def test_incomplete_titles(self, title: tuple[str, str, str]) -> None:
        with pytest.raises(ValueError, match="title"):
            build([CT_1], title=title)

    def test_own_study_must_be_referenced(self) -> None:
        with pytest.raises(ValueError, match="own study"):
            build([MR_1])

    def test_no_self_reference(self) -> None:
        with pytest.raises(ValueError, match="itself"):
            build([CT_1], sop_instance_uid=CT_1.sop_instance_uid)


# -- QIDO rows and SOP classes -------------------------------------------------------------------------------------


class TestFromQido:
    def study_row(self) -> dict[str, Any]:
        row: dict[str, Any] = json.loads((DATA / "qido_study_ct.json").read_text(encoding="utf-8"))[0]
        return row

    def test_study_row(self) -> None:
        study = PatientStudy.from_qido(self.study_row())
        assert study == PatientStudy(
            patient_id="MRN0100",
            issuer="HOSP-A",
            patient_name="Müller^Jürgen^^Dr.",
            birth_date="19700101",
            sex="M",
            study_uid="1.2.826.0.1.3680043.8.498.1",
            study_date="20200115",
            study_time="101500",
            accession="ACC-0001",
            study_id="S1",
            referring_physician="Yamada^Tarou=山田^太郎=やまだ^たろう",
            timezone_offset="+0100",
        )

    def test_slimmed_study_row(self) -> None:
        assert PatientStudy.from_qido(dicom_json.slim(self.study_row())) == PatientStudy.from_qido(self.study_row())

    def test_empty_type2_values(self) -> None:
        row = {
            "0020000D": {"vr": "UI", "Value": ["2.25.1"]},
            "00100020": {"vr": "LO"},
            "00100010": {"vr": "PN"},
            "00100040": {"vr": "CS"},
        }
        study = PatientStudy.from_qido(row)
        assert (study.patient_id, study.patient_name, study.sex, study.issuer) == ("", None, None, None)

    def test_study_row_without_uid(self) -> None:
        with pytest.raises(ValueError, match="Study Instance UID"):
            PatientStudy.from_qido({"00100020": {"vr": "LO", "Value": ["X"]}})

    def test_ideographic_only_name(self) -> None:
        row = {
            "0020000D": {"vr": "UI", "Value": ["2.25.1"]},
            "00100010": {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]},
        }
        assert PatientStudy.from_qido(row).patient_name == "=山田^太郎"

    def test_instance_rows(self) -> None:
        rows: list[dict[str, Any]] = json.loads((DATA / "qido_instances_ct.json").read_text(encoding="utf-8"))
        row = rows[0]
        evidence = Evidence.from_qido(row, frames=[1])
        assert (evidence.study_uid, evidence.series_uid, evidence.sop_instance_uid, evidence.sop_class_uid) == (
            "1.2.826.0.1.3680043.8.498.1",
            "1.2.826.0.1.3680043.8.498.1.2",
            "1.2.826.0.1.3680043.8.498.1.2.3",
            CT_CLASS,
        )
        assert evidence.frames == (1,) and evidence.is_image

    def test_rows_mark_an_image(self) -> None:
        row: dict[str, Any] = {
            "0020000D": {"vr": "UI", "Value": ["2.25.1"]},
            "0020000E": {"vr": "UI", "Value": ["2.25.1.1"]},
            "00080018": {"vr": "UI", "Value": ["2.25.1.1.1"]},
            "00080016": {"vr": "UI", "Value": ["1.3.6.1.4.1.99999.1"]},  # a private class, unknown to the table
        }
        assert Evidence.from_qido(row).image is None and not Evidence.from_qido(row).is_image
        row["00280010"] = {"vr": "US", "Value": [512]}
        assert Evidence.from_qido(row).image is True

    def test_incomplete_instance_row(self) -> None:
        with pytest.raises(ValueError, match="SOP Class UID"):
            Evidence.from_qido({"0020000D": {"vr": "UI", "Value": ["2.25.1"]}})


class TestImageClasses:
    def test_agrees_with_highdicoms_iod_table(self) -> None:
        # An image IOD is one with the Image Pixel Module; highdicom ships the IOD → module table of the standard.
        iods, modules = get_sop_class_iod_map(), get_iod_module_map()
        disagree = {
            uid
            for uid, iod in iods.items()
            if is_image_sop_class(uid) != any(module["key"] == "image-pixel" for module in modules[iod])
        }
        assert not disagree

    @pytest.mark.parametrize(
        ("uid", "image"),
        [
            (CT_CLASS, True),
            (MULTIFRAME_SC_CLASS, True),
            ("1.2.840.10008.5.1.4.1.1.1.1", True),  # DX for presentation
            ("1.2.840.10008.5.1.4.1.1.66.4", True),  # Segmentation
            (KOS_SOP_CLASS_UID, False),
            (ENHANCED_SR_CLASS, False),
            ("1.2.840.10008.5.1.4.1.1.104.1", False),  # Encapsulated PDF
            ("1.2.840.10008.5.1.4.1.1.9.1.1", False),  # 12-lead ECG
            ("1.2.840.10008.5.1.4.1.1.11.1", False),  # Grayscale Softcopy Presentation State
            ("1.3.6.1.4.1.99999.1", False),  # unknown
        ],
    )
    def test_examples(self, uid: str, image: bool) -> None:
        assert is_image_sop_class(uid) is image
