"""Key Object Selection (KOS) documents, and small images for them to select, built with highdicom and pydicom.

    images = make_study(1, "ct", patient_id="P1", patient_name="Doe^Jane")
    cine = make_multiframe(images[0], frames=5)
    kos = make_kos([images[0], cine], title=FOR_TEACHING, description="Nice case", frames={cine.SOPInstanceUID: [2, 4]})
    metadata = kos_json(kos)       # the DICOM JSON a WADO-RS server would answer, to feed app.dicom.kos.parse_kos
    truth = expected_kos(kos, [images[0], cine], title=FOR_TEACHING, description="Nice case",
                         frames={cine.SOPInstanceUID: [2, 4]})   # the KeyObjectSelection parse_kos should give

Everything is deterministic: UIDs come from ``make_uid(seed, ...)`` (or are passed in), and the timestamps highdicom
would take from the clock (InstanceCreationDate/Time, ContributionDateTime) are pinned to the content date/time.

Where highdicom 0.28 cannot express what a test needs, the gap is filled with pydicom after highdicom has built
the document, and the comment at that spot says so:

- frame selection: ``KeyObjectSelection`` has no frame argument, so ReferencedFrameNumber is added afterwards;
- references to more than one study: ``KeyObjectSelectionDocument`` keeps only the study of ``evidence[0]`` in
  the Current Requested Procedure Evidence Sequence (one other study is silently dropped, two or more raise), so
  that sequence is rebuilt here;
- IssuerOfPatientID and TimezoneOffsetFromUTC are not copied or offered by highdicom, so they are set afterwards.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import CodedConcept, ObserverContext, PersonObserverIdentifyingAttributes
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian

from app.dicom import kos as app_kos
from tests.support.dataset import (
    SOP_CLASS_BY_MODALITY,
    InstanceTruth,
    SeriesTruth,
    StudyTruth,
    make_uid,
    render_study,
)
from tests.support.orthanc import encode_dataset

__all__ = [
    "DATA_RETENTION_POLICY_EXPIRED",
    "FOR_CONFERENCE",
    "FOR_REFERRING_PROVIDER",
    "FOR_TEACHING",
    "INCORRECT_MODALITY_WORKLIST_ENTRY",
    "KOS_SOP_CLASS_UID",
    "MULTIFRAME_SC_SOP_CLASS_UID",
    "PURPOSES",
    "QUALITY_ISSUE",
    "REJECTED_FOR_PATIENT_SAFETY",
    "REJECTED_FOR_QUALITY",
    "REJECTIONS",
    "Title",
    "expected_kos",
    "kos_json",
    "make_kos",
    "make_multiframe",
    "make_study",
]

Title = tuple[str, str, str]  # (CodeValue, CodingSchemeDesignator, CodeMeaning)

# CID 7010 "Key Object Selection Document Title".
FOR_TEACHING: Title = ("113004", "DCM", "For Teaching")
FOR_CONFERENCE: Title = ("113005", "DCM", "For Conference")
FOR_REFERRING_PROVIDER: Title = ("113002", "DCM", "For Referring Provider")
QUALITY_ISSUE: Title = ("113010", "DCM", "Quality Issue")
PURPOSES: tuple[Title, ...] = (FOR_TEACHING, FOR_CONFERENCE, FOR_REFERRING_PROVIDER, QUALITY_ISSUE)
# The CID 7010 titles of IHE IOCM rejection notes.
REJECTED_FOR_QUALITY: Title = ("113001", "DCM", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY: Title = ("113037", "DCM", "Rejected for Patient Safety Reasons")
INCORRECT_MODALITY_WORKLIST_ENTRY: Title = ("113038", "DCM", "Incorrect Modality Worklist Entry")
DATA_RETENTION_POLICY_EXPIRED: Title = ("113039", "DCM", "Data Retention Policy Expired")
REJECTIONS: tuple[Title, ...] = (
    REJECTED_FOR_QUALITY,
    REJECTED_FOR_PATIENT_SAFETY,
    INCORRECT_MODALITY_WORKLIST_ENTRY,
    DATA_RETENTION_POLICY_EXPIRED,
)

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"
MULTIFRAME_SC_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte Secondary Capture
_PAGE_NUMBER_VECTOR = 0x00182001


# -- images to select ----------------------------------------------------------------------------------------


def make_study(
    seed: int,
    key: str,
    *,
    patient_id: str,
    patient_name: str,
    issuer: str | None = None,
    birth_date: str | None = "19700101",
    sex: str | None = "F",
    modality: str = "CT",
    series_sizes: Sequence[int] = (2,),
    study_date: str = "20240105",
    study_time: str = "101500",
    tz_offset: str | None = None,
    accession: str | None = None,
    charset: str | None = "ISO_IR 192",
) -> list[Dataset]:
    """The instances of one small study (tests.support.dataset's 8x8 images), one series per ``series_sizes``
    entry. UIDs are ``make_uid(seed, "kos-support", key, ...)``.

    ``study_time`` is required because highdicom's KOS reads StudyTime from its first evidence dataset.
    """
    sop_class = SOP_CLASS_BY_MODALITY[modality]
    series = [
        SeriesTruth(
            uid=make_uid(seed, "kos-support", key, "series", number),
            number=number,
            modality=modality,
            description=f"{modality} {number}",
            body_part=None,
            laterality=None,
            series_date=None,
            series_time=None,
            instances=[
                InstanceTruth(make_uid(seed, "kos-support", key, "instance", number, i), sop_class, i)
                for i in range(1, size + 1)
            ],
        )
        for number, size in enumerate(series_sizes, start=1)
    ]
    study = StudyTruth(
        study_uid=make_uid(seed, "kos-support", key, "study"),
        patient_id=patient_id,
        issuer=issuer,
        patient_name=patient_name,
        birth_date=birth_date,
        sex=sex,
        study_date=study_date,
        study_time=study_time,
        tz_offset=tz_offset,
        accession=accession or f"ACC-{key}",
        study_id=key[:16],
        description=f"study {key}",
        referrer=None,
        series=series,
        charset=charset,
    )
    return list(render_study(study))


def make_multiframe(
    like: Dataset,
    *,
    frames: int = 4,
    seed: int = 0,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    series_number: int = 50,
    instance_number: int = 1,
    rows: int = 8,
    columns: int = 8,
) -> Dataset:
    """A small Multi-frame Grayscale Byte Secondary Capture image (PS3.3 A.8.3) in the study of ``like``.

    Patient and study attributes are copied from ``like``. Frames are 8-bit MONOCHROME2, each filled with its own
    value, so a frame fetched by WADO-RS can be told apart. Built with pydicom: highdicom's ``SCImage`` is
    single-frame only. The Multi-frame Module's Frame Increment Pointer (PS3.3 C.7.6.6) points at Page Number
    Vector (0018,2001), one of the values the SC Multi-frame Image Module allows.
    """
    if frames < 1:
        raise ValueError("frames must be >= 1")
    study_uid = str(like.StudyInstanceUID)
    sop_uid = sop_uid or make_uid(seed, "kos-support", "multiframe", study_uid, series_number, instance_number)
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "TimezoneOffsetFromUTC",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        if keyword in like:
            ds.add(copy.deepcopy(like[keyword]))
    # General Series, SC Equipment, General Image
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_uid or make_uid(seed, "kos-support", "multiframe-series", study_uid, series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "MULTIFRAME SC"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "Facade Test Generator"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = like.get("StudyDate", "") or "20240101"
    ds.ContentTime = like.get("StudyTime", "") or "120000"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    # Image Pixel, Multi-frame, SC Multi-frame Image / Vector modules
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PresentationLUTShape = "IDENTITY"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = _PAGE_NUMBER_VECTOR
    ds.PageNumberVector = list(range(1, frames + 1))
    ds.PixelData = b"".join(bytes([(frame * 37) % 256]) * (rows * columns) for frame in range(1, frames + 1))
    ds.SOPClassUID = MULTIFRAME_SC_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.file_meta = _file_meta(MULTIFRAME_SC_SOP_CLASS_UID, sop_uid)
    return ds


# -- KOS ---------------------------------------------------------------------------------------------------------


def make_kos(
    referenced: Sequence[Dataset],
    *,
    title: Title,
    description: str | None = None,
    frames: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    series_number: int = 999,
    instance_number: int = 1,
    content_date: str = "20240301",
    content_time: str = "093000",
    timezone_offset: str | None = None,
    observer_name: str | None = None,
) -> Dataset:
    """A Key Object Selection Document (PS3.3 A.35.4, TID 2010) selecting ``referenced``, in that order.

    - ``title``: a CID 7010 title, e.g. :data:`FOR_TEACHING` or a rejection title from :data:`REJECTIONS`.
    - ``frames``: SOP Instance UID → frame numbers (1-based) for references to part of a multi-frame image.
    - ``study_uid``: the study the KOS itself belongs to; it must be the study of one of ``referenced`` (the KOS
      inherits that study's patient and study attributes), default the study of ``referenced[0]``. References to
      other studies of the same patient go into the same evidence sequence.
    - ``series_uid`` / ``sop_uid`` default to ``make_uid(seed, ...)`` of the title, referenced UIDs, description
      and frames, so two different selections never collide; pass one ``series_uid`` to several KOS to put them
      in one series.
    - ``observer_name``: a PN, recorded as TID 1002 person observer (PNAME 121008 "Person Observer Name").
    """
    if not referenced:
        raise ValueError("a KOS references at least one instance")
    frames = dict(frames or {})
    by_uid = {str(ds.SOPInstanceUID): ds for ds in referenced}
    unknown = set(frames) - set(by_uid)
    if unknown:
        raise ValueError(f"frames given for instances that are not referenced: {sorted(unknown)}")
    home_study = study_uid or str(referenced[0].StudyInstanceUID)
    home = [ds for ds in referenced if ds.StudyInstanceUID == home_study]
    if not home:
        raise ValueError(f"study_uid {home_study} is not the study of any referenced instance")

    key = (title[0], *by_uid, description, sorted((uid, tuple(n)) for uid, n in frames.items()))
    sop_uid = sop_uid or make_uid(seed, "kos", "instance", *key)
    series_uid = series_uid or make_uid(seed, "kos", "series", *key)

    observer = None
    if observer_name is not None:
        observer = ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=observer_name),
        )
    content = KeyObjectSelection(
        document_title=CodedConcept(value=title[0], scheme_designator=title[1], meaning=title[2]),
        referenced_objects=list(referenced),
        observer_person_context=observer,
        description=description,
    )
    # highdicom takes patient/study attributes from evidence[0] and keeps only that study's instances in the
    # evidence (see the module docstring). Its check that every content reference has evidence is still worth
    # having, so instances of other studies are given to it as stand-ins filed under the home study; the real
    # evidence sequence is then written below with pydicom.
    cross_study = len(home) != len(referenced)
    evidence = [home[0]] + [
        ds if ds.StudyInstanceUID == home_study else _stand_in(ds, home_study) for ds in referenced if ds is not home[0]
    ]
    doc = KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="Facade Test Generator",
        content_date=content_date,
        content_time=content_time,
    )
    # A plain pydicom Dataset: highdicom's cached lookups would go stale after the edits below.
    ds = Dataset(doc)
    ds.file_meta = _file_meta(KOS_SOP_CLASS_UID, sop_uid)

    if cross_study:
        # PS3.3 C.17.6.2 Key Object Document Module: the Current Requested Procedure Evidence Sequence lists every
        # instance of the content tree, whatever its study (the KOS IOD has no Pertinent Other Evidence Sequence).
        ds.CurrentRequestedProcedureEvidenceSequence = _evidence(home_study, referenced)
    if frames:
        # highdicom's KeyObjectSelection cannot carry frame numbers: add ReferencedFrameNumber (0008,1160) to the
        # IMAGE items' ReferencedSOPSequence (PS3.3 10.3 Image SOP Instance Reference Macro), pydicom style.
        for item in ds.ContentSequence:
            for ref in item.get("ReferencedSOPSequence", []):
                selected = frames.get(str(ref.ReferencedSOPInstanceUID))
                if selected:
                    if item.ValueType != "IMAGE":
                        raise ValueError(f"{ref.ReferencedSOPInstanceUID} is not an image; it has no frames")
                    ref.ReferencedFrameNumber = list(selected)
    if "IssuerOfPatientID" in home[0]:
        ds.IssuerOfPatientID = home[0].IssuerOfPatientID
    if timezone_offset is not None:
        ds.TimezoneOffsetFromUTC = timezone_offset
    _pin_clock(ds, content_date, content_time)
    return ds


def kos_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON of ``ds`` after a Part 10 round trip, i.e. what a server that stored it would send.

    The round trip matters: highdicom leaves pydicom DA/TM/DT objects in the dataset, which ``to_json_dict``
    passes through unconverted; read back from bytes, every value is in its PS3.18 Annex F form.
    """
    result: dict[str, Any] = dcmread(io.BytesIO(encode_dataset(ds))).to_json_dict()
    return result


def expected_kos(
    kos: Dataset,
    referenced: Sequence[Dataset],
    *,
    title: Title,
    description: str | None = None,
    frames: Mapping[str, Sequence[int]] | None = None,
    observer_name: str | None = None,
) -> app_kos.KeyObjectSelection:
    """What :func:`app.dicom.kos.parse_kos` should make of ``kos`` (built by :func:`make_kos` from the same arguments).

    Built from the inputs and the pydicom dataset, not from its JSON, so it is an independent oracle. References
    come in evidence order: the KOS's own study first, then the others; within a study, series and instances in
    order of first appearance in ``referenced``.
    """
    frames = frames or {}
    home = str(kos.StudyInstanceUID)
    studies: dict[str, dict[str, list[Dataset]]] = {home: {}}
    for ds in referenced:
        studies.setdefault(str(ds.StudyInstanceUID), {}).setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    references = tuple(
        app_kos.ReferencedInstance(
            study_uid=study,
            series_uid=series,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            frames=tuple(frames.get(str(ds.SOPInstanceUID), ())),
        )
        for study, series_map in studies.items()
        for series, instances in series_map.items()
        for ds in instances
    )
    name = str(kos.PatientName)
    return app_kos.KeyObjectSelection(
        sop_instance_uid=str(kos.SOPInstanceUID),
        study_uid=home,
        series_uid=str(kos.SeriesInstanceUID),
        patient_id=str(kos.PatientID),
        issuer_of_patient_id=kos.get("IssuerOfPatientID"),
        patient_name=_person_name(name) if name else None,
        title=app_kos.Code(*title),
        description=description.strip() if description and description.strip() else None,
        observer_name=_person_name(observer_name) if observer_name else None,
        device_observer_name=None,
        content_date=str(kos.ContentDate),
        content_time=str(kos.ContentTime),
        timezone_offset=kos.get("TimezoneOffsetFromUTC"),
        references=references,
        unresolved=(),
    )


# -- internals ---------------------------------------------------------------------------------------------------


def _person_name(value: str) -> app_kos.PersonName:
    groups = [*value.split("="), "", ""][:3]
    alphabetic, ideographic, phonetic = (g or None for g in groups)
    return app_kos.PersonName(alphabetic, ideographic, phonetic)


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _stand_in(ds: Dataset, study_uid: str) -> Dataset:
    """The attributes highdicom's evidence check reads, with the study replaced (never the caller's dataset)."""
    stand_in = Dataset()
    stand_in.SOPClassUID = ds.SOPClassUID
    stand_in.SOPInstanceUID = ds.SOPInstanceUID
    stand_in.SeriesInstanceUID = ds.SeriesInstanceUID
    stand_in.StudyInstanceUID = study_uid
    return stand_in


def _evidence(home_study: str, referenced: Sequence[Dataset]) -> DicomSequence:
    """Study → series → instance items, the home study first, then the order of first appearance."""
    studies: dict[str, dict[str, list[Dataset]]] = {home_study: {}}
    for ds in referenced:
        series = studies.setdefault(str(ds.StudyInstanceUID), {}).setdefault(str(ds.SeriesInstanceUID), [])
        if all(other.SOPInstanceUID != ds.SOPInstanceUID for other in series):
            series.append(ds)
    study_items = []
    for study, series_map in studies.items():
        series_items = []
        for series_uid, instances in series_map.items():
            sop_items = []
            for inst in instances:
                sop = Dataset()
                sop.ReferencedSOPClassUID = inst.SOPClassUID
                sop.ReferencedSOPInstanceUID = inst.SOPInstanceUID
                sop_items.append(sop)
            series_item = Dataset()
            series_item.SeriesInstanceUID = series_uid
            series_item.ReferencedSOPSequence = DicomSequence(sop_items)
            series_items.append(series_item)
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = DicomSequence(series_items)
        study_items.append(study_item)
    return DicomSequence(study_items)


def _pin_clock(ds: Dataset, date: str, time: str) -> None:
    """Replace the wall-clock timestamps highdicom adds (instance creation, contributing equipment)."""
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
