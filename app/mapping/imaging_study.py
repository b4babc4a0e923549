"""DICOM JSON study row + instance rows → FHIR R4 ImagingStudy (pure; shared/docs/fhir-dicom.md §1.2-1.4).

Inputs are QIDO answers: one study-level row (with StudyDescription, IssuerOfPatientID and TimezoneOffsetFromUTC
requested via includefield) and the instance-level rows of that study, which carry the series attributes too
(PS3.18 Table 10.6.3-4: instance results include the series' required attributes). No instance rows: the study
is rendered without series (e.g. when the caller did not ask for them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from ..dicom import dicom_json as dj
from ..dicom.terminology import ACSN_TYPE, BODY_PARTS, DCM_SYSTEM, LATERALITY, NON_ACQUISITION_MODALITIES, SNOMED_SYSTEM
from ..fhir import patient_ids
from ..fhir.dates import dicom_interval
from ..fhir.subsetting import SUBSETTED
from . import names, narrative
from .endpoint import CONTAINED_ENDPOINT_ID, wado_endpoint

DICOM_UID_SYSTEM = "urn:dicom:uid"


@dataclass(frozen=True)
class MappingContext:
    endpoint_id: str = "wado-rs"
    zone: tzinfo | None = None
    accession_system: str | None = None
    patient_system: str = "urn:x-imaging-facade:patient-id"
    issuer_prefix: str = "urn:x-imaging-facade:issuer:"
    issuer_systems: Mapping[str, str] = field(default_factory=dict)
    # Capability mode (WADO-RS gateway, app.security.capability): Study UID → the address of that study's own
    # Endpoint, with its capability; the use case computes it per request (mapping signs nothing). None → the
    # address is left out: the study carries no Endpoint at all (e.g. a token that may search but not read).
    # Unset: every study references the one shared Endpoint/<endpoint_id>.
    study_endpoint: Callable[[str], str | None] | None = None


def imaging_study(
    study: dj.Dataset,
    instances: list[dj.Dataset] | None,
    ctx: MappingContext,
    *,
    series_rows: list[dj.Dataset] | None = None,
) -> dict[str, Any]:
    """``series_rows`` instead of ``instances``: the ``_summary=true`` form, series without instance level."""
    uid = dj.text(study, dj.STUDY_UID)
    assert uid, "callers drop rows without a StudyInstanceUID"
    offset = dj.text(study, dj.TIMEZONE_OFFSET)
    endpoint = [{"reference": f"Endpoint/{ctx.endpoint_id}"}]
    res: dict[str, Any] = {"resourceType": "ImagingStudy", "id": uid}
    if ctx.study_endpoint is not None:
        # SMART Imaging Access: a capability URL is specific to this study, so the Endpoint is contained
        # (R4 references.html#contained) and the study and every series point at it with a local reference.
        address = ctx.study_endpoint(uid)
        endpoint = [{"reference": "#" + CONTAINED_ENDPOINT_ID}] if address else []
        if address:
            res["contained"] = [wado_endpoint(CONTAINED_ENDPOINT_ID, address, requires_token=False)]
    res |= {
        "identifier": _identifiers(uid, study, ctx),
        "status": "available",
    }
    modalities = [m for m in dj.texts(study, dj.MODALITIES_IN_STUDY) if m not in NON_ACQUISITION_MODALITIES]
    if modalities:
        res["modality"] = [{"system": DCM_SYSTEM, "code": m} for m in modalities]
    res["subject"] = subject_reference(study, ctx)
    _, started = dicom_interval(dj.text(study, dj.STUDY_DATE), dj.text(study, dj.STUDY_TIME), offset, ctx.zone)
    if started:
        res["started"] = started
    referrer = names.display(dj.person_name(study, dj.REFERRING_PHYSICIAN))
    if referrer:
        res["referrer"] = {"display": referrer}
    if endpoint:
        res["endpoint"] = endpoint
    if series_rows is not None:
        # search.html#summary: Σ elements only; the resource SHALL say it is incomplete (SUBSETTED).
        res["meta"] = {"tag": [dict(SUBSETTED)]}
    # No instance rows (not asked for, or none came back): the study-level counts of the PACS stand.
    series = _series(instances, offset, ctx, endpoint) if instances else None
    n_series = len(series) if series is not None else dj.integer(study, dj.NUMBER_OF_SERIES)
    n_instances = (
        sum(s["numberOfInstances"] for s in series)
        if series is not None
        else dj.integer(study, dj.NUMBER_OF_STUDY_INSTANCES)
    )
    if series_rows:
        series = _summary_series(series_rows, offset, ctx, endpoint)
    if n_series is not None and n_series >= 0:  # unsignedInt: a negative count from the PACS is dropped
        res["numberOfSeries"] = n_series
    if n_instances is not None and n_instances >= 0:
        res["numberOfInstances"] = n_instances
    description = dj.text(study, dj.STUDY_DESCRIPTION)
    if description:
        res["description"] = description
    if series:
        res["series"] = series
    if series_rows is None:  # Resource.text is not a summary element (search.html#summary)
        res["text"] = narrative.imaging_study_text(res)
    return res


def subject_reference(row: dj.Dataset, ctx: MappingContext) -> dict[str, Any]:
    pid = dj.text(row, dj.PATIENT_ID) or ""
    issuer = dj.text(row, dj.ISSUER_OF_PATIENT_ID)
    ref: dict[str, Any] = {"reference": f"Patient/{patient_ids.encode(pid, issuer)}"}
    if pid:
        system = patient_ids.system_for(
            issuer, default=ctx.patient_system, prefix=ctx.issuer_prefix, table=ctx.issuer_systems
        )
        ref["identifier"] = {"system": system, "value": pid}
    display = names.display(dj.person_name(row, dj.PATIENT_NAME))
    if display:
        ref["display"] = display
    return ref


def _identifiers(uid: str, study: dj.Dataset, ctx: MappingContext) -> list[dict[str, Any]]:
    # R4 ImagingStudy: "there shall be one DICOM Study UID identifier", as urn:dicom:uid / urn:oid:<uid>.
    out: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + uid}]
    accession = dj.text(study, dj.ACCESSION)
    if accession:
        ident: dict[str, Any] = {"use": "usual", "type": {"coding": [dict(ACSN_TYPE)]}}
        if ctx.accession_system:
            ident["system"] = ctx.accession_system
        ident["value"] = accession
        out.append(ident)
    return out


def _series(
    instances: list[dj.Dataset], offset: str | None, ctx: MappingContext, endpoint: list[dict[str, str]]
) -> list[dict[str, Any]]:
    by_series: dict[str, list[dj.Dataset]] = {}
    for row in instances:
        series_uid = dj.text(row, dj.SERIES_UID)
        if series_uid and dj.text(row, dj.SOP_INSTANCE_UID):
            by_series.setdefault(series_uid, []).append(row)
    out = [_one_series(uid, rows[0], rows, offset, ctx, endpoint) for uid, rows in by_series.items()]
    out.sort(key=lambda s: (s.get("number") is None, s.get("number", 0), s["uid"]))
    return out


def _summary_series(
    series_rows: list[dj.Dataset], offset: str | None, ctx: MappingContext, endpoint: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Series from series-level QIDO rows (``_summary=true``: no instance level, R4 search.html#summary)."""
    by_uid = {uid: row for row in series_rows if (uid := dj.text(row, dj.SERIES_UID))}
    out = [_one_series(uid, row, None, offset, ctx, endpoint) for uid, row in by_uid.items()]
    out.sort(key=lambda s: (s.get("number") is None, s.get("number", 0), s["uid"]))
    return out


def _one_series(
    uid: str,
    head: dj.Dataset,
    rows: list[dj.Dataset] | None,
    offset: str | None,
    ctx: MappingContext,
    endpoint: list[dict[str, str]],
) -> dict[str, Any]:
    """One series from its first row; ``rows`` are its instance rows, None for a series-level row."""
    series: dict[str, Any] = {"uid": uid}
    number = dj.integer(head, dj.SERIES_NUMBER)
    if number is not None and number >= 0:  # R4 unsignedInt
        series["number"] = number
    # series.modality is 1..1: a series without Modality is broken data; "OT" (Other) keeps the resource valid.
    series["modality"] = {"system": DCM_SYSTEM, "code": dj.text(head, dj.MODALITY) or "OT"}
    description = dj.text(head, dj.SERIES_DESCRIPTION)
    if description:
        series["description"] = description
    count = len(rows) if rows is not None else dj.integer(head, dj.NUMBER_OF_SERIES_INSTANCES)
    if count is not None and count >= 0:
        series["numberOfInstances"] = count
    if endpoint:
        series["endpoint"] = endpoint
    body = dj.text(head, dj.BODY_PART)
    if body and body.upper() in BODY_PARTS:
        code, meaning = BODY_PARTS[body.upper()]
        series["bodySite"] = {"system": SNOMED_SYSTEM, "code": code, "display": meaning}
    elif body:
        series["bodySite"] = {"display": body}  # no Annex L entry: keep the term rather than invent a code
    laterality = dj.text(head, dj.LATERALITY)
    if laterality in LATERALITY:
        code, meaning = LATERALITY[laterality]
        series["laterality"] = {"system": SNOMED_SYSTEM, "code": code, "display": meaning}
    _, started = dicom_interval(dj.text(head, dj.SERIES_DATE), dj.text(head, dj.SERIES_TIME), offset, ctx.zone)
    if started:
        series["started"] = started
    if rows is not None:
        instances = [_instance(r) for r in rows]
        instances.sort(key=lambda i: (i.get("number") is None, i.get("number", 0), i["uid"]))
        series["instance"] = instances
    return series


def _instance(row: dj.Dataset) -> dict[str, Any]:
    inst: dict[str, Any] = {"uid": dj.text(row, dj.SOP_INSTANCE_UID)}
    sop_class = dj.text(row, dj.SOP_CLASS_UID)
    # sopClass is 1..1 in R4; a row without one is broken data, and "unknown" is not a UID: use the
    # UID of the Storage service class root so the Coding stays a valid urn:oid.
    inst["sopClass"] = {"system": "urn:ietf:rfc:3986", "code": "urn:oid:" + (sop_class or "1.2.840.10008.5.1.4")}
    number = dj.integer(row, dj.INSTANCE_NUMBER)
    if number is not None and number >= 0:
        inst["number"] = number
    title = dj.text(row, dj.CONTENT_LABEL) or dj.text(row, dj.DOCUMENT_TITLE)
    if not title and (image_type := dj.texts(row, dj.IMAGE_TYPE)):
        title = "\\".join(image_type)
    if title:
        inst["title"] = title
    return inst
