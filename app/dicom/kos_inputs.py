"""What a KOS document is built from, and the checks a build makes on it (pure): :class:`Evidence` (a selected
instance, from its QIDO row), :class:`PatientStudy` (the patient and study the KOS is filed under), references to
the other copies of a cross-study KOS (:class:`DocumentRef`, :class:`KosCopy`), the device that made it
(:class:`DeviceObserver`), and the validation of UIDs, titles
(CID 7010) and evidence that app.dicom.kos_build applies before it writes anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import UID

from . import dicom_json as dj
from .kos import REJECTION_TITLES

# PS3.5 9.1: components of digits without leading zeros, separated by dots, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


_ROWS = "00280010"


_NUMBER_OF_FRAMES = "00280008"


# Image IODs (those with the Image Pixel Module, PS3.3 A.1.4) whose SOP class name lacks the word "Image"; every
# other image storage class is named "... Image Storage ...". Checked against highdicom's IOD table in the tests.
_IMAGE_CLASSES_WITHOUT_IMAGE_IN_NAME = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.77.1.5.8",  # Ophthalmic OCT B-scan Volume Analysis Storage
        "1.2.840.10008.5.1.4.1.1.81.1",  # Ophthalmic Thickness Map Storage
        "1.2.840.10008.5.1.4.1.1.82.1",  # Corneal Topography Map Storage
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose Storage
    }
)


Title = tuple[str, str, str]  # (CodeValue, CodingSchemeDesignator, CodeMeaning), from CID 7010


@dataclass(frozen=True)
class Evidence:
    """One selected instance. ``frames`` (1-based) selects part of a multi-frame image; empty = the whole instance.

    ``image`` picks the content item's value type: IMAGE (an image, PS3.3 10.3 Image SOP Instance Reference Macro,
    the only one that can carry frame numbers) or COMPOSITE (anything else: SR, KOS, PDF, presentation state,
    waveform). ``None`` decides from the SOP class (:func:`is_image_sop_class`), or IMAGE when frames are given.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frames: tuple[int, ...] = ()
    image: bool | None = None

    @classmethod
    def from_qido(cls, row: dj.Dataset, frames: Sequence[int] = ()) -> Evidence:
        """From a QIDO-RS instance row (full DICOM JSON or :func:`app.dicom.dicom_json.slim`-med). Rows (0028,0010) or
        NumberOfFrames, which PS3.18 returns for images only, mark an image; otherwise the SOP class decides."""
        uids = [dj.text(row, tag) for tag in (dj.STUDY_UID, dj.SERIES_UID, dj.SOP_INSTANCE_UID, dj.SOP_CLASS_UID)]
        study, series, sop, sop_class = uids
        if study is None or series is None or sop is None or sop_class is None:
            raise ValueError("a QIDO instance row needs Study, Series and SOP Instance UIDs and the SOP Class UID")
        image = True if _ROWS in row or _NUMBER_OF_FRAMES in row else None
        return cls(study, series, sop, sop_class, tuple(frames), image)

    @property
    def is_image(self) -> bool:
        if self.image is not None:
            return self.image
        return bool(self.frames) or is_image_sop_class(self.sop_class_uid)


@dataclass(frozen=True)
class PatientStudy:
    """Patient Module and General Study Module attributes of the KOS's own study, copied as the PACS has them.

    ``patient_name`` and ``referring_physician`` are PN strings (``Family^Given``, groups joined by ``=``);
    dates and times are DA/TM strings. ``timezone_offset`` is the study's TimezoneOffsetFromUTC (``±HHMM``) if the
    PACS has one: the KOS's dates and times are then written in that zone (see :func:`build_kos`).
    """

    patient_id: str
    issuer: str | None
    patient_name: str | None
    birth_date: str | None
    sex: str | None
    study_uid: str
    study_date: str | None
    study_time: str | None
    accession: str | None
    study_id: str | None
    referring_physician: str | None
    timezone_offset: str | None = None

    @classmethod
    def from_qido(cls, row: dj.Dataset) -> PatientStudy:
        """From a QIDO-RS study row. IssuerOfPatientID is only there if asked for (``includefield=00100021``)."""
        study_uid = dj.text(row, dj.STUDY_UID)
        if study_uid is None:
            raise ValueError("a QIDO study row needs a Study Instance UID")
        return cls(
            patient_id=raw(row, dj.PATIENT_ID) or "",
            issuer=raw(row, dj.ISSUER_OF_PATIENT_ID),
            patient_name=pn(row, dj.PATIENT_NAME),
            birth_date=raw(row, dj.PATIENT_BIRTH_DATE),
            sex=raw(row, dj.PATIENT_SEX),
            study_uid=study_uid,
            study_date=raw(row, dj.STUDY_DATE),
            study_time=raw(row, dj.STUDY_TIME),
            accession=raw(row, dj.ACCESSION),
            study_id=raw(row, dj.STUDY_ID),
            referring_physician=pn(row, dj.REFERRING_PHYSICIAN),
            timezone_offset=raw(row, dj.TIMEZONE_OFFSET),
        )


@dataclass(frozen=True)
class DocumentRef:
    """Where an identical copy of a KOS lives (one item of the Identical Documents Sequence, PS3.3 C.17.6.2.1)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class KosCopy:
    """One copy of a cross-study KOS: the study it is stored in, and its own series and SOP Instance UIDs."""

    study: PatientStudy
    series_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class DeviceObserver:
    """The device a KOS names as its observer (PS3.16 TID 1004): Device Observer UID (121012, Type M there) and
    the optional Device Observer Name (121013) and Manufacturer (121014)."""

    uid: str
    name: str | None = None
    manufacturer: str | None = None


def is_image_sop_class(sop_class_uid: str) -> bool:
    """Whether instances of this storage SOP class are images (IMAGE content items); unknown classes are not."""
    if sop_class_uid in _IMAGE_CLASSES_WITHOUT_IMAGE_IN_NAME:
        return True
    name = UID(sop_class_uid).name  # the UID itself when pydicom does not know it
    return "Image" in name and name != sop_class_uid


def check_uid(uid: str) -> None:
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise ValueError(f"not a DICOM UID: {uid!r}")


def check_title(title: Title, allow_rejection: bool) -> None:
    if len(title) != 3 or not all(isinstance(part, str) and part.strip() for part in title):
        raise ValueError("title is (code value, coding scheme, code meaning), none of them empty")
    if title[1] == "DCM" and title[0] in REJECTION_TITLES and not allow_rejection:
        raise ValueError(f"{title[0]} is an IOCM rejection title: an archive would withdraw the selected instances")


def check_evidence(home: str, evidence: Sequence[Evidence]) -> None:
    if not evidence:
        raise ValueError("a KOS selects at least one instance")
    check_uid(home)
    seen: set[str] = set()
    for e in evidence:
        for uid in (e.study_uid, e.series_uid, e.sop_instance_uid, e.sop_class_uid):
            check_uid(uid)
        if e.sop_instance_uid in seen:
            raise ValueError(f"instance {e.sop_instance_uid} is selected twice; merge its frames into one Evidence")
        seen.add(e.sop_instance_uid)
        if e.frames:
            if not e.is_image:
                raise ValueError(f"instance {e.sop_instance_uid} is not an image; it has no frames")
            if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in e.frames):
                raise ValueError("frame numbers are integers from 1")
            if len(set(e.frames)) != len(e.frames):
                raise ValueError(f"frame numbers of {e.sop_instance_uid} repeat")
    if all(e.study_uid != home for e in evidence):
        raise ValueError("the KOS's own study must hold at least one selected instance")


def check_identical(home: str, evidence: Sequence[Evidence], identical: Sequence[DocumentRef]) -> None:
    others = {e.study_uid for e in evidence} - {home}
    for ref in identical:
        for uid in (ref.study_uid, ref.series_uid, ref.sop_instance_uid):
            check_uid(uid)
    studies = [ref.study_uid for ref in identical]
    if len(set(studies)) != len(studies) or set(studies) != others:
        raise ValueError(
            "a KOS that selects instances of other studies is duplicated into each of them, and each copy lists "
            "the others as Identical Documents (PS3.3 C.17.6.2.1): give one DocumentRef per other study "
            "(build_kos_copies does this)"
        )


def raw(row: dj.Dataset, tag: str) -> str | None:
    value = dj.first(row, tag)
    return value if isinstance(value, str) and value.strip() else None


def pn(row: dj.Dataset, tag: str) -> str | None:
    """DICOM JSON PN (F.2.2 component groups) → the PN string ``Alphabetic=Ideographic=Phonetic``."""
    groups = dj.person_name(row, tag)
    if groups is None:
        return None
    return "=".join(groups.get(key, "") for key in ("Alphabetic", "Ideographic", "Phonetic")).rstrip("=") or None
