"""A POSTed R5 ImagingSelection (or a transaction Bundle of them) → what one new KOS document must hold (pure).

R5 ImagingSelection holds one series (hl7.org/fhir/R5/imagingselection.html), so a manifest that spans series
or studies comes as several resources of one transaction; they must agree on purpose, subject, identifier and
description, as they become one Key Object Selection document (PS3.3 A.35.4, TID 2010). Only shape is checked
here (400); whether the PACS has the instances, and whether they are one patient's, is checked against the
PACS (app.usecases.manifest_create, 422).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, Unprocessable
from ..fhir.search import is_uid
from ..mapping.imaging_selection import KEY_OBJECT_DESCRIPTION_URL as DESCRIPTION_EXTENSION

DCM = "http://dicom.nema.org/resources/ontology/DCM"
# CID 7010 Key Object Selection Document Title (PS3.16), less the IOCM rejection titles: a rejection note
# deletes data in effect, which a manifest POST must not do.
TITLES = {
    "113000": "Of Interest",
    "113002": "For Referring Provider",
    "113003": "For Surgery",
    "113004": "For Teaching",
    "113005": "For Conference",
    "113006": "For Therapy",
    "113007": "For Patient",
    "113008": "For Peer Review",
    "113009": "For Research",
    "113010": "Quality Issue",
    "113013": "Best In Set",
    "113018": "For Printing",
    "113020": "For Report Attachment",
}
REJECTIONS = frozenset({"113001", "113037", "113038", "113039"})
MAX_INSTANCES = 5000


@dataclass(frozen=True)
class Selected:
    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str | None
    frames: tuple[int, ...] = ()


@dataclass(frozen=True)
class ManifestInput:
    title: tuple[str, str, str]  # (code, "DCM", meaning)
    instances: tuple[Selected, ...]
    subject: str | None  # "Patient/<id>" as given
    kos_uid: str | None  # from identifier urn:dicom:uid|urn:oid:<uid>
    description: str | None
    observer: str | None  # performer.actor.display


def from_payload(body: Any) -> tuple[ManifestInput, list[str | None]]:
    """The manifest, and per input resource the If-None-Exist of its transaction entry (None for a plain POST)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object: an ImagingSelection or a transaction Bundle")
    if body.get("resourceType") == "ImagingSelection":
        return merge([body]), [None]
    if body.get("resourceType") == "Bundle" and body.get("type") == "transaction":
        entries = body.get("entry")
        if not isinstance(entries, list) or not entries:
            raise InvalidRequest("the transaction Bundle has no entries")
        resources, conditions = [], []
        for i, entry in enumerate(entries):
            request = entry.get("request") if isinstance(entry, dict) else None
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if (
                not isinstance(request, dict)
                or request.get("method") != "POST"
                or request.get("url") != ("ImagingSelection")
            ):
                raise InvalidRequest(f"entry {i}: only POST ImagingSelection is supported in a transaction here")
            if not isinstance(resource, dict) or resource.get("resourceType") != "ImagingSelection":
                raise InvalidRequest(f"entry {i}: the resource must be an ImagingSelection")
            resources.append(resource)
            condition = request.get("ifNoneExist")
            conditions.append(condition if isinstance(condition, str) else None)
        return merge(resources), conditions
    raise InvalidRequest("expected an ImagingSelection or a Bundle of type transaction")


def merge(resources: list[dict[str, Any]]) -> ManifestInput:
    parts = [_one(i, r) for i, r in enumerate(resources)]
    first = parts[0]
    for i, p in enumerate(parts[1:], start=1):
        if (p.title, p.subject, p.kos_uid, p.description, p.observer) != (
            first.title,
            first.subject,
            first.kos_uid,
            first.description,
            first.observer,
        ):
            raise InvalidRequest(
                f"resource {i} differs from resource 0 in code, subject, identifier, description or performer; "
                "the selections of one manifest must agree"
            )
    instances = tuple(s for p in parts for s in p.instances)
    uids = [s.sop_instance_uid for s in instances]
    if len(set(uids)) != len(uids):
        raise InvalidRequest("an instance is selected more than once")
    if len(uids) > MAX_INSTANCES:
        raise InvalidRequest(f"a manifest may select at most {MAX_INSTANCES} instances")
    return ManifestInput(first.title, instances, first.subject, first.kos_uid, first.description, first.observer)


def _one(index: int, r: dict[str, Any]) -> ManifestInput:
    where = f"ImagingSelection {index}"
    status = r.get("status", "available")
    if status != "available":
        raise InvalidRequest(f"{where}: status must be available")
    title = _title(where, r.get("code"))
    study = _uid_or_none(where, "studyUid", r.get("studyUid"))
    series = _uid_or_none(where, "seriesUid", r.get("seriesUid"))
    raw = r.get("instance")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(
            f"{where}: instance must list the selected instances (a whole study or series cannot be "
            "selected without naming them)"
        )
    instances = tuple(_instance(f"{where} instance {j}", study, series, x) for j, x in enumerate(raw))
    subject = r.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if subject is not None and not isinstance(ref, str):
        raise InvalidRequest(f"{where}: subject must be a reference to a Patient")
    if isinstance(ref, str) and not ref.startswith("Patient/"):
        raise InvalidRequest(f"{where}: subject must be a Patient")
    return ManifestInput(title, instances, ref, _kos_uid(where, r.get("identifier")), _description(r), _observer(r))


def _title(where: str, code: Any) -> tuple[str, str, str]:
    codings = code.get("coding") if isinstance(code, dict) else None
    if not isinstance(codings, list):
        raise InvalidRequest(f"{where}: code must carry the purpose as a DCM coding (CID 7010), e.g. 113004")
    for c in codings:
        if isinstance(c, dict) and c.get("system") == DCM and isinstance(c.get("code"), str):
            value = c["code"]
            if value in REJECTIONS:
                raise Unprocessable(f"{where}: {value} is an IOCM rejection title; rejecting instances is not offered")
            if value not in TITLES:
                raise InvalidRequest(f"{where}: {value[:20]} is not a Key Object Selection title of CID 7010")
            return value, "DCM", TITLES[value]
    raise InvalidRequest(f"{where}: code must carry the purpose as a DCM coding (CID 7010), e.g. 113004")


def _instance(where: str, study: str | None, series: str | None, x: Any) -> Selected:
    if not isinstance(x, dict):
        raise InvalidRequest(f"{where} must be an object")
    uid = x.get("uid")
    if not isinstance(uid, str) or not is_uid(uid):
        raise InvalidRequest(f"{where}: uid must be a DICOM UID")
    sop_class = None
    coding = x.get("sopClass")
    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
        sop_class = coding["code"].removeprefix("urn:oid:")
        if not is_uid(sop_class):
            raise InvalidRequest(f"{where}: sopClass must be urn:oid:<uid>")
    frames: list[int] = []
    for item in x.get("subset") or []:
        if not isinstance(item, str) or not item.isdigit() or int(item) < 1 or len(item) > 9:
            raise InvalidRequest(f"{where}: subset holds frame numbers (positive integers as strings)")
        frames.append(int(item))
    return Selected(study, series, uid, sop_class, tuple(sorted(set(frames))))


def _uid_or_none(where: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_uid(value.removeprefix("urn:oid:")):
        raise InvalidRequest(f"{where}: {name} must be a DICOM UID")
    return value.removeprefix("urn:oid:")


def _kos_uid(where: str, identifiers: Any) -> str | None:
    for ident in identifiers if isinstance(identifiers, list) else []:
        if isinstance(ident, dict) and ident.get("system") == "urn:dicom:uid":
            value = ident.get("value")
            if not isinstance(value, str) or not value.startswith("urn:oid:") or not is_uid(value[8:]):
                raise InvalidRequest(f"{where}: a urn:dicom:uid identifier must be urn:oid:<uid>")
            return value[8:]
    return None


def _description(r: dict[str, Any]) -> str | None:
    for ext in r.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == DESCRIPTION_EXTENSION:
            text = ext.get("valueString")
            if isinstance(text, str) and text.strip():
                return text.strip()[:10240]  # UT holds 2^32-2 bytes; a manifest note has no need of more
    return None


def _observer(r: dict[str, Any]) -> str | None:
    for p in r.get("performer") or []:
        actor = p.get("actor") if isinstance(p, dict) else None
        if isinstance(actor, dict) and actor.get("type") == "Device":
            continue  # a device (as this server shows the facade that made a manifest) is not a person observer
        display = actor.get("display") if isinstance(actor, dict) else None
        if isinstance(display, str) and display.strip():
            return display.strip()[:64]
    return None


# -- who made it -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Author:
    """The observers a new KOS names (PS3.16 TID 2010 → TID 1002 Observer Context).

    ``person_name`` (a PN) and ``person_login`` are the person observer (TID 1003 "Person Observer Name" and
    "Person Observer's Login Name"); ``device_uid`` is set when the facade itself is named as the device observer
    (TID 1004 "Device Observer UID"; name and manufacturer are the facade's).
    """

    person_name: str | None = None
    person_login: str | None = None
    device_uid: str | None = None


# PS3.5 Table 6.2-1: a PN component group holds at most 64 characters; "^" and "=" delimit components and groups,
# and a backslash or a control character is never part of a PN value.
_PN_GROUP_MAX = 64
_NOT_IN_PN = re.compile(r"[\\^=\x00-\x1f\x7f]+")


def author(
    manifest: ManifestInput,
    *,
    fhir_user: str | None,
    name: str | None = None,
    family_name: str | None = None,
    given_name: str | None = None,
    device_uid: str,
) -> Author:
    """Who a new manifest names as its author, from the caller's token (app.security.context.User) and the
    manifest's own ``performer`` display.

    With a SMART ``fhirUser`` (App Launch: the FHIR resource of the user who authorized the app) the person is the
    observer: its login name is the ``fhirUser``, which every read maps back to ``author`` / ``performer``
    references; its name comes from the token's OpenID Connect claims (``family_name``/``given_name``, else
    ``name``), else from the manifest's performer, else the ``fhirUser`` itself (TID 1003 makes the name
    mandatory, and a reference is better than a made-up name). Without one (open mode, a token without it) nobody
    is vouched for: the facade itself is the device observer, beside a person named by the token or the manifest.
    """
    person = _pn(family_name, given_name) or _pn(name) or manifest.observer
    if fhir_user:
        fallback = "/".join(fhir_user.rstrip("/").split("/")[-2:])
        return Author(person_name=person or _pn(fallback), person_login=fhir_user)
    return Author(person_name=person, device_uid=device_uid)


def _pn(family: str | None, given: str | None = None) -> str | None:
    """A PN value from a family and given name (or a one-component name in ``family``), cleaned and bounded."""
    parts = [" ".join(_NOT_IN_PN.sub(" ", p or "").split()) for p in (family, given)]
    value = "^".join(parts).rstrip("^")
    return value[:_PN_GROUP_MAX].rstrip("^ ") or None
