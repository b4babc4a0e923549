"""Tolerant accessors for DICOM JSON (PS3.18 Annex F) datasets as plain dicts.

A dataset is ``{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, ...}``. Missing tags, missing ``Value`` (empty
type-2 attributes, F.2.5) and odd shapes read as ``None``; only a body that is not a list of objects is an error,
and that is decided in :mod:`app.pacs.upstream`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Dataset = dict[str, Any]

# Tags used by the facade, as 8-hex keys (PS3.18 F.2.1.1.1).
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
SERIES_DATE = "00080021"
SERIES_TIME = "00080031"
ACCESSION = "00080050"
ISSUER_OF_ACCESSION = "00080051"
MODALITIES_IN_STUDY = "00080061"
MODALITY = "00080060"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
TIMEZONE_OFFSET = "00080201"
REFERRING_PHYSICIAN = "00080090"
STUDY_DESCRIPTION = "00081030"
SERIES_DESCRIPTION = "0008103E"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
BODY_PART = "00180015"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
STUDY_ID = "00200010"
SERIES_NUMBER = "00200011"
INSTANCE_NUMBER = "00200013"
LATERALITY = "00200060"
NUMBER_OF_SERIES = "00201206"
NUMBER_OF_STUDY_INSTANCES = "00201208"
NUMBER_OF_SERIES_INSTANCES = "00201209"
CONTENT_LABEL = "00700080"
DOCUMENT_TITLE = "00420010"
IMAGE_TYPE = "00080008"
ROWS = "00280010"
NUMBER_OF_FRAMES = "00280008"


# Rows from the PACS are slimmed once, when they arrive (:func:`slim`): only the attributes the facade reads,
# as ``tag -> tuple of values``. Fewer objects to parse-and-keep, and dicts/tuples of plain strings and numbers
# are not tracked by Python's cyclic garbage collector, so a cache full of rows costs no GC time. The accessors
# read both that shape and full DICOM JSON (what unit tests and tolerant callers pass).


def slim(row: Dataset) -> Dataset:
    out: Dataset = {}
    for tag, element in row.items():
        # PS3.18 F.2.1.1.1 keys are upper-case hex; accept a lower-case server too.
        if (tag in USED_TAGS or (tag := tag.upper()) in USED_TAGS) and type(element) is dict:
            value = element.get("Value")
            if type(value) is list and value:
                out[tag] = tuple(value)
    return out


def values(ds: Dataset, tag: str) -> Sequence[Any]:
    value = ds.get(tag)
    if type(value) is tuple:
        return value
    if isinstance(value, dict):
        inner = value.get("Value")
        return inner if isinstance(inner, list) else ()
    return ()


def first(ds: Dataset, tag: str) -> Any:
    value = ds.get(tag)
    if type(value) is tuple:
        return value[0]
    vals = values(ds, tag) if value is not None else ()
    return vals[0] if vals else None


def text(ds: Dataset, tag: str) -> str | None:
    """First value as a stripped string; empty strings read as None."""
    value = first(ds, tag)
    if type(value) is not str:
        if isinstance(value, dict):  # a PN sent where a string was expected
            value = value.get("Alphabetic")
        if value is None:
            return None
        value = str(value)
    return value.strip() or None


def texts(ds: Dataset, tag: str) -> list[str]:
    return [v.strip() for v in values(ds, tag) if isinstance(v, str) and v.strip()]


def integer(ds: Dataset, tag: str) -> int | None:
    """IS/US values: JSON numbers per F.2.3, but some servers send strings."""
    return as_int(first(ds, tag))


def as_int(value: object) -> int | None:
    """One IS/US/SL value as an int: a JSON number, an integral float or a numeric string; else None."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


USED_TAGS = frozenset(
    {
        ROWS,  # an image (app.dicom.kos_build: IMAGE or COMPOSITE content item)
        NUMBER_OF_FRAMES,  # frames a manifest may select
        STUDY_DATE,
        STUDY_TIME,
        SERIES_DATE,
        SERIES_TIME,
        ACCESSION,
        MODALITIES_IN_STUDY,
        MODALITY,
        SOP_CLASS_UID,
        SOP_INSTANCE_UID,
        TIMEZONE_OFFSET,
        REFERRING_PHYSICIAN,
        STUDY_DESCRIPTION,
        SERIES_DESCRIPTION,
        PATIENT_NAME,
        PATIENT_ID,
        ISSUER_OF_PATIENT_ID,
        BODY_PART,
        STUDY_UID,
        SERIES_UID,
        STUDY_ID,
        SERIES_NUMBER,
        INSTANCE_NUMBER,
        LATERALITY,
        NUMBER_OF_SERIES,
        NUMBER_OF_STUDY_INSTANCES,
        NUMBER_OF_SERIES_INSTANCES,
        CONTENT_LABEL,
        DOCUMENT_TITLE,
        IMAGE_TYPE,
        PATIENT_BIRTH_DATE,
        PATIENT_SEX,
    }
)


def person_name(ds: Dataset, tag: str) -> dict[str, str] | None:
    """PN as its component groups (F.2.2): {"Alphabetic": ..., "Ideographic": ..., "Phonetic": ...}."""
    value = first(ds, tag)
    if isinstance(value, str):  # tolerated: some servers send the PN as a plain string
        groups = value.split("=")
        value = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
    if not isinstance(value, dict):
        return None
    out = {k: v for k in ("Alphabetic", "Ideographic", "Phonetic") if isinstance(v := value.get(k), str) and v}
    return out or None
