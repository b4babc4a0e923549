"""Key Object Selection (KOS) documents built from plain inputs, for the write path of R5 ImagingSelection.

    study = PatientStudy.from_qido(study_row)                    # the QIDO study row of the KOS's own study
    evidence = [Evidence.from_qido(row) for row in instance_rows] # QIDO instance rows of what is selected
    ds = build_kos(study, evidence, title=("113004", "DCM", "For Teaching"), description="Classic case",
                   sop_instance_uid=uid, series_uid=series, series_number=999, instance_number=1,
                   content_datetime=datetime.now(UTC))
    body = encode(ds)                                             # Part 10 bytes for STOW-RS

The document is a Key Object Selection Document (SOP Class 1.2.840.10008.5.1.4.1.1.88.59, PS3.3 A.35.4) whose
content tree follows PS3.16 TID 2010: a CONTAINER titled with a CID 7010 code, an optional observer context
(TID 1002: a person, TID 1003, and/or a device, TID 1004), an optional TEXT (113012, DCM, "Key Object
Description") and one IMAGE or COMPOSITE item per selected instance, with ReferencedFrameNumber when only some
frames are selected. :func:`app.dicom.kos.parse_kos` reads it back.

The facade has no image files, only QIDO rows, so the referenced instances are described by :class:`Evidence`
(UIDs, SOP class, frames) and the patient and study by :class:`PatientStudy`. highdicom (``highdicom.ko``) builds
the document from minimal stand-in datasets; pydicom fills what highdicom 0.28 cannot express:

- evidence across studies: ``KeyObjectSelectionDocument`` keeps only the study of ``evidence[0]`` in the Current
  Requested Procedure Evidence Sequence (one other study is silently dropped, two or more raise), so every
  stand-in is filed under the KOS's own study and the real sequence is written afterwards;
- frame numbers: ``KeyObjectSelection`` has no frame argument, so ReferencedFrameNumber is added to the IMAGE items;
- IssuerOfPatientID, TimezoneOffsetFromUTC and the Identical Documents Sequence are not offered by highdicom, and
  its root container says ContinuityOfContent CONTINUOUS where a list of independent references is SEPARATE;
- patient and study attributes are copied verbatim from the QIDO row with pydicom: highdicom would re-validate
  them (it warns on a one-component name such as ``Bono``, and rejects a sex other than M/F/O), but the KOS must
  carry exactly what its study already holds;
- highdicom stamps InstanceCreationDate/Time and the ContributionDateTime of its Contributing Equipment item with
  the wall clock; they are set to the content date/time, so the same inputs always give the same document.

Time zone. TimezoneOffsetFromUTC "contains the offset from UTC to the timezone for all DA and TM Attributes
present in this SOP Instance" (PS3.3 C.12.1.1.8), the StudyDate/StudyTime copied from the study included, and
Orthanc answers a study's TimezoneOffsetFromUTC from one of its instances, which may be the KOS. So the KOS carries
the study's own offset (its dates and times converted to it), or none where the study has none: an offset of the
facade's clock would re-zone the study (a ``started`` of ``+02:00`` from pacs_timezone turned into ``+00:00``, the
same wall-clock time two hours off). Without an offset "the local timezone offset is undefined" (C.12.1.1.8), so
ContentDate/Time are then written as local time of the PACS's zone (pacs_timezone), the zone the facade already
reads the study's zone-less StudyDate/StudyTime in: both stay in one local time, and ``issued`` reads back as the
instant. Without pacs_timezone no zone is known: the facade's clock (UTC) is written as it is, and the manifest has
no ``issued`` (an instant needs a zone), though its date still answers date searches. ContributionDateTime is a
DT, which may carry its own offset, untouched by TimezoneOffsetFromUTC: it always states the exact instant.

A selection spanning several studies is stored as one copy per study (PS3.3 C.17.6.2.1: "this document shall be
duplicated into each of those other studies, and the duplicates shall be referenced in the Identical Documents
Sequence"): :func:`build_kos_copies` builds the set; :func:`build_kos` refuses a cross-study selection unless it is
told where the other copies live.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from .kos import KOS_SOP_CLASS_UID
from .kos_inputs import (
    DeviceObserver,
    DocumentRef,
    Evidence,
    KosCopy,
    PatientStudy,
    Title,
    check_evidence,
    check_identical,
    check_title,
    check_uid,
    is_image_sop_class,
)

if TYPE_CHECKING:
    from highdicom.sr import ObserverContext

# highdicom and pydicom's SR code dictionary are imported on the first build, not with this module, so a facade
# that never writes a manifest does not pay for them. Measured (Python 3.11, pydicom 3.0, highdicom 0.28): importing
# this module costs ~38 MiB RSS (pydicom pulls in numpy); the first build ~130 MiB more and 0.3 s, ~110 MiB of it
# highdicom's IOD attribute table (a 22 MB JSON it reads to ask whether ContentDate is in the IOD, then keeps in an
# lru_cache for the life of the process). Later builds take ~7 ms.

__all__ = [
    "DeviceObserver",
    "DocumentRef",
    "Evidence",
    "KosCopy",
    "PatientStudy",
    "build_kos",
    "build_kos_copies",
    "encode",
    "is_image_sop_class",
]


_OFFSET = re.compile(r"([+-])([01][0-9]|2[0-3])([0-5][0-9])")


def build_kos(
    study: PatientStudy,
    evidence: Sequence[Evidence],
    *,
    title: Title,
    description: str | None,
    sop_instance_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime,
    observer_name: str | None = None,
    observer_login: str | None = None,
    device_observer: DeviceObserver | None = None,
    manufacturer: str = "imaging-fhir-facade",
    identical: Sequence[DocumentRef] = (),
    allow_rejection: bool = False,
    zone: tzinfo | None = None,
) -> Dataset:
    """A KOS in ``study`` selecting ``evidence``, in that order. Deterministic: the same inputs give the same bytes.

    **Parameters:**
    * study - the KOS's own study; at least one selected instance must be in it.
    * evidence - the selected instances (each SOP Instance UID once). The Current Requested Procedure Evidence
      Sequence lists them by study, then series, in order of first appearance.
    * title - a CID 7010 code. The IHE IOCM rejection titles (113001, 113037, 113038, 113039) make an archive hide
      or delete the referenced instances, so they are refused unless ``allow_rejection``.
    * description - the Key Object Description (113012) TEXT item, stripped; none when blank.
    * content_datetime - when the selection was made; must be aware. Written as ContentDate/ContentTime (and
      InstanceCreationDate/Time). The study's TimezoneOffsetFromUTC applies to every date and time of the
      instance (PS3.3 C.12.1.1.8), StudyDate/StudyTime included, so when the study has one the instant is
      converted to it and the KOS carries it; otherwise the KOS carries none, and the time is local time in
      ``zone`` (module docstring).
    * zone - the PACS's zone (pacs_timezone), for a study without TimezoneOffsetFromUTC; ``None``: the wall
      clock of ``content_datetime`` as given.
    * observer_name - a PN; recorded as TID 1002 person observer (TID 1003 121008 "Person Observer Name").
    * observer_login - the person observer's TID 1003 "Person Observer's Login Name" (128774, TEXT); only with
      ``observer_name``, which TID 1003 requires.
    * device_observer - a TID 1002 device observer (TID 1004), besides or instead of the person.
    * identical - the copies of this document in the other studies of ``evidence``: required, one per other study,
      when the selection spans several studies (:func:`build_kos_copies` fills it).

    Raises ValueError for malformed UIDs, duplicate instances, frames on a non-image, a naive datetime, a missing
    or misplaced copy, or a rejection title.
    """
    check_title(title, allow_rejection)
    check_evidence(study.study_uid, evidence)
    for uid in (sop_instance_uid, series_uid):
        check_uid(uid)
    if sop_instance_uid in {e.sop_instance_uid for e in evidence}:
        raise ValueError("the KOS cannot select itself")
    check_identical(study.study_uid, evidence, identical)
    when, offset = _local(content_datetime, study.timezone_offset, zone)
    date, time = when.strftime("%Y%m%d"), _tm(when)
    description = description.strip() if description and description.strip() else None
    observer_name = observer_name or None
    if observer_login and observer_name is None:
        raise ValueError("a person observer's login name needs the person's name (TID 1003: Type M)")
    if device_observer is not None:
        check_uid(device_observer.uid)

    from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
    from highdicom.sr import CodedConcept

    stand_ins = [_stand_in(e, study.study_uid) for e in evidence]
    content = KeyObjectSelection(
        document_title=CodedConcept(value=title[0], scheme_designator=title[1], meaning=title[2]),
        referenced_objects=stand_ins,
        observer_person_context=_observer(observer_name, observer_login) if observer_name is not None else None,
        observer_device_context=_device(device_observer) if device_observer is not None else None,
        description=description,
    )
    doc = KeyObjectSelectionDocument(
        evidence=stand_ins,
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_date=date,
        content_time=time,
        # UTF-8 always: names from the PACS and free-text descriptions are routinely non-ASCII, and ASCII is a
        # subset (Orthanc answers every instance as ISO_IR 192 anyway).
        specific_character_set="ISO_IR 192",
    )
    # A plain pydicom Dataset: highdicom's cached content and reference lookup would go stale after the edits below.
    ds = Dataset(doc)
    ds.file_meta = doc.file_meta
    # Continuity of Content says whether the children read as one running text (CONTINUOUS) or as independent
    # items (SEPARATE); a list of references is the latter. highdicom's ContainerContentItem defaults to CONTINUOUS.
    ds.ContinuityOfContent = "SEPARATE"
    _set_patient_study(ds, study)
    # PS3.3 C.17.6.2: the evidence lists every instance of the content tree, whatever its study (the KOS IOD has
    # no Pertinent Other Evidence Sequence).
    ds.CurrentRequestedProcedureEvidenceSequence = _hierarchy(
        (e.study_uid, e.series_uid, e.sop_class_uid, e.sop_instance_uid) for e in evidence
    )
    _add_frames(ds, {e.sop_instance_uid: e.frames for e in evidence if e.frames})
    if identical:
        ds.IdenticalDocumentsSequence = _hierarchy(
            (d.study_uid, d.series_uid, KOS_SOP_CLASS_UID, d.sop_instance_uid) for d in identical
        )
    if offset is not None:
        ds.TimezoneOffsetFromUTC = offset
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time + _offset(when)
    return ds


def build_kos_copies(
    copies: Sequence[KosCopy],
    evidence: Sequence[Evidence],
    *,
    title: Title,
    description: str | None,
    series_number: int,
    instance_number: int,
    content_datetime: datetime,
    observer_name: str | None = None,
    observer_login: str | None = None,
    device_observer: DeviceObserver | None = None,
    manufacturer: str = "imaging-fhir-facade",
    allow_rejection: bool = False,
    zone: tzinfo | None = None,
) -> list[Dataset]:
    """The same selection as one KOS per study it references, each listing the others as Identical Documents.

    ``copies`` names one copy per study of ``evidence`` (no more, no fewer), all of the same patient; the result
    follows its order. Store them together (one STOW-RS request). A single-study selection gives one document,
    the same as :func:`build_kos`.
    """
    studies = [c.study.study_uid for c in copies]
    if len(set(studies)) != len(studies):
        raise ValueError("one copy per study")
    if set(studies) != {e.study_uid for e in evidence}:
        raise ValueError("a cross-study KOS needs exactly one copy in each referenced study (PS3.3 C.17.6.2.1)")
    if len({(c.study.patient_id, c.study.issuer) for c in copies}) > 1:
        raise ValueError("a KOS selects instances of one patient")
    refs = [DocumentRef(c.study.study_uid, c.series_uid, c.sop_instance_uid) for c in copies]
    return [
        build_kos(
            copy.study,
            evidence,
            title=title,
            description=description,
            sop_instance_uid=copy.sop_instance_uid,
            series_uid=copy.series_uid,
            series_number=series_number,
            instance_number=instance_number,
            content_datetime=content_datetime,
            observer_name=observer_name,
            observer_login=observer_login,
            device_observer=device_observer,
            manufacturer=manufacturer,
            identical=[ref for ref in refs if ref.study_uid != copy.study.study_uid],
            allow_rejection=allow_rejection,
            zone=zone,
        )
        for copy in copies
    ]


def encode(ds: Dataset) -> bytes:
    """DICOM Part 10 file bytes (preamble, File Meta Information, explicit VR little endian), as STOW-RS wants."""
    if UID(ds.file_meta.TransferSyntaxUID) != ExplicitVRLittleEndian:
        raise ValueError("encode writes explicit VR little endian only")
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# -- checks ---------------------------------------------------------------------------------------------------


# -- building blocks --------------------------------------------------------------------------------------------


def _local(when: datetime, study_offset: str | None, zone: tzinfo | None) -> tuple[datetime, str | None]:
    """``when`` in the study's zone and that offset (``±HHMM``) if the study has a valid one; else ``when`` in
    ``zone`` (or as given) and no offset: the KOS then carries none, like its study (C.12.1.1.8)."""
    if when.utcoffset() is None:
        raise ValueError("content_datetime must be timezone-aware")
    match = _OFFSET.fullmatch(study_offset.strip()) if study_offset else None
    if match is None:
        local = when.astimezone(zone) if zone is not None else when
        _offset(local)  # refuse what a DT offset cannot say
        return local, None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes)) * (-1 if sign == "-" else 1)
    local = when.astimezone(timezone(delta))
    return local, _offset(local)


def _offset(when: datetime) -> str:
    """The UTC offset of an aware datetime as ``±HHMM`` (PS3.5 DT, TimezoneOffsetFromUTC)."""
    delta = when.utcoffset()
    if delta is None:
        raise ValueError("content_datetime must be timezone-aware")
    if delta % timedelta(minutes=1):
        raise ValueError("TimezoneOffsetFromUTC has whole minutes only")
    minutes_total = int(delta.total_seconds()) // 60
    sign = "-" if minutes_total < 0 else "+"
    hours, minutes = divmod(abs(minutes_total), 60)
    return f"{sign}{hours:02d}{minutes:02d}"


def _tm(when: datetime) -> str:
    """TM ``HHMMSS`` with a fraction only when there is one (``101112.25``)."""
    text = when.strftime("%H%M%S")
    return f"{text}.{when.microsecond:06d}".rstrip("0") if when.microsecond else text


def _stand_in(e: Evidence, home: str) -> Dataset:
    """What highdicom reads from a referenced instance, filed under the KOS's own study (see the module docstring).
    Rows/Columns only steer highdicom to an IMAGE item; they are not copied into the document."""
    ds = Dataset()
    ds.SOPClassUID = e.sop_class_uid
    ds.SOPInstanceUID = e.sop_instance_uid
    ds.SeriesInstanceUID = e.series_uid
    ds.StudyInstanceUID = home
    if e.is_image:
        ds.Rows = 1
        ds.Columns = 1
    # The patient/study attributes highdicom copies from evidence[0]; empty here, set from PatientStudy afterwards.
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        setattr(ds, keyword, None)
    ds.StudyDate = None
    ds.StudyTime = None
    return ds


def _observer(name: str, login: str | None) -> ObserverContext:
    from highdicom.sr import ObserverContext, PersonObserverIdentifyingAttributes
    from pydicom.sr.codedict import codes

    # highdicom warns (UserWarning) on a PN without "^", e.g. "Bono", which PS3.5 6.2.1.2 allows; the name is
    # the caller's, recorded as given, so that one warning is silenced here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*only a single component", category=UserWarning)
        return ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=name, login_name=login or None),
        )


def _device(device: DeviceObserver) -> ObserverContext:
    from highdicom.sr import DeviceObserverIdentifyingAttributes, ObserverContext
    from pydicom.sr.codedict import codes

    attributes = DeviceObserverIdentifyingAttributes(
        uid=device.uid, name=device.name or None, manufacturer_name=device.manufacturer or None
    )
    return ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=attributes)


def _set_patient_study(ds: Dataset, study: PatientStudy) -> None:
    """Patient Module and General Study Module (Type 2 attributes are present, empty when unknown)."""
    ds.PatientName = study.patient_name or None
    ds.PatientID = study.patient_id
    if study.issuer:
        ds.IssuerOfPatientID = study.issuer
    ds.PatientBirthDate = study.birth_date or None
    ds.PatientSex = study.sex or None
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date or None
    ds.StudyTime = study.study_time or None
    ds.AccessionNumber = study.accession or None
    ds.StudyID = study.study_id or None
    ds.ReferringPhysicianName = study.referring_physician or None


def _hierarchy(refs: Iterable[tuple[str, str, str, str]]) -> DicomSequence:
    """PS3.3 Table C.17-3 Hierarchical SOP Instance Reference Macro: study → series → instances, each level in
    order of first appearance. ``refs`` yields (study, series, SOP class, SOP instance)."""
    studies: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for study, series, sop_class, sop in refs:
        studies.setdefault(study, {}).setdefault(series, []).append((sop_class, sop))
    study_items = []
    for study, series_map in studies.items():
        series_items = []
        for series, instances in series_map.items():
            sop_items = []
            for sop_class, sop in instances:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop
                sop_items.append(item)
            series_item = Dataset()
            series_item.SeriesInstanceUID = series
            series_item.ReferencedSOPSequence = DicomSequence(sop_items)
            series_items.append(series_item)
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = DicomSequence(series_items)
        study_items.append(study_item)
    return DicomSequence(study_items)


def _add_frames(ds: Dataset, frames: Mapping[str, tuple[int, ...]]) -> None:
    """ReferencedFrameNumber (0008,1160) in the IMAGE items' ReferencedSOPSequence (PS3.3 Table 10-3 Image SOP
    Instance Reference Macro), sent only when a reference is to some frames rather than the whole image."""
    for item in ds.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        for ref in item.ReferencedSOPSequence:
            selected = frames.get(str(ref.ReferencedSOPInstanceUID))
            if selected:
                ref.ReferencedFrameNumber = list(selected)
