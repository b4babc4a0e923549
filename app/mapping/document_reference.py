"""A KOS manifest → the two IHE RAD MADO DocumentReferences and the FHIR ``document`` Bundle (pure; R4;
shared/docs/fhir-dicom.md §2.4, https://profiles.ihe.net/RAD/MADO).

MADO distributes an imaging manifest through ITI MHD in two forms, each indexed by its own DocumentReference and
linked to the other with ``relatesTo`` code ``transforms``:

- the DICOM form (profile ``MadoDicomKosDocumentReference``): the KOS itself (``application/dicom``, format
  DCMUID 1.2.840.10008.5.1.4.1.1.88.59), fetched with WADO-RS from where the KOS is stored;
- the FHIR form (profile ``MadoFhirDocumentReference``): a FHIR ``document`` Bundle (profile ``MadoFhirBundle``,
  format ``urn:ihe:rad:MADO:fhir-manifest:2026``), made here from the KOS on each read of ``Bundle/{id}``.

Both carry the KOS SOP Instance UID (the canonical one of a KOS stored as one copy per study, PS3.3 C.17.6.2.1) as
``masterIdentifier`` and ``identifier`` (``urn:dicom:uid`` / ``urn:oid:<uid>``, MADO invariant mado-docref-1).
Ids need no database: the DICOM form's id is that UID itself (a UID fits the FHIR id type, at most 64 digits and
dots), the FHIR form's id (also the Bundle's) is the base-62 token of app.fhir.selection_ids with ``-fhir``.

DocumentReference element by element (R4 documentreference.html, MADO CommonMhdDocumentReferenceFields):

- status ``current``; type and category LOINC 18748-4 "Diagnostic imaging study" (MADO's defaults);
- subject: ``Patient/<id>`` as ImagingStudy.subject; date: the KOS ContentDate/ContentTime as an instant, only
  with a known zone (app.mapping.imaging_selection.issued_instant), as ImagingStudy.started;
- author: the TID 1002 observers: the person (by the ``fhirUser`` a manifest made here records, else by name)
  and the device (by its Device Observer UID), as ImagingSelection.performer;
- description: the CID 7010 title and the Key Object Description;
- content.attachment: contentType, url, title, creation (the KOS instant); content.format as above;
- context.period.start: the ``started`` of the study the KOS is stored in (the same value ImagingStudy shows);
  context.related: every referenced study's UID (type DCM 110180) and accession number (types ACSN and DCM
  121022); context.practiceSetting: SNOMED 394914008 Radiology;
- the R5 cross-version extensions MADO names: DocumentReference.modality (the selected series' modalities) and
  DocumentReference.bodySite (their BodyPartExamined, a CodeableReference as its ``concept`` sub-extension).

The Bundle itself is app.mapping.manifest_bundle.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from html import escape
from typing import Any

from ..dicom import dicom_json as dj
from ..dicom.kos import KOS_SOP_CLASS_UID, KeyObjectSelection
from ..dicom.terminology import ACSN_TYPE, BODY_PARTS, DCM_SYSTEM, NON_ACQUISITION_MODALITIES, SNOMED_SYSTEM
from ..fhir import selection_ids
from ..fhir.dates import dicom_interval
from .imaging_selection import CODING_SCHEMES, UNTITLED, issued_instant, observer_references, patient_row
from .imaging_study import DICOM_UID_SYSTEM, MappingContext, subject_reference
from .narrative import XHTML

Resource = dict[str, Any]

MADO = "https://profiles.ihe.net/RAD/MADO"
KOS_PROFILE = f"{MADO}/StructureDefinition/MadoDicomKosDocumentReference"
FHIR_PROFILE = f"{MADO}/StructureDefinition/MadoFhirDocumentReference"
BUNDLE_PROFILE = f"{MADO}/StructureDefinition/MadoFhirBundle"
NUMBER_OF_FRAMES_URL = f"{MADO}/StructureDefinition/MadoNumberOfFrames"
# The frames a KOS selects of a multi-frame instance (ReferencedFrameNumber): R4 ImagingStudy has no element for
# them (R5 ImagingSelection.instance.subset does), so they travel in this extension, comma-separated.
SELECTED_FRAMES_URL = "urn:x-imaging-facade:selected-frames"
MODALITY_URL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DocumentReference.modality"
BODY_SITE_URL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DocumentReference.bodySite"

DCMUID_SYSTEM = "http://dicom.nema.org/resources/ontology/DCMUID"
KOS_FORMAT = {"system": DCMUID_SYSTEM, "code": KOS_SOP_CLASS_UID, "display": "Key Object Selection Document"}
IHE_FORMAT_SYSTEM = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
FHIR_FORMAT = {"system": IHE_FORMAT_SYSTEM, "code": "urn:ihe:rad:MADO:fhir-manifest:2026"}
LOINC = "http://loinc.org"
IMAGING_STUDY_TYPE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": SNOMED_SYSTEM, "code": "394914008", "display": "Radiology"}
STUDY_UID_TYPE = {"system": DCM_SYSTEM, "code": "110180", "display": "Study Instance UID"}
ACCESSION_TYPE = {"system": DCM_SYSTEM, "code": "121022", "display": "Accession Number"}
CREATOR_TYPE = {"system": f"{MADO}/CodeSystem/MadoDeviceType", "code": "mado-creator", "display": "MADO Creator"}

_FHIR_SUFFIX = "-fhir"
_UID_ID = re.compile(r"[0-9.]{1,64}", re.ASCII)
UUID_NAMESPACE = uuid.UUID("7a0f3c64-1f3e-4c2a-9a55-4d0f8b7c2e11")  # this facade's uuid5 namespace


@dataclass(frozen=True)
class DocumentContext:
    """What a manifest's documents point at besides the KOS: the FHIR base the client used (the FHIR form's
    Bundle URL), the WADO-RS address (what the studies' Endpoint says), and the facade as the creating Device."""

    mapping: MappingContext
    base: str
    wado: str
    requires_token: bool = False
    software_version: str = ""


@dataclass(frozen=True)
class Manifest:
    """One KOS manifest and the PACS rows it is shown with.

    ``kos``: the document as stored (``sop_instance_uid`` the copy that is fetched); ``uid``: the manifest's
    UID, the canonical one of its copies. ``studies``: study-level QIDO rows by Study Instance UID (the
    referenced studies and the KOS's own); ``instances``: instance-level rows of the selected instances by SOP
    Instance UID. A row the PACS no longer has is simply missing: the document still lists what the KOS selects.
    """

    kos: KeyObjectSelection
    uid: str
    studies: Mapping[str, dj.Dataset]
    instances: Mapping[str, dj.Dataset]


# -- ids --------------------------------------------------------------------------------------------------------


def kos_document_id(kos_uid: str) -> str:
    """The DICOM form's id: the KOS UID (digits and dots, at most 64: a FHIR id); broken data gets a hashed id."""
    return kos_uid if _UID_ID.fullmatch(kos_uid) else selection_ids.encode(kos_uid, 0)


def fhir_document_id(kos_uid: str) -> str:
    """The FHIR form's id, which is also its Bundle's: ``<base62 of the UID>-fhir`` (at most 43 characters)."""
    return selection_ids.encode(kos_uid, 0).rpartition("-")[0] + _FHIR_SUFFIX


def decode_document_id(rid: str) -> tuple[str, str] | None:
    """``(kos_uid, "dicom" | "fhir")`` of an id made here; None for anything else (hashed ids included)."""
    if _UID_ID.fullmatch(rid):
        return rid, "dicom"
    if rid.endswith(_FHIR_SUFFIX):
        decoded = selection_ids.decode(rid.removesuffix(_FHIR_SUFFIX) + "-0")
        if decoded is not None and fhir_document_id(decoded[0]) == rid:
            return decoded[0], "fhir"
    return None


def kos_url(wado: str, kos: KeyObjectSelection) -> str:
    """WADO-RS URL of the stored KOS instance (PS3.18 §10.4.1.1.3: /studies/{s}/series/{se}/instances/{i})."""
    return f"{wado.rstrip('/')}/studies/{kos.study_uid}/series/{kos.series_uid}/instances/{kos.sop_instance_uid}"


# -- the two DocumentReferences ---------------------------------------------------------------------------------


def document_references(m: Manifest, ctx: DocumentContext) -> list[Resource]:
    """[DICOM form, FHIR form] of one manifest (an IOCM rejection note is no manifest: [])."""
    if m.kos.is_rejection:
        return []
    kos_id, fhir_id = kos_document_id(m.uid), fhir_document_id(m.uid)
    dicom = _document(m, ctx, kos_id, KOS_PROFILE, fhir_id)
    dicom["content"] = [
        {
            "attachment": _attachment(m, "application/dicom", kos_url(ctx.wado, m.kos), ctx.mapping.zone),
            "format": dict(KOS_FORMAT),
        }
    ]
    fhir = _document(m, ctx, fhir_id, FHIR_PROFILE, kos_id)
    fhir["content"] = [
        {
            "attachment": _attachment(m, "application/fhir+json", f"{ctx.base}/Bundle/{fhir_id}", ctx.mapping.zone),
            "format": dict(FHIR_FORMAT),
        }
    ]
    return [_ordered(dicom), _ordered(fhir)]


_ORDER = (
    "resourceType",
    "id",
    "meta",
    "text",
    "extension",
    "masterIdentifier",
    "identifier",
    "status",
    "type",
    "category",
    "subject",
    "date",
    "author",
    "relatesTo",
    "description",
    "content",
    "context",
)


def _ordered(res: Resource) -> Resource:
    return {k: res[k] for k in _ORDER if k in res}


def _document(m: Manifest, ctx: DocumentContext, rid: str, profile: str, twin: str) -> Resource:
    kos = m.kos
    res: Resource = {"resourceType": "DocumentReference", "id": rid, "meta": {"profile": [profile]}}
    extensions: list[Resource] = [{"url": MODALITY_URL, "valueCodeableConcept": {"coding": [c]}} for c in modalities(m)]
    extensions += [
        {"url": BODY_SITE_URL, "extension": [{"url": "concept", "valueCodeableConcept": s}]} for s in body_sites(m)
    ]
    if extensions:
        res["extension"] = extensions
    res["masterIdentifier"] = {"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + m.uid}
    copies = sorted({m.uid, kos.sop_instance_uid, *kos.identical})
    res["identifier"] = [{"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + uid} for uid in copies]
    res["status"] = "current"
    res["type"] = {"coding": [dict(IMAGING_STUDY_TYPE)]}
    res["category"] = [{"coding": [dict(IMAGING_STUDY_TYPE)]}]
    res["subject"] = subject_reference(patient_row(kos), ctx.mapping)
    date = issued_instant(kos, ctx.mapping.zone)
    if date:
        res["date"] = date
    authors = authors_of(kos)
    if authors:
        res["author"] = authors
    res["relatesTo"] = [{"code": "transforms", "target": {"reference": f"DocumentReference/{twin}"}}]
    res["description"] = description(kos)
    res["text"] = _text(res, m)
    res["context"] = _context(m, ctx)
    return res


def _attachment(m: Manifest, content_type: str, url: str, zone: tzinfo | None) -> Resource:
    """contentType, url, title (the CID 7010 title) and creation (the KOS content date/time, when an instant)."""
    out: Resource = {"contentType": content_type, "url": url, "title": title_text(m.kos)}
    created = issued_instant(m.kos, zone)
    if created:
        out["creation"] = created
    return out


def _context(m: Manifest, ctx: DocumentContext) -> Resource:
    out: Resource = {}
    home = m.studies.get(m.kos.study_uid or "")
    if home is not None:
        _, started = dicom_interval(
            dj.text(home, dj.STUDY_DATE),
            dj.text(home, dj.STUDY_TIME),
            dj.text(home, dj.TIMEZONE_OFFSET),
            ctx.mapping.zone,
        )
        if started:
            out["period"] = {"start": started}
    out["practiceSetting"] = {"coding": [dict(RADIOLOGY)]}
    related: list[Resource] = []
    for study_uid in referenced_studies(m.kos):
        related.append(
            {
                "identifier": {
                    "type": {"coding": [dict(STUDY_UID_TYPE)]},
                    "system": DICOM_UID_SYSTEM,
                    "value": "urn:oid:" + study_uid,
                }
            }
        )
        accession = dj.text(m.studies.get(study_uid, {}), dj.ACCESSION)
        if accession:
            ident: Resource = {"type": {"coding": [dict(ACSN_TYPE), dict(ACCESSION_TYPE)]}}
            if ctx.mapping.accession_system:
                ident["system"] = ctx.mapping.accession_system
            ident["value"] = accession
            related.append({"identifier": ident})
    out["related"] = related
    return out


def referenced_studies(kos: KeyObjectSelection) -> list[str]:
    """The Study Instance UIDs the KOS references, in document order."""
    return list(dict.fromkeys(ref.study_uid for ref in kos.references))


def accessions(m: Manifest) -> list[str]:
    """The accession numbers of the referenced studies (those the PACS still has)."""
    return [a for s in referenced_studies(m.kos) if (a := dj.text(m.studies.get(s, {}), dj.ACCESSION))]


def modalities(m: Manifest) -> list[Resource]:
    """DCM codings of the selected series' modalities (acquisition modalities first seen first)."""
    codes = [dj.text(m.instances.get(ref.sop_instance_uid, {}), dj.MODALITY) for ref in m.kos.references]
    kept = [c for c in dict.fromkeys(codes) if c and c not in NON_ACQUISITION_MODALITIES]
    return [{"system": DCM_SYSTEM, "code": c} for c in kept]


def body_sites(m: Manifest) -> list[Resource]:
    """The selected series' BodyPartExamined as CodeableConcepts (SNOMED CT by PS3.16 Annex L, else text)."""
    terms = [dj.text(m.instances.get(ref.sop_instance_uid, {}), dj.BODY_PART) for ref in m.kos.references]
    out = []
    for term in dict.fromkeys(t for t in terms if t):
        site = BODY_PARTS.get(term.upper())
        if site is not None:
            out.append({"coding": [{"system": SNOMED_SYSTEM, "code": site[0], "display": site[1]}], "text": term})
        else:
            out.append({"text": term})
    return out


def body_part_terms(m: Manifest) -> list[str]:
    return [t for ref in m.kos.references if (t := dj.text(m.instances.get(ref.sop_instance_uid, {}), dj.BODY_PART))]


def title_text(kos: KeyObjectSelection) -> str:
    """The CID 7010 title as text (its meaning, else its code)."""
    if kos.title is None:
        return UNTITLED
    return kos.title.meaning or kos.title.value or UNTITLED


def description(kos: KeyObjectSelection) -> str:
    """DocumentReference.description: the title and the Key Object Description (TID 2010 TEXT 113012)."""
    text = printable(kos.description)
    return f"{title_text(kos)}: {text}" if text else title_text(kos)


def printable(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = "".join(" " if (ord(c) < 32 and c not in "\t\r\n") else c for c in text).strip()
    return cleaned or None


def title_coding(kos: KeyObjectSelection) -> Resource:
    """The title as a CodeableConcept (CID 7010; an unknown scheme gives text only)."""
    title = kos.title
    if title is None:
        return {"text": UNTITLED}
    system = CODING_SCHEMES.get(title.scheme or "")
    if system is None:
        return {"text": title_text(kos)}
    coding = {"system": system, "code": title.value}
    if title.meaning:
        coding["display"] = title.meaning
    return {"coding": [coding]}


def authors_of(kos: KeyObjectSelection) -> list[Resource]:
    """DocumentReference.author: the KOS's TID 1002 observers (app.mapping.imaging_selection.observer_references)."""
    return observer_references(kos)


def _text(res: Resource, m: Manifest) -> dict[str, str]:
    """Generated narrative: the title, date, patient, observers, description and what is selected."""
    lines = [
        f"<p><b>{escape(res['description'])}</b>" + (f" · {escape(res['date'])}" if "date" in res else "") + "</p>"
    ]
    subject = res["subject"]
    if "display" in subject:
        lines.append(f"<p>Patient: {escape(subject['display'])}</p>")
    if "author" in res:
        lines.append(f"<p>Selected by: {escape(', '.join(a['display'] for a in res['author']))}</p>")
    n, series = len(m.kos.references), len(m.kos.series())
    lines.append(f"<p>{n} instance{'s' if n != 1 else ''} of {series} series</p>")
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{"".join(lines)}</div>'}
