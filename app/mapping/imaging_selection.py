"""A Key Object Selection document → FHIR R5 ImagingSelection resources (pure; shared/docs/fhir-dicom.md §1.7-1.9).

R5 ImagingSelection (https://hl7.org/fhir/R5/imagingselection.html) holds the instances of ONE series ("All DICOM
SOP Instances referenced in a single ImagingSelection resource shall be part of the same DICOM Series"), so a KOS
whose references span k series (possibly of several studies) becomes k resources, in the document's order
(:meth:`app.dicom.kos.KeyObjectSelection.series`). They share one business identifier, the KOS SOP Instance UID as
``urn:dicom:uid`` / ``urn:oid:<uid>`` (the form R5 ImagingStudy uses for a Study UID), so
``ImagingSelection?identifier=urn:dicom:uid|urn:oid:<uid>`` finds them together; their ids are
:func:`app.fhir.selection_ids.encode` of (KOS UID, group number), so each can be read back without a database.

IHE IOCM rejection notes (titles 113001, 113037-113039) withdraw instances rather than select them: they give no
ImagingSelection at all.

Element by element (R5 ImagingSelection):

- status ``available`` (required binding available | entered-in-error | unknown): the KOS is stored in the PACS;
- subject: ``Patient/<id>`` as ImagingStudy.subject (app.mapping.imaging_study.subject_reference);
- issued (``instant``): ContentDate + ContentTime in TimezoneOffsetFromUTC, else in the PACS zone
  (``ctx.zone``), else left out: an instant needs seconds and a zone, and none is guessed;
- performer: the TID 1002 observer context (:func:`observer_references`): the person observer, referenced by the
  SMART ``fhirUser`` a manifest made here records as its login name, else by name only; then the device observer,
  identified by its Device Observer UID;
- code (1..1; example binding CID 7010 "Key Object Selection Document Title"): the ConceptNameCodeSequence title,
  with the coding scheme designator mapped to its FHIR system (DCM, SCT, LN); another scheme gives text only;
- studyUid / seriesUid / instance[uid, sopClass, subset]: the group's study, series and instances; ``subset``
  holds the selected frame numbers of a multi-frame instance (R5 ImagingSelection.instance.subset);
- derivedFrom: ``ImagingStudy/<StudyInstanceUID>`` (our ImagingStudy ids are Study UIDs); endpoint: the one WADO-RS
  Endpoint, from which a viewer retrieves the instances;
- the Key Object Description (TID 2010 TEXT 113012): the extension :data:`KEY_OBJECT_DESCRIPTION_URL`
  (valueString), so a write path can read it back, and the generated narrative.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta, tzinfo
from html import escape
from typing import Any

from ..dicom import dicom_json as dj
from ..dicom.kos import Code, KeyObjectSelection, PersonName, SeriesSelection
from ..dicom.terminology import DCM_SYSTEM, SNOMED_SYSTEM
from ..fhir import selection_ids
from . import names
from .imaging_study import DICOM_UID_SYSTEM, MappingContext, subject_reference
from .narrative import XHTML

# Where the Key Object Description text travels (valueString); the write path reads it back from here.
KEY_OBJECT_DESCRIPTION_URL = "urn:x-imaging-facade:key-object-description"

# Coding Scheme Designators (PS3.16 Table 8-1) → FHIR code system URIs (terminologies.html / DICOM PS3.16
# "HL7 FHIR" column). SRT (SNOMED RT-style ids) is deliberately absent: its codes are not SNOMED CT concept ids.
CODING_SCHEMES = {
    "DCM": DCM_SYSTEM,
    "SCT": SNOMED_SYSTEM,
    "LN": "http://loinc.org",
}

# When a KOS lacks its title (Type 1, so broken data), code 1..1 still needs a value; text only, nothing invented.
UNTITLED = "Key Object Selection"

_SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
# PS3.3 C.12.1.1.8: TimezoneOffsetFromUTC lies within -12:00..+14:00; anything else is ignored, as app.fhir.dates does.
_MIN_OFFSET, _MAX_OFFSET = timedelta(hours=-12), timedelta(hours=14)


def imaging_selections(kos: KeyObjectSelection, ctx: MappingContext) -> list[dict[str, Any]]:
    """One R5 ImagingSelection per (study, series) group of the KOS references; [] for a rejection note."""
    if kos.is_rejection:
        return []
    return [_selection(kos, k, group, ctx) for k, group in enumerate(kos.series())]


def issued_instant(kos: KeyObjectSelection, zone: tzinfo | None) -> str | None:
    """ImagingSelection.issued: ContentDate/ContentTime as an R5 ``instant`` (datatypes.html#instant: seconds and
    a zone are required), or None when the KOS has neither a usable TimezoneOffsetFromUTC nor a PACS zone."""
    moment = kos.issued
    if moment is None:
        return None
    offset = moment.utcoffset()
    if offset is not None and not _MIN_OFFSET <= offset <= _MAX_OFFSET:
        moment = moment.replace(tzinfo=None)  # an impossible offset: as if the KOS had none
        offset = None
    if offset is None:
        if zone is None:
            return None
        moment = moment.replace(tzinfo=zone)  # the PACS's IANA zone: DST-correct for that date
        offset = moment.utcoffset()
    # An instant's offset is ±hh:mm up to 14:00; historical zone offsets with seconds (LMT) cannot be written.
    if offset is None or offset % timedelta(minutes=1) or abs(offset) > _MAX_OFFSET:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")


# -- the parts every group shares -------------------------------------------------------------------------------


def _common(kos: KeyObjectSelection, ctx: MappingContext) -> dict[str, Any]:
    """Identifier, status, subject, issued, performer and code: the same in every group (built afresh for each
    resource, so no two resources share a mutable part)."""
    out: dict[str, Any] = {
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + kos.sop_instance_uid}],
        "status": "available",
        "subject": subject_reference(patient_row(kos), ctx),
    }
    issued = issued_instant(kos, ctx.zone)
    if issued:
        out["issued"] = issued
    performers = _performers(kos)
    if performers:
        out["performer"] = performers
    out["code"] = _code(kos.title)
    return out


def patient_row(kos: KeyObjectSelection) -> dj.Dataset:
    """The KOS's Patient module as a DICOM JSON row, the shape subject_reference reads."""
    row: dj.Dataset = {}
    if kos.patient_id:
        row[dj.PATIENT_ID] = {"vr": "LO", "Value": [kos.patient_id]}
    if kos.issuer_of_patient_id:
        row[dj.ISSUER_OF_PATIENT_ID] = {"vr": "LO", "Value": [kos.issuer_of_patient_id]}
    pn = person_name_json(kos.patient_name)
    if pn:
        row[dj.PATIENT_NAME] = {"vr": "PN", "Value": [pn]}
    return row


def person_name_json(name: PersonName | None) -> dict[str, str] | None:
    if name is None:
        return None
    groups = {"Alphabetic": name.alphabetic, "Ideographic": name.ideographic, "Phonetic": name.phonetic}
    return {k: v for k, v in groups.items() if v} or None


def _performers(kos: KeyObjectSelection) -> list[dict[str, Any]]:
    return [{"actor": ref} for ref in observer_references(kos)]


# SMART's fhirUser may be a Patient, Practitioner, PractitionerRole, RelatedPerson or Person (App Launch, "fhirUser");
# R4 DocumentReference.author and R5 ImagingSelection.performer.actor both allow all of them but Person, which then
# shows as a name only. The reference is kept as the token gave it: an absolute URL names the EHR's resource.
_AUTHOR_REFERENCE = re.compile(
    r"(?:https?://\S+/)?(?:Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}", re.ASCII
)


def observer_references(kos: KeyObjectSelection) -> list[dict[str, Any]]:
    """The TID 1002 observers as References: the person (its name; its Person Observer's Login Name as the
    reference when that is a FHIR reference, as in a manifest made through this facade with a SMART ``fhirUser``),
    then the device (``identifier`` its Device Observer UID as ``urn:dicom:uid``, the system R5 ImagingStudy
    uses for DICOM UIDs; display its name). Each has a ``display``, which the narratives show."""
    out: list[dict[str, Any]] = []
    person = names.display(person_name_json(kos.observer_name))
    login = kos.observer_login if kos.observer_login and _AUTHOR_REFERENCE.fullmatch(kos.observer_login) else None
    if person or login:
        ref: dict[str, Any] = {"reference": login} if login else {}
        out.append(ref | {"display": person or login})
    uid = kos.device_observer_uid
    if kos.device_observer_name or uid:
        device: dict[str, Any] = {"type": "Device"}
        if uid:
            device["identifier"] = {"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + uid}
        out.append(device | {"display": kos.device_observer_name or f"Device {uid}"})
    return out


def _code(title: Code | None) -> dict[str, Any]:
    """The document title (CID 7010) as a CodeableConcept."""
    if title is None:
        return {"text": UNTITLED}
    system = CODING_SCHEMES.get(title.scheme or "")
    if system is None:  # an unknown or private scheme: a Coding.system cannot be made up
        return {"text": title.meaning or title.value}
    coding = {"system": system, "code": title.value}
    if title.meaning:
        coding["display"] = title.meaning
    return {"coding": [coding]}


# -- one group ----------------------------------------------------------------------------------------------------


def _selection(kos: KeyObjectSelection, k: int, group: SeriesSelection, ctx: MappingContext) -> dict[str, Any]:
    common = _common(kos, ctx)
    description = _printable(kos.description)
    res: dict[str, Any] = {"resourceType": "ImagingSelection", "id": selection_ids.encode(kos.sop_instance_uid, k)}
    res["text"] = _narrative(description, group, common)
    if description:
        res["extension"] = [{"url": KEY_OBJECT_DESCRIPTION_URL, "valueString": description}]
    res |= common
    res["studyUid"] = group.study_uid
    res["derivedFrom"] = [{"reference": f"ImagingStudy/{group.study_uid}"}]
    res["endpoint"] = [{"reference": f"Endpoint/{ctx.endpoint_id}"}]
    res["seriesUid"] = group.series_uid
    res["instance"] = [_instance(ref.sop_instance_uid, ref.sop_class_uid, ref.frames) for ref in group.instances]
    return res


def _instance(uid: str, sop_class: str | None, frames: tuple[int, ...]) -> dict[str, Any]:
    inst: dict[str, Any] = {"uid": uid}
    if sop_class:  # 0..1 in R5 ImagingSelection: left out rather than invented
        inst["sopClass"] = {"system": _SOP_CLASS_SYSTEM, "code": "urn:oid:" + sop_class}
    if frames:
        inst["subset"] = [str(f) for f in frames]
    return inst


def _printable(text: str | None) -> str | None:
    """A DICOM UT/TEXT value may hold control characters (FF, ESC of ISO 2022) that neither a FHIR string
    (datatypes.html#string) nor XHTML can carry: each becomes a space; tab, CR and LF stay."""
    if text is None:
        return None
    return _CONTROL.sub(" ", text).strip() or None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _narrative(description: str | None, group: SeriesSelection, common: dict[str, Any]) -> dict[str, str]:
    """Generated narrative (R5 narrative.html: status generated, an escaped XHTML div): title and date, patient,
    observer, the Key Object Description, and what this resource selects."""
    code = common["code"]
    title = (code["coding"][0].get("display") or code["coding"][0]["code"]) if "coding" in code else code["text"]
    head = " · ".join(escape(part) for part in (title, common.get("issued", "")) if part)
    lines = [f"<p><b>Key images</b> {head}</p>"]
    subject = common["subject"]
    who = escape(subject.get("display", "")) + (
        f" ({escape(subject['identifier']['value'])})" if "identifier" in subject else ""
    )
    if who.strip():
        lines.append(f"<p>Patient: {who}</p>")
    observers = ", ".join(escape(p["actor"]["display"]) for p in common.get("performer", []))
    if observers:
        lines.append(f"<p>Selected by: {observers}</p>")
    if description:
        lines.append(f"<p>{escape(description)}</p>")
    count = len(group.instances)
    frames = sum(len(ref.frames) for ref in group.instances)
    what = f"{count} instance{'s' if count != 1 else ''}" + (f" ({frames} frames selected)" if frames else "")
    lines.append(f"<p>{what} of series {escape(group.series_uid)} in study {escape(group.study_uid)}</p>")
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{"".join(lines)}</div>'}
