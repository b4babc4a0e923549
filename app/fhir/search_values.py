"""Search parameter values (pure): FHIR's token, reference, date and string syntax (search.html#escaping,
#token, #reference, #string), and the per-resource table of value parsers that app.fhir.search applies.

A value that is well formed but can never match (a foreign identifier system, an id that is not ours) parses to no
value; malformed values raise InvalidRequest (400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from ..dicom.terminology import DCM_SYSTEM, SNOMED_SYSTEM, body_parts_for_snomed
from ..errors import InvalidRequest
from . import patient_ids
from .dates import DateCriterion, parse_search_date

DICOM_UID_SYSTEM = "urn:dicom:uid"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
_CS_RE = re.compile(r"[A-Z0-9_]{1,16}")  # CS (PS3.5 6.2) less the space, which cannot be sent raw
# Longest value a matching DICOM attribute can hold (PS3.5 Table 6.2-1: LO 64 characters; AccessionNumber is SH,
# 16, but archives are lenient). A longer value cannot match, so it is never sent to the PACS.
MAX_VALUE = 64


@dataclass(frozen=True)
class Token:
    system: str | None  # None: the value had no "|"; "": it had an empty system
    code: str


@dataclass(frozen=True)
class PatientKey:
    patient_id: str
    issuer: str | None
    any_issuer: bool = False  # a bare identifier value: any issuer's PatientID of that value


@dataclass(frozen=True)
class EhrPatient:
    """A Patient id of the linked EHR (app.pacs.ehr), resolved to PatientKeys before planning."""

    id: str


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # R4 datatypes.html#id


@dataclass(frozen=True)
class SearchContext:
    """What parsing needs to know beyond the query: settings-derived, per request."""

    default_count: int
    max_count: int
    search_zone: tzinfo
    patient_system: str
    issuer_prefix: str
    issuer_systems: Mapping[str, str] = field(default_factory=dict)
    base_url: str = ""
    strict: bool = False
    endpoint_id: str = "wado-rs"
    ehr_base: str | None = None  # the linked EHR's FHIR base (app.pacs.ehr): ids not ours are the EHR's
    last_updated: bool = False  # the PACS says when a study changed (pacs_kind = orthanc): _lastUpdated is answered
    # why it is not (shown in the 400 OperationOutcome): which archive cannot say when its studies changed
    last_updated_refusal: str = "the PACS's DICOMweb answers carry no time of change"
    now: datetime | None = None  # when the search is made (_lastUpdated=ap...); None: the clock's


def split_or(value: str) -> list[str]:
    """Split on unescaped commas and undo search.html#escaping."""
    parts, buf, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            buf.append(ch + value[i + 1])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def _token(raw: str) -> Token:
    """``[system]|code`` with escapes; the first unescaped ``|`` separates."""
    i = 0
    while i < len(raw):
        if raw[i] == "\\":
            i += 2
            continue
        if raw[i] == "|":
            return Token(_unescape(raw[:i]), _unescape(raw[i + 1 :]))
        i += 1
    return Token(None, _unescape(raw))


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def is_fhir_id(text: str) -> bool:
    return _FHIR_ID.fullmatch(text) is not None


def is_uid(text: str) -> bool:
    """PS3.5 §9.1: digits and dots, no leading zeros in a component, at most 64 characters."""
    return len(text) <= 64 and _UID_RE.fullmatch(text) is not None


def _tokens(value: str) -> list[Token]:
    return [_token(v) for v in split_or(value)]


def _parse_id(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    return [t.code for t in _tokens(value) if t.system is None and is_uid(t.code)]


def _parse_identifier(name: str, modifier: str, value: str, ctx: SearchContext) -> list[Token]:
    """Study UID tokens become Token(DICOM_UID_SYSTEM, uid); others stay accession tokens."""
    out: list[Token] = []
    for t in _tokens(value):
        if t.code.startswith("urn:oid:") and t.system in (None, DICOM_UID_SYSTEM):
            if is_uid(t.code[8:]):
                out.append(Token(DICOM_UID_SYSTEM, t.code[8:]))
            continue
        if t.system == DICOM_UID_SYSTEM or not t.code or len(t.code) > MAX_VALUE:
            continue  # a DICOM UID system with a value that is not urn:oid:<uid> matches nothing
        out.append(t)
    return out


def _parse_patient(name: str, modifier: str, value: str, ctx: SearchContext) -> list[PatientKey | EhrPatient]:
    if modifier == "identifier":
        return list(_parse_patient_identifier(name, modifier, value, ctx))
    return _patient_refs(_local_ids(value, "Patient", ctx, also=ctx.ehr_base), ctx)


def _patient_refs(ids: list[str], ctx: SearchContext) -> list[PatientKey | EhrPatient]:
    """Our ids decode to PatientKeys; with an EHR linked, any other valid id is the EHR's."""
    out: list[PatientKey | EhrPatient] = []
    for rid in ids:
        pair = patient_ids.decode(rid)
        if pair is not None:
            out.append(PatientKey(*pair))
        elif ctx.ehr_base and _FHIR_ID.fullmatch(rid):
            out.append(EhrPatient(rid))
    return out


def _local_ids(value: str, resource_type: str, ctx: SearchContext, *, also: str | None = None) -> list[str]:
    """Ids of the references in a reference parameter that point at this server's ``resource_type``:
    ``Type/id``, a bare ``id``, or an absolute URL under the base the client used (search.html#reference), or
    under ``also`` (the linked EHR's base). A reference to another server or another type is dropped."""
    ids = []
    for ref in map(_unescape, split_or(value)):
        if "://" in ref:
            bases = [b.rstrip("/") + "/" for b in (ctx.base_url, also) if b]
            base = next((b for b in bases if ref.startswith(b)), None)
            if base is None:
                continue
            ref = ref[len(base) :]
        rtype, slash, rid = ref.rpartition("/")
        if not slash or rtype == resource_type:
            ids.append(rid)
    return ids


def _patient_by_identifier(t: Token, ctx: SearchContext) -> PatientKey | None:
    if not t.code or len(t.code) > MAX_VALUE:
        return None
    if t.system is None:
        return PatientKey(t.code, None, any_issuer=True)
    issuer = patient_ids.issuer_for(
        t.system, default=ctx.patient_system, prefix=ctx.issuer_prefix, table=ctx.issuer_systems
    )
    if issuer is None or len(issuer) > MAX_VALUE:
        return None
    return PatientKey(t.code, issuer or None)


def _parse_date(name: str, modifier: str, value: str, ctx: SearchContext) -> list[DateCriterion]:
    try:
        return [parse_search_date(v, ctx.search_zone) for v in split_or(value)]
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None


def _parse_modality(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    return [t.code for t in _tokens(value) if t.system in (None, DCM_SYSTEM) and _CS_RE.fullmatch(t.code)]


def _parse_uid_token(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    out = []
    for t in _tokens(value):
        code = t.code[8:] if t.code.startswith("urn:oid:") else t.code
        if t.system in (None, RFC3986_SYSTEM, DICOM_UID_SYSTEM) and is_uid(code):
            out.append(code)
    return out


def _parse_bodysite(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    """→ DICOM BodyPartExamined terms (PS3.16 Annex L) to ask the PACS for."""
    terms: list[str] = []
    for t in _tokens(value):
        if t.system in (None, SNOMED_SYSTEM):
            terms.extend(body_parts_for_snomed(t.code))
        if t.system is None and _CS_RE.fullmatch(t.code):
            terms.append(t.code)
    return list(dict.fromkeys(terms))


_STATUS_CODES = ("registered", "available", "cancelled", "entered-in-error", "unknown")


def _parse_status(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    out = []
    for t in _tokens(value):
        if t.code not in _STATUS_CODES:
            raise InvalidRequest(f"status {t.code[:40]!r} is not an ImagingStudy status code")
        if t.system in (None, "http://hl7.org/fhir/imagingstudy-status"):
            out.append(t.code)
    return out


def _parse_referrer(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    """``referrer.name[:exact|:contains]`` (a string, see :func:`_parse_string`); a plain
    ``referrer=Practitioner/x`` can match nothing, as the PACS keeps referrers as names only."""
    if modifier.partition(":")[0] != "name":
        return []
    return _parse_string(name, modifier, value, ctx)


def _parse_string(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    """search.html#string: comma-separated alternatives; blank ones can match nothing and are dropped."""
    return [v for v in map(_unescape, split_or(value)) if v.strip() and len(v) <= MAX_VALUE]


def _parse_patient_id(name: str, modifier: str, value: str, ctx: SearchContext) -> list[PatientKey | EhrPatient]:
    return _patient_refs([t.code for t in _tokens(value) if t.system is None], ctx)


def _parse_patient_identifier(name: str, modifier: str, value: str, ctx: SearchContext) -> list[PatientKey]:
    return [k for t in _tokens(value) if (k := _patient_by_identifier(t, ctx)) is not None]


def _parse_ids(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    return [t.code for t in _tokens(value) if t.system is None and is_fhir_id(t.code)]


def _parse_uid_identifier(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    """Only DICOM UID identifiers (``urn:dicom:uid|urn:oid:<uid>`` or ``urn:oid:<uid>``)."""
    return [t.code for t in _parse_identifier(name, modifier, value, ctx) if t.system == DICOM_UID_SYSTEM]


def _parse_code(name: str, modifier: str, value: str, ctx: SearchContext) -> list[Token]:
    """A coded purpose (KOS title): ``[system]|code``; the system, when given, is compared as sent."""
    return [t for t in _tokens(value) if t.code and len(t.code) <= MAX_VALUE]


def _parse_study_refs(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    return [rid for rid in _local_ids(value, "ImagingStudy", ctx) if is_uid(rid)]


GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
_GENDERS = ("male", "female", "other", "unknown")


def _parse_gender(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    out = []
    for t in _tokens(value):
        if t.code not in _GENDERS:
            raise InvalidRequest(f"gender {t.code[:40]!r} is not an administrative-gender code")
        if t.system in (None, GENDER_SYSTEM):
            out.append(t.code)
    return out


def _parse_endpoint(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    """Every study references the one WADO-RS Endpoint: it matches all, any other endpoint none."""
    return [rid for rid in _local_ids(value, "Endpoint", ctx) if rid == ctx.endpoint_id]


def _parse_kos_identifier(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    """A manifest's identifier: ``urn:oid:<uid>`` with the DICOM UID system, RFC 3986, or none."""
    out = []
    for t in _tokens(value):
        uid = t.code.removeprefix("urn:oid:")
        if uid != t.code and t.system in (None, DICOM_UID_SYSTEM, RFC3986_SYSTEM) and is_uid(uid):
            out.append(uid)
    return out


_DOCUMENT_STATUS = ("current", "superseded", "entered-in-error")


def _parse_document_status(name: str, modifier: str, value: str, ctx: SearchContext) -> list[str]:
    out = []
    for t in _tokens(value):
        if t.code not in _DOCUMENT_STATUS:
            raise InvalidRequest(f"status {t.code[:40]!r} is not a DocumentReference status code")
        if t.system in (None, "http://hl7.org/fhir/document-reference-status"):
            out.append(t.code)
    return out


def _parse_related(name: str, modifier: str, value: str, ctx: SearchContext) -> list[Token]:
    """``related:identifier``: a Study UID (→ Token(DICOM_UID_SYSTEM, uid)) or an accession token;
    ``related=ImagingStudy/<uid>``: that study."""
    if modifier == "identifier":
        return _parse_identifier(name, modifier, value, ctx)
    return [Token(DICOM_UID_SYSTEM, uid) for uid in _parse_study_refs(name, modifier, value, ctx)]


Parser = Callable[[str, str, str, SearchContext], list[Any]]

# Per resource, parameter name → value parser (every parameter of app.fhir.search_params has one; a test checks).
PARSERS: dict[str, dict[str, Parser]] = {
    "ImagingStudy": {
        "_id": _parse_id,
        "identifier": _parse_identifier,
        "patient": _parse_patient,
        "subject": _parse_patient,
        "started": _parse_date,
        "modality": _parse_modality,
        "series": _parse_uid_token,
        "instance": _parse_uid_token,
        "dicom-class": _parse_uid_token,
        "bodysite": _parse_bodysite,
        "referrer": _parse_referrer,
        "endpoint": _parse_endpoint,
        "status": _parse_status,
    },
    "ImagingSelection": {
        "_id": _parse_ids,
        "identifier": _parse_uid_identifier,
        "patient": _parse_patient,
        "subject": _parse_patient,
        "code": _parse_code,
        "study-uid": _parse_uid_token,
        "derived-from": _parse_study_refs,
        "issued": _parse_date,
        "bodysite": _parse_bodysite,
    },
    "DocumentReference": {
        "_id": _parse_ids,
        "identifier": _parse_kos_identifier,
        "patient": _parse_patient,
        "subject": _parse_patient,
        "status": _parse_document_status,
        "type": _parse_code,
        "category": _parse_code,
        "format": _parse_code,
        "date": _parse_date,
        "study-instance-uid": _parse_uid_token,
        "accession-number": _parse_code,
        "modality": _parse_modality,
        "bodysite": _parse_bodysite,
        "related": _parse_related,
    },
    "Patient": {
        "_id": _parse_patient_id,
        "identifier": _parse_patient_identifier,
        "name": _parse_string,
        "family": _parse_string,
        "given": _parse_string,
        "birthdate": _parse_date,
        "gender": _parse_gender,
    },
}
