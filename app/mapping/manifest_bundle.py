"""The FHIR form of a KOS manifest: a ``document`` Bundle (R4 bundle.html#document; IHE RAD MADO MadoFhirBundle),
read at ``Bundle/{id}`` where the FHIR-form DocumentReference's attachment points (app.mapping.document_reference).

In this order: the Composition (title from the CID 7010 title, subject, date, authors, one section listing the
selected images), one ImagingStudy per referenced study holding exactly the selected series and instances, the
Patient, one WADO-RS Endpoint per selected series and the facade as the creating Device (MadoCreator). Resources made
for this document only have ``urn:uuid`` fullUrls derived from the KOS UID (uuid5), so a re-read gives the same
Bundle; the Patient is this server's own, under its URL. Pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from html import escape
from typing import Any

from ..dicom import dicom_json as dj
from ..dicom.kos import KeyObjectSelection, ReferencedInstance
from .document_reference import (
    BUNDLE_PROFILE,
    CREATOR_TYPE,
    IMAGING_STUDY_TYPE,
    MADO,
    NUMBER_OF_FRAMES_URL,
    SELECTED_FRAMES_URL,
    UUID_NAMESPACE,
    DocumentContext,
    Manifest,
    authors_of,
    fhir_document_id,
    printable,
    referenced_studies,
    title_coding,
    title_text,
)
from .endpoint import wado_endpoint
from .imaging_selection import issued_instant, patient_row
from .imaging_study import DICOM_UID_SYSTEM, MappingContext, imaging_study, subject_reference
from .narrative import XHTML
from .patient import patient

Resource = dict[str, Any]

# -- the FHIR document Bundle -----------------------------------------------------------------------------------


def manifest_bundle(m: Manifest, ctx: DocumentContext, *, now: str) -> Resource:
    """The FHIR form of the manifest: a ``document`` Bundle (R4 bundle.html#document, MADO MadoFhirBundle).
    ``now``: the assembly time, used as timestamp and Composition.date only when the KOS has no instant."""
    kos, mapping = m.kos, ctx.mapping
    issued = issued_instant(kos, mapping.zone) or now
    subject = subject_reference(patient_row(kos), mapping)
    device_url = _urn(m.uid, "device")
    groups = kos.series()
    endpoint_urls = {(g.study_uid, g.series_uid): _urn(m.uid, "endpoint", g.series_uid) for g in groups}

    studies: list[tuple[str, Resource]] = []
    for study_uid in referenced_studies(kos):
        refs = [r for r in kos.references if r.study_uid == study_uid]
        studies.append((_urn(m.uid, "study", study_uid), _study(m, study_uid, refs, mapping, endpoint_urls)))

    home = m.studies.get(kos.study_uid or "") or next(
        (row for s in referenced_studies(kos) if (row := m.studies.get(s)) is not None), None
    )
    person = patient(home if home is not None else patient_row(kos), mapping)
    patient_url = f"{ctx.base}/Patient/{person['id']}"

    composition: Resource = {"resourceType": "Composition", "text": _composition_text(m, subject, issued)}
    composition["identifier"] = {"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + m.uid}
    composition["status"] = "final"
    composition["type"] = {"coding": [dict(IMAGING_STUDY_TYPE)]}
    composition["category"] = [title_coding(kos)]
    composition["subject"] = subject
    composition["date"] = issued
    composition["author"] = [{"reference": device_url, "display": "Imaging FHIR facade"}, *authors_of(kos)]
    composition["title"] = title_text(kos)
    composition["event"] = [{"detail": [{"reference": url} for url, _ in studies]}]
    composition["section"] = [
        {
            "title": "Selected images",
            "code": title_coding(kos),
            "text": _section_text(kos),
            "entry": [{"reference": url} for url, _ in studies],
        }
    ]

    endpoints = []
    for g in groups:
        endpoint = wado_endpoint("x", ctx.wado, requires_token=ctx.requires_token)
        del endpoint["id"]
        endpoint["name"] = f"WADO-RS, series {g.series_uid}"[:250]
        endpoints.append((endpoint_urls[(g.study_uid, g.series_uid)], endpoint))

    device: Resource = {
        "resourceType": "Device",
        "meta": {"profile": [f"{MADO}/StructureDefinition/MadoCreator"]},
        "status": "active",
        "manufacturer": "imaging-fhir-facade",
        "deviceName": [{"name": "Imaging FHIR facade", "type": "user-friendly-name"}],
        "type": {"coding": [dict(CREATOR_TYPE)]},
    }
    if ctx.software_version:
        device["version"] = [{"value": ctx.software_version}]

    entries = [
        (_urn(m.uid, "composition"), composition),
        *studies,
        (patient_url, person),
        *endpoints,
        (device_url, device),
    ]
    return {
        "resourceType": "Bundle",
        "id": fhir_document_id(m.uid),
        "meta": {"profile": [BUNDLE_PROFILE]},
        "identifier": {"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + m.uid},
        "type": "document",
        "timestamp": issued,
        "entry": [{"fullUrl": url, "resource": res} for url, res in entries],
    }


def _urn(kos_uid: str, *part: str) -> str:
    return f"urn:uuid:{uuid.uuid5(UUID_NAMESPACE, '|'.join((kos_uid, *part)))}"


def _study(
    m: Manifest,
    study_uid: str,
    refs: list[ReferencedInstance],
    mapping: MappingContext,
    endpoint_urls: Mapping[tuple[str, str], str],
) -> Resource:
    """An ImagingStudy with exactly the selected series and instances, from the PACS's rows where it still has
    them and from the KOS's evidence where not (so the document always lists what the KOS selects)."""
    row = m.studies.get(study_uid) or {dj.STUDY_UID: {"vr": "UI", "Value": [study_uid]}, **patient_row(m.kos)}
    rows = [_instance_row(m.instances.get(ref.sop_instance_uid), ref) for ref in refs]
    study = imaging_study(row, rows, mapping)
    study.pop("id", None)
    study.pop("endpoint", None)
    by_uid = {ref.sop_instance_uid: ref for ref in refs}
    for series in study.get("series", []):
        series["endpoint"] = [{"reference": endpoint_urls[(study_uid, series["uid"])]}]
        for inst in series.get("instance", []):
            ref = by_uid[inst["uid"]]
            ext = []
            frames = dj.integer(m.instances.get(ref.sop_instance_uid, {}), dj.NUMBER_OF_FRAMES)
            if frames is not None and frames > 0:
                ext.append({"url": NUMBER_OF_FRAMES_URL, "valueInteger": frames})
            if ref.frames:
                ext.append({"url": SELECTED_FRAMES_URL, "valueString": ",".join(map(str, ref.frames))})
            if ext:
                inst["extension"] = ext
            if ref.sop_class_uid and inst["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4":
                inst["sopClass"]["code"] = "urn:oid:" + ref.sop_class_uid
    return {"resourceType": "ImagingStudy", "meta": {"profile": [f"{MADO}/StructureDefinition/MadoImagingStudy"]}} | {
        k: v for k, v in study.items() if k != "resourceType"
    }


def _instance_row(row: dj.Dataset | None, ref: ReferencedInstance) -> dj.Dataset:
    """The instance's QIDO row, or one made from the KOS evidence (study, series, instance, SOP class)."""
    if row is not None:
        return row
    made: dj.Dataset = {
        dj.STUDY_UID: {"vr": "UI", "Value": [ref.study_uid]},
        dj.SERIES_UID: {"vr": "UI", "Value": [ref.series_uid]},
        dj.SOP_INSTANCE_UID: {"vr": "UI", "Value": [ref.sop_instance_uid]},
    }
    if ref.sop_class_uid:
        made[dj.SOP_CLASS_UID] = {"vr": "UI", "Value": [ref.sop_class_uid]}
    return made


def _composition_text(m: Manifest, subject: Resource, issued: str) -> dict[str, str]:
    kos = m.kos
    lines = [f"<p><b>{escape(title_text(kos))}</b> · {escape(issued)}</p>"]
    if "display" in subject:
        lines.append(f"<p>Patient: {escape(subject['display'])}</p>")
    observers = ", ".join(a["display"] for a in authors_of(kos))
    if observers:
        lines.append(f"<p>Selected by: {escape(observers)}</p>")
    text = printable(kos.description)
    if text:
        lines.append(f"<p>{escape(text)}</p>")
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{"".join(lines)}</div>'}


def _section_text(kos: KeyObjectSelection) -> dict[str, str]:
    """The selected images, per series (MADO: a section's narrative lists what the manifest holds)."""
    items = []
    for g in kos.series():
        parts = []
        for ref in g.instances:
            frames = f" (frames {', '.join(map(str, ref.frames))})" if ref.frames else ""
            parts.append(f"<li>{escape(ref.sop_instance_uid)}{frames}</li>")
        items.append(f"<li>Series {escape(g.series_uid)} of study {escape(g.study_uid)}<ul>{''.join(parts)}</ul></li>")
    return {"status": "generated", "div": f'<div xmlns="{XHTML}"><ul>{"".join(items)}</ul></div>'}
