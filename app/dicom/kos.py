"""Key Object Selection (KOS) documents read from WADO-RS metadata, the groundwork for R5 ImagingSelection.

A KOS (SOP Class 1.2.840.10008.5.1.4.1.1.88.59, Modality ``KO``; PS3.3 A.35.4 Key Object Selection Document
IOD) is a small SR document whose content tree follows PS3.16 TID 2010 "Key Object Selection":

    CONTAINER  root; ConceptNameCodeSequence = document title from CID 7010 ("For Teaching", ...)
     ├── HAS OBS CONTEXT  TID 1002 observer context: a person (TID 1003: PNAME 121008 "Person    optional
     │                    Observer Name", TEXT 128774 "Person Observer's Login Name", ...) and/or a device
     │                    (TID 1004: UIDREF 121012 "Device Observer UID", TEXT 121013 "Device Observer Name")
     ├── CONTAINS TEXT    (113012, DCM, "Key Object Description")                                optional
     └── CONTAINS IMAGE / COMPOSITE / WAVEFORM   ReferencedSOPSequence (+ ReferencedFrameNumber)   1-n

and whose Current Requested Procedure Evidence Sequence (0040,A375) lists every referenced instance as
study → ReferencedSeriesSequence (0008,1115) → ReferencedSOPSequence (0008,1199) (PS3.3 C.17.6.2 Key Object
Document Module). The content tree names instances only by SOP Instance UID; the evidence is where their study
and series come from, so a reference is resolved by joining the two.

:func:`parse_kos` takes the DICOM JSON (PS3.18 Annex F) of one instance, as ``GET …/instances/{uid}/metadata``
returns it, and gives a frozen :class:`KeyObjectSelection`. It is a tolerant reader: a missing or oddly shaped
attribute reads as ``None`` / empty, and the only error is :class:`NotKeyObjectSelection` for input that is not
a KOS at all. :func:`by_series` groups the references per series, because one R5 ImagingSelection holds the
instances of one series only ("All DICOM SOP Instances referenced in a single ImagingSelection resource shall
be part of the same DICOM Series").

Pure: no I/O, standard library only; the generic DICOM JSON and SR content-tree readers are app.dicom.sr.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from . import sr
from .sr import Code, PersonName, dicom_datetime

__all__ = [
    "KOS_SOP_CLASS_UID",
    "REJECTION_TITLES",
    "Code",
    "KeyObjectSelection",
    "NotKeyObjectSelection",
    "PersonName",
    "ReferencedInstance",
    "SeriesSelection",
    "by_series",
    "dicom_datetime",
    "parse_kos",
]

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"

# CID 7010 titles that IHE IOCM (and archives such as dcm4chee) use for rejection notes: the referenced
# instances are withdrawn, not selected. A facade must not present such a document as a key-image selection.
REJECTION_TITLES = frozenset({"113001", "113037", "113038", "113039"})

# DICOM JSON keys (PS3.18 F.2.1.1.1: eight upper-case hex digits).
_SOP_CLASS_UID = "00080016"
_SOP_INSTANCE_UID = "00080018"
_CONTENT_DATE = "00080023"
_CONTENT_TIME = "00080033"
_MODALITY = "00080060"
_CODE_VALUE = "00080100"
_CODING_SCHEME = "00080102"
_CODE_MEANING = "00080104"
_LONG_CODE_VALUE = "00080119"
_URN_CODE_VALUE = "00080120"
_TIMEZONE_OFFSET = "00080201"
_REFERENCED_SERIES = "00081115"
_REFERENCED_SOP_CLASS_UID = "00081150"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_REFERENCED_FRAME_NUMBER = "00081160"
_REFERENCED_SOP = "00081199"
_PATIENT_NAME = "00100010"
_PATIENT_ID = "00100020"
_ISSUER_OF_PATIENT_ID = "00100021"
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_VALUE_TYPE = "0040A040"
_CONCEPT_NAME = "0040A043"
_PERSON_NAME = "0040A123"
_TEXT_VALUE = "0040A160"
_UID_VALUE = "0040A124"
_EVIDENCE = "0040A375"
_CONTENT_SEQUENCE = "0040A730"

# TID 2010 row "Key Object Description"; TID 1003 "Person Observer Name" and "Person Observer's Login Name";
# TID 1004 "Device Observer UID" and "Device Observer Name".
_KEY_OBJECT_DESCRIPTION = ("113012", "DCM")
_PERSON_OBSERVER_NAME = ("121008", "DCM")
_PERSON_OBSERVER_LOGIN = ("128774", "DCM")
_DEVICE_OBSERVER_UID = ("121012", "DCM")
_DEVICE_OBSERVER_NAME = ("121013", "DCM")

# Value types whose items reference a composite instance through ReferencedSOPSequence (PS3.3 C.17.3, SR Document
# Content Module); TID 2010 allows all three.
_REFERENCE_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE", "WAVEFORM"})


class NotKeyObjectSelection(ValueError):
    """The input is not the DICOM JSON of one Key Object Selection Document instance."""


@dataclass(frozen=True)
class ReferencedInstance:
    """One instance the KOS selects. ``frames`` empty = the whole instance (PS3.3 10.3 Image SOP Instance
    Reference Macro: ReferencedFrameNumber is sent only when a reference does not apply to all frames)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    frames: tuple[int, ...] = ()


@dataclass(frozen=True)
class SeriesSelection:
    """The references of one series: what one R5 ImagingSelection (studyUid, seriesUid, instance[]) holds."""

    study_uid: str
    series_uid: str
    instances: tuple[ReferencedInstance, ...]


@dataclass(frozen=True)
class KeyObjectSelection:
    """One KOS document.

    Dates are kept as the DICOM strings (``content_date`` DA ``YYYYMMDD``, ``content_time`` TM
    ``HHMMSS.FFFFFF`` or shorter, ``timezone_offset`` ``±HHMM``), so nothing is lost or guessed here;
    :attr:`issued` parses them. ``references`` follow the evidence order (study, series, instance as the
    document lists them); ``unresolved`` holds SOP Instance UIDs that the content tree references but the
    evidence does not list (a broken document: without the evidence there is no study/series to point at).
    """

    sop_instance_uid: str
    study_uid: str | None
    series_uid: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_name: PersonName | None
    title: Code | None
    description: str | None
    observer_name: PersonName | None
    device_observer_name: str | None
    content_date: str | None
    content_time: str | None
    timezone_offset: str | None
    references: tuple[ReferencedInstance, ...]
    unresolved: tuple[str, ...] = ()
    # SOP Instance UIDs of the copies of this document in other studies (Identical Documents Sequence (0040,A525),
    # PS3.3 C.17.6.2.1: required when a KOS references more than one study, one copy stored in each).
    identical: tuple[str, ...] = ()
    # The studies those copies are stored in (the same sequence's StudyInstanceUIDs): with the document's own study,
    # where the manifest lives (its meta.lastUpdated is their latest change, app.usecases.last_updated).
    identical_studies: tuple[str, ...] = ()
    # TID 1003 "Person Observer's Login Name": where a manifest made through this facade keeps the SMART
    # ``fhirUser`` of whoever made it (app.planning.manifest_input); TID 1004 "Device Observer UID".
    observer_login: str | None = None
    device_observer_uid: str | None = None

    @property
    def canonical_uid(self) -> str:
        """One UID for the document and all its copies (the smallest), so the copies show as one manifest."""
        return min((self.sop_instance_uid, *self.identical))

    @property
    def homes(self) -> tuple[str, ...]:
        """The studies the document and its copies are stored in: its own first."""
        return tuple(dict.fromkeys(u for u in (self.study_uid, *self.identical_studies) if u))

    @property
    def is_rejection(self) -> bool:
        """An IOCM rejection note: title 113001/113037/113038/113039 of the DCM scheme (CID 7010)."""
        return self.title is not None and self.title.scheme == "DCM" and self.title.value in REJECTION_TITLES

    @property
    def issued(self) -> datetime | None:
        """ContentDate + ContentTime (Type 1 in the Key Object Document Module, PS3.3 C.17.6.2) as a datetime.

        Aware when TimezoneOffsetFromUTC is present, naive otherwise: the zone of a naive value is the PACS's
        local time, which only the caller knows (the ``pacs_timezone`` setting), and R5 ImagingSelection.issued
        is an instant, so it must not be guessed here. ``None`` unless both date and time parse.
        """
        return sr.dicom_datetime(self.content_date, self.content_time, self.timezone_offset)

    def series(self) -> tuple[SeriesSelection, ...]:
        """:func:`by_series` of this document's references."""
        return by_series(self.references)


# -- public functions ---------------------------------------------------------------------------------------


def parse_kos(metadata: object) -> KeyObjectSelection:
    """The DICOM JSON of one KOS instance → :class:`KeyObjectSelection`.

    ``metadata`` is one dataset object, or the one-element array that WADO-RS ``…/instances/{uid}/metadata``
    answers (an array of dataset objects, PS3.18 Annex F). Raises :class:`NotKeyObjectSelection` when it is
    neither, when its SOP Class UID is another class (or absent while Modality is not ``KO``), or when it has no
    SOP Instance UID (there is nothing to identify the selection by). Every other defect reads as ``None`` / empty.
    """
    ds = _single_dataset(metadata)
    sop_class = sr.string_of(ds, _SOP_CLASS_UID)
    if sop_class is None:
        # A conformant server always sends the Type 1 SOP Class UID; without it, Modality KO (PS3.3 C.17.6.1,
        # Key Object Document Series) is the only other sign of a KOS.
        if sr.string_of(ds, _MODALITY) != "KO":
            raise NotKeyObjectSelection("no SOP Class UID and Modality is not KO")
    elif sop_class != KOS_SOP_CLASS_UID:
        raise NotKeyObjectSelection(f"SOP Class UID {sop_class} is not Key Object Selection Document Storage")
    sop_instance_uid = sr.string_of(ds, _SOP_INSTANCE_UID)
    if sop_instance_uid is None:
        raise NotKeyObjectSelection("no SOP Instance UID")

    titles = sr.items_of(ds, _CONCEPT_NAME)
    content = list(sr.walk(sr.items_of(ds, _CONTENT_SEQUENCE)))
    references, unresolved = _references(ds, content)
    return KeyObjectSelection(
        sop_instance_uid=sop_instance_uid,
        study_uid=sr.string_of(ds, _STUDY_UID),
        series_uid=sr.string_of(ds, _SERIES_UID),
        patient_id=sr.string_of(ds, _PATIENT_ID),
        issuer_of_patient_id=sr.string_of(ds, _ISSUER_OF_PATIENT_ID),
        patient_name=sr.person_name_of(ds, _PATIENT_NAME),
        title=sr.code_of(titles[0]) if titles else None,
        description=sr.first_text(content, _KEY_OBJECT_DESCRIPTION, _TEXT_VALUE),
        observer_name=sr.first_person(content, _PERSON_OBSERVER_NAME),
        device_observer_name=sr.first_text(content, _DEVICE_OBSERVER_NAME, _TEXT_VALUE),
        content_date=sr.string_of(ds, _CONTENT_DATE),
        content_time=sr.string_of(ds, _CONTENT_TIME),
        timezone_offset=sr.string_of(ds, _TIMEZONE_OFFSET),
        references=references,
        unresolved=unresolved,
        identical=_identical(ds),
        identical_studies=tuple(
            dict.fromkeys(uid for study in sr.items_of(ds, "0040A525") if (uid := sr.string_of(study, "0020000D")))
        ),
        observer_login=sr.first_text(content, _PERSON_OBSERVER_LOGIN, _TEXT_VALUE),
        device_observer_uid=sr.first_text(content, _DEVICE_OBSERVER_UID, _UID_VALUE),
    )


def _identical(ds: Mapping[str, object]) -> tuple[str, ...]:
    """The Hierarchical SOP Instance Reference Macro of the Identical Documents Sequence: study → series → SOP."""
    out = []
    for study in sr.items_of(ds, "0040A525"):
        for series in sr.items_of(study, "00081115"):
            for sop in sr.items_of(series, "00081199"):
                uid = sr.string_of(sop, "00081155")
                if uid:
                    out.append(uid)
    return tuple(dict.fromkeys(out))


def by_series(references: Iterable[ReferencedInstance]) -> tuple[SeriesSelection, ...]:
    """Group references by (study UID, series UID), in order of first appearance; instances keep their order.

    One series per group because an R5 ImagingSelection holds the instances of one series only, so a KOS that
    spans k series becomes k ImagingSelection resources. The order is the document's, hence stable.
    """
    groups: dict[tuple[str, str], list[ReferencedInstance]] = {}
    for ref in references:
        groups.setdefault((ref.study_uid, ref.series_uid), []).append(ref)
    return tuple(SeriesSelection(study, series, tuple(refs)) for (study, series), refs in groups.items())


# -- the content tree and the evidence -------------------------------------------------------------------------


def _references(
    ds: Mapping[str, object], content: list[Mapping[str, object]]
) -> tuple[tuple[ReferencedInstance, ...], tuple[str, ...]]:
    # Frames per instance from the content tree. The same instance may appear in several items (e.g. frames
    # 1-2 in one, 5 in another): the frames are merged in document order; an item without frames selects the
    # whole instance, which then wins (None).
    frames: dict[str, list[int] | None] = {}
    content_classes: dict[str, str] = {}
    for item in content:
        if sr.string_of(item, _VALUE_TYPE) not in _REFERENCE_VALUE_TYPES:
            continue
        for ref in sr.items_of(item, _REFERENCED_SOP):
            uid = sr.string_of(ref, _REFERENCED_SOP_INSTANCE_UID)
            if uid is None:
                continue
            sop_class = sr.string_of(ref, _REFERENCED_SOP_CLASS_UID)
            if sop_class is not None:
                content_classes.setdefault(uid, sop_class)
            numbers = sr.frame_numbers(ref)
            if uid not in frames:
                frames[uid] = numbers or None
                continue
            known = frames[uid]
            if known is None:
                continue
            if numbers:
                known.extend(n for n in numbers if n not in known)
            else:
                frames[uid] = None

    # Study and series from the evidence (PS3.3 C.17.6.2: it lists every instance of the content tree, of
    # whatever study, since the KOS IOD has no Pertinent Other Evidence Sequence). Its order is kept.
    references: dict[str, ReferencedInstance] = {}
    for study_item in sr.items_of(ds, _EVIDENCE):
        study_uid = sr.string_of(study_item, _STUDY_UID)
        if study_uid is None:
            continue
        for series_item in sr.items_of(study_item, _REFERENCED_SERIES):
            series_uid = sr.string_of(series_item, _SERIES_UID)
            if series_uid is None:
                continue
            for sop_item in sr.items_of(series_item, _REFERENCED_SOP):
                uid = sr.string_of(sop_item, _REFERENCED_SOP_INSTANCE_UID)
                if uid is None or uid in references:
                    continue
                selected = frames.get(uid)
                references[uid] = ReferencedInstance(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_instance_uid=uid,
                    sop_class_uid=sr.string_of(sop_item, _REFERENCED_SOP_CLASS_UID) or content_classes.get(uid),
                    frames=tuple(selected) if selected else (),
                )
    unresolved = tuple(uid for uid in frames if uid not in references)
    return tuple(references.values()), unresolved


# -- DICOM JSON accessors (tolerant) ----------------------------------------------------------------------------


def _single_dataset(metadata: object) -> Mapping[str, object]:
    if isinstance(metadata, list):
        if len(metadata) != 1:
            raise NotKeyObjectSelection(f"expected the metadata of one instance, got a list of {len(metadata)}")
        metadata = metadata[0]
    if not isinstance(metadata, Mapping):
        raise NotKeyObjectSelection(f"expected a DICOM JSON object, got {type(metadata).__name__}")
    return metadata
