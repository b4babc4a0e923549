"""Validate what the facade emits as FHIR R5: fhir.resources R5 models plus the checks that library leaves out.

    from tests.support.fhir_check_r5 import check_r5
    check_r5(resource_or_bundle)      # raises FhirCheckError (an AssertionError) with the reason

fhir.resources 8 (top-level ``fhir.resources.<name>``, FHIR 5.0.0) checks structure, cardinality of required
elements and primitive formats, but not required code bindings, FHIRPath invariants or the narrative's XHTML, so
those are checked here by hand against the R5 value sets (https://hl7.org/fhir/R5/), together with FHIR JSON rules:
no empty strings, arrays or objects and no nulls (https://hl7.org/fhir/R5/json.html), and a dateTime or instant
with a time must carry a zone (https://hl7.org/fhir/R5/datatypes.html#dateTime). Bundles are checked as a whole
and entry by entry, so an error names the entry.

Cardinality (a JSON array where the element is 0..1, a single value where it is 0..*; json.html#arrays) is left to
the models, which reject both for every element (tests/unit/test_fhir_check_r5.py flips each element of every
resource type we emit, :func:`cardinality_flips`). A wrong shape escapes only where no test emits the element:
ImagingSelection.bodySite (0..1) went out as a list because the shell adds it after the pure mapping, and no test
ran check_r5 on a selection of a series with a BodyPartExamined. So the API and integration tests talk to the
facade through ``tests.support.fhir_check.checking_client`` only (a unit test refuses a bare TestClient), and an
API test flips every element of real R5 answers, bodySite included.
"""

from __future__ import annotations

import copy
import importlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from tests.support import fhir_check
from tests.support.fhir_check import FhirCheckError
from tests.support.fhir_check import _no_empty as _no_empty  # the same FHIR JSON rule in R5

__all__ = ["FhirCheckError", "cardinality_flips", "check_r5"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
XHTML = "http://www.w3.org/1999/xhtml"
CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"

# Required bindings, R5 5.0.0 value sets.
IMAGING_STUDY_STATUS = {"registered", "available", "cancelled", "entered-in-error", "unknown"}
IMAGING_SELECTION_STATUS = {"available", "entered-in-error", "unknown"}  # valueset-imagingselection-status
ENDPOINT_STATUS = {"active", "suspended", "error", "off", "entered-in-error"}  # R5 dropped R4's "test"
GENDER = {"male", "female", "other", "unknown"}
NARRATIVE_STATUS = {"generated", "extensions", "additional", "empty"}
BUNDLE_TYPES = fhir_check.BUNDLE_TYPES | {"subscription-notification"}
SEARCH_MODES = {"match", "include", "outcome"}
# Bundle.link.relation is a code in R5, bound (required) to the IANA link relations; these are the ones a
# searchset uses (https://hl7.org/fhir/R5/http.html#paging).
LINK_RELATIONS = {"self", "first", "previous", "prev", "next", "last", "related", "alternate"}
SEVERITIES = {"fatal", "error", "warning", "information", "success"}
ISSUE_TYPES = fhir_check.ISSUE_TYPES | {"limited-filter"}  # R5 added it
SEARCH_PARAM_TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T")
_ZONE = r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATETIME_WITH_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?" + _ZONE)
# datatypes.html#instant: seconds are required, and so is the zone.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?" + _ZONE)
_MIME = re.compile(r"[\w.+-]+/[\w.+-]+")


def check_r5(resource: dict[str, Any]) -> None:
    """Raise FhirCheckError if ``resource`` (a resource or a Bundle) is not valid R5 as far as we can tell."""
    rtype = resource.get("resourceType")
    _expect(isinstance(rtype, str), "resourceType missing")
    _no_empty(resource, str(rtype))
    _zones(resource, str(rtype))
    _model(resource)
    if rtype == "Bundle":
        _bundle(resource)
    else:
        _resource(resource)


def cardinality_flips(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every element of ``resource`` with its cardinality flipped, one at a time: a single value wrapped in a list,
    a one-item list unwrapped (longer lists are skipped: unwrapping them would also lose items). Yields (path,
    the mutated copy); each copy is invalid FHIR JSON, whatever the element (json.html#arrays)."""
    for path in _element_paths(resource, ()):
        value: Any = resource
        for key in path:
            value = value[key]
        if isinstance(value, list) and len(value) != 1:
            continue
        mutated = copy.deepcopy(resource)
        parent: Any = mutated
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value[0] if isinstance(value, list) else [value]
        yield ".".join(str(k) for k in path), mutated


def _element_paths(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "resourceType":
                yield (*path, key)
                yield from _element_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _element_paths(item, (*path, i))


# -- per resource ------------------------------------------------------------------------------------------------


def _model(resource: dict[str, Any]) -> None:
    rtype = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.{rtype.lower()}")
    try:
        getattr(module, rtype).model_validate(resource)
    except Exception as exc:  # pydantic ValidationError
        raise FhirCheckError(f"{rtype}/{resource.get('id', '?')} fails R5 validation: {exc}") from None


def _bundle(res: dict[str, Any]) -> None:
    _expect(res["type"] in BUNDLE_TYPES, f"Bundle.type {res['type']!r}")
    for link in res.get("link", []):
        _expect(link["relation"] in LINK_RELATIONS, f"Bundle.link.relation {link['relation']!r}")
        _expect(link["url"].startswith(("http://", "https://")), f"relative Bundle.link {link['url']!r}")
    for i, entry in enumerate(res.get("entry", [])):
        where = f"Bundle.entry[{i}]"
        if "fullUrl" in entry:
            _expect(entry["fullUrl"].startswith(("http://", "https://")), f"{where}.fullUrl not absolute")
        if "search" in entry and "mode" in entry["search"]:
            _expect(entry["search"]["mode"] in SEARCH_MODES, f"{where}.search.mode")
        if "resource" in entry:
            inner = entry["resource"]
            try:
                _model(inner)
                _resource(inner)
            except FhirCheckError as exc:
                raise FhirCheckError(f"{where}: {exc}") from None
            if "fullUrl" in entry and "id" in inner:
                _expect(
                    entry["fullUrl"].endswith(f"/{inner['resourceType']}/{inner['id']}"),
                    f"{where}.fullUrl {entry['fullUrl']!r} does not name {inner['resourceType']}/{inner['id']}",
                )


def _resource(res: dict[str, Any]) -> None:
    rtype = res["resourceType"]
    if "id" in res:
        _expect(bool(_ID.fullmatch(res["id"])), f"{rtype}.id {res['id']!r} is not a FHIR id")
    if "text" in res:
        _narrative(res["text"], rtype)
    check = _CHECKS.get(rtype)
    if check is not None:
        check(res)


def _imaging_study(res: dict[str, Any]) -> None:
    _expect(res["status"] in IMAGING_STUDY_STATUS, f"ImagingStudy.status {res['status']!r}")
    subsetted = any(t.get("code") == "SUBSETTED" for t in res.get("meta", {}).get("tag", []))
    uids = [i for i in res.get("identifier", []) if i.get("system") == "urn:dicom:uid"]
    if not subsetted or "identifier" in res:  # _elements may leave identifiers out (search.html#elements)
        _expect(len(uids) == 1 and uids[0]["value"].startswith("urn:oid:"), "one urn:dicom:uid identifier")
    for concept in res.get("modality", []):
        _dcm_concept(concept, "ImagingStudy.modality")
    for name in ("interpreter", "procedureReference", "procedureCode", "reasonCode", "reasonReference"):
        _expect(name not in res, f"R4-only element ImagingStudy.{name}")
    for series in res.get("series", []):
        _uid(series["uid"], "series.uid")
        _dcm_concept(series["modality"], "series.modality")
        if "bodySite" in series:
            _expect("concept" in series["bodySite"] or "reference" in series["bodySite"], "series.bodySite")
        for inst in series.get("instance", []):
            _uid(inst["uid"], "instance.uid")
            _expect(inst["sopClass"]["code"].startswith("urn:oid:"), "instance.sopClass urn:oid:")


def _imaging_selection(res: dict[str, Any]) -> None:
    _expect(res["status"] in IMAGING_SELECTION_STATUS, f"ImagingSelection.status {res['status']!r}")
    _expect("code" in res, "ImagingSelection.code is 1..1")
    if "issued" in res:
        _expect(bool(_INSTANT.fullmatch(res["issued"])), f"ImagingSelection.issued {res['issued']!r} is no instant")
    for name in ("studyUid", "seriesUid", "frameOfReferenceUid"):
        if name in res:
            _uid(res[name], f"ImagingSelection.{name}")
    if "instance" in res:
        # "a selection of DICOM SOP instances ... within a single Study and Series": instances need both UIDs.
        _expect("seriesUid" in res and "studyUid" in res, "ImagingSelection.instance without studyUid/seriesUid")
    for inst in res.get("instance", []):
        _uid(inst["uid"], "ImagingSelection.instance.uid")
        if "sopClass" in inst:
            _expect(inst["sopClass"].get("code", "").startswith("urn:oid:"), "instance.sopClass urn:oid:")
    for ext in res.get("extension", []):
        _expect(ext["url"].startswith(("http://", "https://", "urn:")), f"extension.url {ext['url']!r}")


def _endpoint(res: dict[str, Any]) -> None:
    _expect(res["status"] in ENDPOINT_STATUS, f"Endpoint.status {res['status']!r}")
    for name in ("payloadType", "payloadMimeType"):
        _expect(name not in res, f"R4-only element Endpoint.{name}")
    _expect(
        any(c.get("system") == CONNECTION_TYPES for ct in res["connectionType"] for c in ct.get("coding", [])),
        "Endpoint.connectionType from endpoint-connection-type",
    )
    for payload in res.get("payload", []):
        for mime in payload.get("mimeType", []):
            _expect(bool(_MIME.fullmatch(mime)), f"Endpoint.payload.mimeType {mime!r}")


def _patient(res: dict[str, Any]) -> None:
    if "gender" in res:
        _expect(res["gender"] in GENDER, f"Patient.gender {res['gender']!r}")


def _operation_outcome(res: dict[str, Any]) -> None:
    for issue in res["issue"]:
        _expect(issue["severity"] in SEVERITIES, f"issue.severity {issue['severity']!r}")
        _expect(issue["code"] in ISSUE_TYPES, f"issue.code {issue['code']!r}")


def _capability_statement(res: dict[str, Any]) -> None:
    _expect(res["fhirVersion"] == "5.0.0", f"CapabilityStatement.fhirVersion {res['fhirVersion']!r} is not R5")
    _expect(res["status"] in {"draft", "active", "retired", "unknown"}, "CapabilityStatement.status")
    _expect(res["kind"] in {"instance", "capability", "requirements"}, "CapabilityStatement.kind")
    for rest in res["rest"]:
        for resource in rest.get("resource", []):
            for sp in resource.get("searchParam", []):
                _expect(sp["type"] in SEARCH_PARAM_TYPES, f"searchParam.type {sp['type']!r}")


_CHECKS = {
    "ImagingStudy": _imaging_study,
    "ImagingSelection": _imaging_selection,
    "Endpoint": _endpoint,
    "Patient": _patient,
    "OperationOutcome": _operation_outcome,
    "CapabilityStatement": _capability_statement,
}


# -- shared rules -------------------------------------------------------------------------------------------------


def _narrative(text: dict[str, Any], rtype: str) -> None:
    """narrative.html: a status from the value set and a well-formed XHTML <div> root in the XHTML namespace."""
    _expect(text.get("status") in NARRATIVE_STATUS, f"{rtype}.text.status {text.get('status')!r}")
    div = text.get("div", "")
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        raise FhirCheckError(f"{rtype}.text.div is not well-formed XHTML: {exc}") from None
    _expect(root.tag == f"{{{XHTML}}}div", f"{rtype}.text.div root is not an XHTML div")
    _expect(bool("".join(root.itertext()).strip()), f"{rtype}.text.div has no text")


def _dcm_concept(concept: dict[str, Any], where: str) -> None:
    _expect("coding" in concept and all(c.get("system") == DCM for c in concept["coding"]), f"{where} DCM coding")


def _uid(value: str, where: str) -> None:
    # R5 types these UIDs as ``id``: at most 64 characters of [A-Za-z0-9.-] (a DICOM UID is digits and dots).
    _expect(bool(_ID.fullmatch(value)), f"{where} {value!r} is not an id")


def _zones(value: Any, path: str) -> None:
    """Every dateTime/instant with a time carries a zone, wherever it is."""
    if isinstance(value, str):
        if _LOOKS_LIKE_TIME.match(value):
            _expect(bool(_DATETIME_WITH_TIME.fullmatch(value)), f"{path} {value!r}: a time needs a zone")
    elif isinstance(value, dict):
        for k, v in value.items():
            _zones(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _zones(v, f"{path}[{i}]")


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise FhirCheckError(f"binding/invariant violated: {what}")
