"""Deterministic synthetic DICOM data and its ground truth (the Manifest tests compare against).

    datasets, manifest = build_dataset()             # the curated set for integration tests
    datasets, manifest = build_bulk(200, 3, 3, 5, seed=1)   # uniform filler for the benchmark

The manifest is built first and the DICOM instances are rendered from it (:func:`render_study`), so the
two cannot disagree. Same seed, same UIDs, same bytes.

How a ``None`` in the manifest is written to DICOM:

- type 2 attributes are present with an empty value: PatientBirthDate, PatientSex, StudyDate,
  AccessionNumber, ReferringPhysicianName;
- StudyTime ``None`` is left out entirely ("a study with no StudyTime");
- type 3 attributes are left out: IssuerOfPatientID, TimezoneOffsetFromUTC, StudyDescription,
  SeriesDescription, BodyPartExamined, Laterality, SeriesDate, SeriesTime;
- StudyDescription ``""`` is present with a zero-length value.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
import sys
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import VR

from app.dicom import gcpause

__all__ = [
    "CR_IMAGE_STORAGE",
    "CT_IMAGE_STORAGE",
    "MR_IMAGE_STORAGE",
    "SOP_CLASS_BY_MODALITY",
    "SR_BASIC_TEXT_STORAGE",
    "US_IMAGE_STORAGE",
    "InstanceTruth",
    "Manifest",
    "SeriesTruth",
    "StudyTruth",
    "build_bulk",
    "build_dataset",
    "make_uid",
    "render_study",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SR_BASIC_TEXT_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"

SOP_CLASS_BY_MODALITY: dict[str, str] = {
    "CT": CT_IMAGE_STORAGE,
    "MR": MR_IMAGE_STORAGE,
    "CR": CR_IMAGE_STORAGE,
    "US": US_IMAGE_STORAGE,
    "SR": SR_BASIC_TEXT_STORAGE,
}

MATRIX = 8  # Rows = Columns: tiny images keep generation and STOW fast.


# -- ground truth -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceTruth:
    uid: str  # SOPInstanceUID
    sop_class_uid: str
    number: int  # InstanceNumber


@dataclass(frozen=True)
class SeriesTruth:
    uid: str  # SeriesInstanceUID
    number: int  # SeriesNumber
    modality: str
    description: str | None  # SeriesDescription
    body_part: str | None  # BodyPartExamined (CS), e.g. "CHEST"
    laterality: str | None  # Laterality (0020,0060): "L" / "R"
    series_date: str | None  # YYYYMMDD
    series_time: str | None  # HHMMSS[.ffffff]
    instances: list[InstanceTruth]


@dataclass(frozen=True)
class StudyTruth:
    study_uid: str
    patient_id: str
    issuer: str | None  # IssuerOfPatientID
    patient_name: str  # PN as stored, groups joined by "=": "Yamada^Tarou=山田^太郎=やまだ^たろう"
    birth_date: str | None  # YYYYMMDD
    sex: str | None  # M / F / O
    study_date: str | None  # YYYYMMDD
    study_time: str | None  # HHMMSS[.ffffff]
    tz_offset: str | None  # TimezoneOffsetFromUTC, "+0100"
    accession: str | None
    study_id: str
    description: str | None  # "" = present but empty
    referrer: str | None  # ReferringPhysicianName (PN)
    series: list[SeriesTruth]
    charset: str | None = None  # SpecificCharacterSet written to every instance ("ISO_IR 192", ...)

    @property
    def modalities(self) -> list[str]:
        """Distinct series modalities, sorted (what ModalitiesInStudy should hold, in any order)."""
        return sorted({s.modality for s in self.series})

    @property
    def instances(self) -> list[InstanceTruth]:
        return [i for s in self.series for i in s.instances]

    @property
    def n_series(self) -> int:
        return len(self.series)

    @property
    def n_instances(self) -> int:
        return sum(len(s.instances) for s in self.series)


@dataclass(frozen=True)
class Manifest:
    studies: list[StudyTruth]

    @property
    def patients(self) -> list[tuple[str, str | None]]:
        """Distinct (patient_id, issuer) pairs, in first-appearance order."""
        return list(dict.fromkeys((s.patient_id, s.issuer) for s in self.studies))

    def study(self, uid: str) -> StudyTruth:
        for s in self.studies:
            if s.study_uid == uid:
                return s
        raise KeyError(uid)

    def series(self, uid: str) -> SeriesTruth:
        for st in self.studies:
            for se in st.series:
                if se.uid == uid:
                    return se
        raise KeyError(uid)

    def studies_of(self, patient_id: str, issuer: str | None = None) -> list[StudyTruth]:
        """Studies of one patient: exact (case-sensitive) PatientID and issuer match."""
        return [s for s in self.studies if s.patient_id == patient_id and s.issuer == issuer]

    @property
    def n_series(self) -> int:
        return sum(s.n_series for s in self.studies)

    @property
    def n_instances(self) -> int:
        return sum(s.n_instances for s in self.studies)


# -- UIDs -----------------------------------------------------------------------------------------------


def make_uid(seed: int, *key: object) -> str:
    """A deterministic ``2.25.<uuid-as-int>`` UID (PS3.5 B.2), at most 44 characters.

    The UUID is a version-4-shaped hash of the seed and key, so different keys give different UIDs.
    """
    text = "|".join(str(part) for part in (seed, *key))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


# -- rendering ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _pixels(modality: str, seed: int) -> tuple[bytes, int, int]:
    """An 8x8 MONOCHROME2 gradient: (bytes, BitsAllocated, BitsStored)."""
    cells = [r * MATRIX + c for r in range(MATRIX) for c in range(MATRIX)]
    if modality == "US":
        return bytes((cell * 4 + seed) % 256 for cell in cells), 8, 8
    values = array("H", ((cell * 61 + seed * 7) % 4096 for cell in cells))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes(), 16, 12


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _series_template(study: StudyTruth, series: SeriesTruth) -> Dataset:
    """Every attribute shared by the instances of one series (all but SOPInstanceUID, InstanceNumber,
    PixelData), so patient/study/series attributes are identical across instances by construction."""
    ds = Dataset()
    if study.charset is not None:
        ds.SpecificCharacterSet = study.charset

    # Patient
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    if study.issuer is not None:
        ds.IssuerOfPatientID = study.issuer
    ds.PatientBirthDate = study.birth_date or ""
    ds.PatientSex = study.sex or ""

    # General Study
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date or ""
    if study.study_time is not None:
        ds.StudyTime = study.study_time
    if study.tz_offset is not None:
        ds.TimezoneOffsetFromUTC = study.tz_offset
    ds.AccessionNumber = study.accession or ""
    ds.StudyID = study.study_id
    ds.ReferringPhysicianName = study.referrer or ""
    if study.description is not None:
        ds.StudyDescription = study.description

    # General Series
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.Modality = series.modality
    if series.description is not None:
        ds.SeriesDescription = series.description
    if series.body_part is not None:
        ds.BodyPartExamined = series.body_part
    if series.laterality is not None:
        ds.Laterality = series.laterality
    if series.series_date is not None:
        ds.SeriesDate = series.series_date
    if series.series_time is not None:
        ds.SeriesTime = series.series_time

    # General Equipment, content date/time
    ds.Manufacturer = "Facade Test Generator"
    if study.study_date is not None:
        ds.ContentDate = study.study_date
    if study.study_time is not None:
        ds.ContentTime = study.study_time

    if series.modality == "SR":
        _add_sr_document(ds)
    else:
        _add_image_attributes(ds, series.modality)
    return ds


def _add_image_attributes(ds: Dataset, modality: str) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = MATRIX
    ds.Columns = MATRIX
    bits = 8 if modality == "US" else 16
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    elif modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTrainLength = 1
    elif modality == "CR":
        ds.ViewPosition = "PA"


def _add_sr_document(ds: Dataset) -> None:
    # Basic Text SR: one CONTAINER with a single TEXT finding (PS3.3 A.35.1).
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.PerformedProcedureCodeSequence = DicomSequence()
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "No acute intracranial abnormality."
    ds.ContentSequence = DicomSequence([finding])


def _copy_element(elem: DataElement) -> DataElement:
    # Shallow copies are ~4x cheaper than building elements anew (which re-validates every value);
    # mutable values (multi-valued, sequences) are deep-copied so instances never share state.
    if elem.VR == VR.SQ or isinstance(elem.value, MultiValue):
        return copy.deepcopy(elem)
    return copy.copy(elem)


def _instance(template: Dataset, series: SeriesTruth, inst: InstanceTruth) -> Dataset:
    ds = Dataset()
    for elem in template:
        ds.add(_copy_element(elem))
    ds.SOPClassUID = inst.sop_class_uid
    ds.SOPInstanceUID = inst.uid
    ds.InstanceNumber = inst.number
    if series.modality != "SR":
        data, bits_allocated, _ = _pixels(series.modality, inst.number + series.number)
        ds.add_new(0x7FE00010, VR.OB if bits_allocated == 8 else VR.OW, data)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(inst.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(inst.uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def render_study(study: StudyTruth) -> Iterator[Dataset]:
    """The DICOM instances of one study, in series/instance order (Explicit VR Little Endian)."""
    for series in study.series:
        template = _series_template(study, series)
        for inst in series.instances:
            yield _instance(template, series, inst)


# Rendering allocates ~50 objects per instance and frees none; the cyclic collector's full passes over the
# growing heap cost about a third of build_bulk's time, and there is no garbage to find.
_gc_paused = gcpause.paused


def _render(manifest: Manifest) -> list[Dataset]:
    with _gc_paused():
        return [ds for study in manifest.studies for ds in render_study(study)]


# -- the curated integration dataset ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    issuer: str | None
    name: str
    birth_date: str | None
    sex: str | None
    charset: str | None


@dataclass(frozen=True)
class _Series:
    modality: str
    description: str | None
    body_part: str | None
    n_instances: int
    laterality: str | None = None
    date: str | None = None
    time: str | None = None


@dataclass(frozen=True)
class _Study:
    key: str
    patient: _Patient
    date: str | None
    time: str | None
    tz: str | None
    accession: str | None
    study_id: str
    description: str | None
    referrer: str | None
    series: Sequence[_Series] = field(default_factory=tuple)


_MUELLER = _Patient("MRN0001", None, "Müller^Jürgen", "19580312", "M", "ISO_IR 192")
_YAMADA = _Patient("JP0002", None, "Yamada^Tarou=山田^太郎=やまだ^たろう", "19700101", "M", "ISO_IR 192")
_GOMEZ = _Patient("ES0003", None, "Gómez^María", "19851124", "F", "ISO_IR 100")
_SMITH = _Patient("SHARED01", "HOSP-A", "Smith^John", "19600505", "M", None)
_BROWN = _Patient("SHARED01", "HOSP-B", "Brown^Alice", "19750720", "F", None)
_DOE = _Patient("MRN0100", None, "Doe^Jane", "19900214", "F", None)
_ROE = _Patient("mrn0100", None, "Roe^Richard", "19820830", "O", None)
_DAVIS = _Patient("MRN0008", None, "Davis^Betty", None, None, None)

# fmt: off
_STUDIES: tuple[_Study, ...] = (
    _Study("mueller-ct", _MUELLER, "20180314", "101500", "+0100", "ACC1001", "1001",
           "CT CHEST W/O CONTRAST", "Welby^Marcus", (
               _Series("CT", "AXIAL 5MM", "CHEST", 3, date="20180314", time="101700"),
               _Series("CT", "CORONAL MPR", "CHEST", 2, date="20180314", time="102000"),
           )),
    _Study("mueller-mr", _MUELLER, "20200602", "083000.123456", "+0100", "ACC1002", "1002",
           "MR BRAIN", None, (
               _Series("MR", "T1 SAG", "BRAIN", 2),
               _Series("MR", "T2 AX", "BRAIN", 4, date="20200602", time="083512"),
               _Series("MR", None, "BRAIN", 1),
           )),
    _Study("yamada-us", _YAMADA, "20190708", "140000", None, "ACC2001", "2001",
           "US ABDOMEN", "Suzuki^Ichiro", (
               _Series("US", "ABD SURVEY", "ABDOMEN", 3),
           )),
    _Study("yamada-ct-us", _YAMADA, "20220110", "091500", None, "acc2001", "2002",
           "CT ABDOMEN + US LIVER", None, (
               _Series("CT", "ABD PORTAL", "ABDOMEN", 2),
               _Series("US", "LIVER", "ABDOMEN", 1),
           )),
    _Study("gomez-cr", _GOMEZ, "20191120", "153000", None, "ACC3001", "3001",
           "Radiografía de tórax", "Pérez^Luis", (
               _Series("CR", "PA", "CHEST", 1),
               _Series("CR", "LATERAL", "CHEST", 1),
           )),
    _Study("gomez-empty-desc", _GOMEZ, "20230305", "110000", None, "ACC3002", "3002",
           "", None, (
               _Series("CT", "CHEST", "CHEST", 2),
           )),
    _Study("smith-mr-knee", _SMITH, "20210915", "090000", "-0500", "ACC4001", "4001",
           "MR KNEE RIGHT", "Grey^Meredith", (
               _Series("MR", "PD SAG", "KNEE", 3, laterality="R", date="20210915", time="090512"),
               _Series("MR", "PD COR", "KNEE", 2, laterality="R", date="20210915", time="091030"),
           )),
    _Study("smith-cr-knee", _SMITH, "20210915", "143000", "-0500", "ACC4002", "4002",
           "XR BOTH KNEES", "Grey^Meredith", (
               _Series("CR", "KNEE AP RIGHT", "KNEE", 1, laterality="R"),
               _Series("CR", "KNEE AP LEFT", "KNEE", 1, laterality="L"),
           )),
    _Study("brown-ct-head", _BROWN, "20240118", "101010", None, "ACC5001", "5001",
           "CT HEAD", "House^Gregory", (
               _Series("CT", "HEAD ROUTINE", "HEAD", 4, date="20240118", time="101200"),
               _Series("CT", "BONE WINDOW", "HEAD", 2),
               _Series("SR", "REPORT", None, 1, date="20240118", time="120000"),
           )),
    _Study("doe-cr", _DOE, "20180822", "120000", None, "ACC6001", "6001",
           "CHEST PA", None, (
               _Series("CR", "PA", "CHEST", 1),
           )),
    _Study("doe-us", _DOE, "20220517", "074500", None, "ACC6002", "6002",
           "US ABDOMEN", "Welby^Marcus", (
               _Series("US", "ABD", "ABDOMEN", 2),
           )),
    _Study("roe-knee-no-time", _ROE, "20201201", None, None, "ACC7001", "7001",
           "KNEE LEFT", None, (
               _Series("US", "KNEE", "KNEE", 2, laterality="L"),
               _Series("MR", "KNEE SAG", "KNEE", 3, laterality="L"),
           )),
    _Study("davis-ct", _DAVIS, "20240630", "235959", None, None, "8001",
           None, None, (
               _Series("CT", "CHEST LOW DOSE", "CHEST", 2, date="20240630", time="235959"),
           )),
)
# fmt: on


def _truth(study: _Study, seed: int) -> StudyTruth:
    study_uid = make_uid(seed, "study", study.key)
    series: list[SeriesTruth] = []
    for number, spec in enumerate(study.series, start=1):
        series_uid = make_uid(seed, "series", study.key, number)
        sop_class = SOP_CLASS_BY_MODALITY[spec.modality]
        instances = [
            InstanceTruth(make_uid(seed, "instance", study.key, number, i), sop_class, i)
            for i in range(1, spec.n_instances + 1)
        ]
        series.append(
            SeriesTruth(
                series_uid,
                number,
                spec.modality,
                spec.description,
                spec.body_part,
                spec.laterality,
                spec.date,
                spec.time,
                instances,
            )
        )
    p = study.patient
    return StudyTruth(
        study_uid=study_uid,
        patient_id=p.patient_id,
        issuer=p.issuer,
        patient_name=p.name,
        birth_date=p.birth_date,
        sex=p.sex,
        study_date=study.date,
        study_time=study.time,
        tz_offset=study.tz,
        accession=study.accession,
        study_id=study.study_id,
        description=study.description,
        referrer=study.referrer,
        series=series,
        charset=p.charset,
    )


def build_dataset(*, seed: int = 7) -> tuple[list[Dataset], Manifest]:
    """The curated integration dataset: 8 patients (7 PatientIDs), 13 studies, CT/MR/CR/US and one SR.

    Edge cases it holds: UTF-8 (Müller^Jürgen), 3-group (Yamada) and Latin-1 / ISO_IR 100 (Gómez) names;
    SHARED01 under issuers HOSP-A and HOSP-B; PatientIDs MRN0100 vs mrn0100 and accessions ACC2001 vs
    acc2001; an empty StudyDescription; a study without StudyTime; TimezoneOffsetFromUTC +0100 and -0500;
    two studies of one patient on 2021-09-15; a patient without birth date or sex and a study without
    accession number; a fractional StudyTime.
    """
    manifest = Manifest([_truth(study, seed) for study in _STUDIES])
    return _render(manifest), manifest


# -- bulk data for the benchmark ----------------------------------------------------------------------------

# fmt: off
_FAMILY = ("Adams", "Baker", "Clark", "Davis", "Evans", "Foster", "Garcia", "Hughes", "Ito", "Jones",
           "Khan", "Lopez", "Moore", "Nguyen", "Okafor", "Patel", "Quinn", "Rossi", "Smith", "Tanaka",
           "Usman", "Vogel", "Walker", "Xu", "Young", "Zimmer")
_GIVEN = ("Anna", "Ben", "Carla", "David", "Eva", "Frank", "Grace", "Henry", "Iris", "Jack", "Kira",
          "Liam", "Maya", "Noah", "Olga", "Paul")
_BODY_BY_MODALITY = {"CT": ("CHEST", "HEAD", "ABDOMEN"), "MR": ("BRAIN", "KNEE", "HEAD"),
                     "CR": ("CHEST", "KNEE"), "US": ("ABDOMEN",)}
# fmt: on
_BULK_MODALITIES = ("CT", "MR", "CR", "US")


def build_bulk(
    n_patients: int,
    studies_per_patient: int,
    series_per_study: int,
    instances_per_series: int,
    *,
    seed: int,
) -> tuple[list[Dataset], Manifest]:
    """Uniform synthetic data for load tests: PatientID ``BULK000001``…, ASCII names, 2015-2024 dates.

    Each study has one modality (cycling CT/MR/CR/US), so ModalitiesInStudy has one value.
    """
    rng = random.Random(seed)
    studies: list[StudyTruth] = []
    for p in range(1, n_patients + 1):
        patient_id = f"BULK{p:06d}"
        name = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}"
        birth = f"{rng.randint(1930, 2010)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        sex = rng.choice(("M", "F", "O"))
        for s in range(1, studies_per_patient + 1):
            key = ("bulk", p, s)
            modality = _BULK_MODALITIES[(p + s) % len(_BULK_MODALITIES)]
            sop_class = SOP_CLASS_BY_MODALITY[modality]
            date = f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            time = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
            body = rng.choice(_BODY_BY_MODALITY[modality])
            series = [
                SeriesTruth(
                    uid=make_uid(seed, *key, "series", se),
                    number=se,
                    modality=modality,
                    description=f"{modality} {body} {se}",
                    body_part=body,
                    laterality=None,
                    series_date=None,
                    series_time=None,
                    instances=[
                        InstanceTruth(make_uid(seed, *key, "instance", se, i), sop_class, i)
                        for i in range(1, instances_per_series + 1)
                    ],
                )
                for se in range(1, series_per_study + 1)
            ]
            studies.append(
                StudyTruth(
                    study_uid=make_uid(seed, *key, "study"),
                    patient_id=patient_id,
                    issuer=None,
                    patient_name=name,
                    birth_date=birth,
                    sex=sex,
                    study_date=date,
                    study_time=time,
                    tz_offset=None,
                    accession=f"B{p:06d}{s:03d}",
                    study_id=str(s),
                    description=f"{modality} {body}",
                    referrer=None,
                    series=series,
                )
            )
    manifest = Manifest(studies)
    return _render(manifest), manifest
