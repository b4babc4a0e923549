"""Validate what the facade emits: fhir.resources (R4B models) plus the checks that library leaves out.

fhir.resources checks structure and datatypes but not required code bindings, so those are checked here by hand
(R4 4.0.1 value sets), together with FHIR JSON rules: no empty strings, arrays or objects (json.html), and a
dateTime with a time must carry a zone (datatypes.html#dateTime).
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IMAGING_STUDY_STATUS = {"registered", "available", "cancelled", "entered-in-error", "unknown"}
BUNDLE_TYPES = {
    "document",
    "message",
    "transaction",
    "transaction-response",
    "batch",
    "batch-response",
    "history",
    "searchset",
    "collection",
}
SEARCH_MODES = {"match", "include", "outcome"}
ENDPOINT_STATUS = {"active", "suspended", "error", "off", "entered-in-error", "test"}
SEVERITIES = {"fatal", "error", "warning", "information"}
ISSUE_TYPES = {
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
}
SEARCH_PARAM_TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}
_DATETIME_WITH_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


class FhirCheckError(AssertionError):
    pass


def check(resource: dict[str, Any]) -> None:
    """Raise FhirCheckError (an AssertionError) if ``resource`` is not valid R4 as far as we can tell."""
    _no_empty(resource, resource.get("resourceType", "?"))
    r4b = _r4b(resource["resourceType"])
    try:
        r4b.model_validate(resource)
    except Exception as exc:  # pydantic ValidationError
        raise FhirCheckError(f"{resource['resourceType']} fails R4B validation: {exc}") from None
    _google_r4(resource)
    _bindings(resource)


def _google_r4(resource: dict[str, Any]) -> None:
    """The stricter check: google-fhir-r4 parses into R4 protos, which enforce required bindings (typed enums),
    cardinalities and every primitive's regex (dateTime with zone, unsignedInt, id, ...)."""
    from google.fhir.r4 import json_format

    rtype = resource["resourceType"]
    if rtype == "Bundle":
        module = "bundle_and_contained_resource"
    else:
        module = re.sub(r"(?<!^)(?=[A-Z])", "_", rtype).lower()
    proto = getattr(importlib.import_module(f"google.fhir.r4.proto.core.resources.{module}_pb2"), rtype)
    try:
        json_format.json_fhir_string_to_proto(json.dumps(resource), proto, validate=True)
    except Exception as exc:  # google.fhir.core InvalidFhirError and friends
        raise FhirCheckError(f"{rtype} fails google-fhir-r4 validation: {exc}") from None


def _r4b(resource_type: str) -> Any:
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def _no_empty(value: Any, path: str) -> None:
    if value in ("", [], {}) or value is None:
        raise FhirCheckError(f"empty value at {path} (FHIR JSON forbids empty strings, arrays and objects)")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_empty(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_empty(v, f"{path}[{i}]")


def _bindings(res: dict[str, Any]) -> None:
    rtype = res["resourceType"]
    if rtype == "Bundle":
        _expect(res["type"] in BUNDLE_TYPES, f"Bundle.type {res['type']!r}")
        for link in res.get("link", []):
            _expect(link["url"].startswith(("http://", "https://")), f"relative Bundle.link {link['url']!r}")
        for entry in res.get("entry", []):
            # An outcome entry (search.mode outcome) is no resource of this server: a urn:uuid names it.
            outcome = entry.get("search", {}).get("mode") == "outcome"
            # A document's own resources (not on this server) are urn:uuid-named (bundle.html#document).
            local = outcome or res["type"] == "document"
            schemes = ("http://", "https://", "urn:uuid:") if local else ("http://", "https://")
            _expect(entry["fullUrl"].startswith(schemes), "Bundle.entry.fullUrl not absolute")
            if "search" in entry:
                _expect(entry["search"]["mode"] in SEARCH_MODES, "Bundle.entry.search.mode")
            _bindings(entry["resource"])
    elif rtype == "ImagingStudy":
        _expect(res["status"] in IMAGING_STUDY_STATUS, f"ImagingStudy.status {res['status']!r}")
        subsetted = any(t.get("code") == "SUBSETTED" for t in res.get("meta", {}).get("tag", []))
        uids = [i for i in res.get("identifier", []) if i.get("system") == "urn:dicom:uid"]
        if not subsetted or "identifier" in res:  # _elements may leave identifiers out (search.html#elements)
            _expect(len(uids) == 1 and uids[0]["value"].startswith("urn:oid:"), "one urn:dicom:uid identifier")
        for coding in res.get("modality", []):
            _expect(coding.get("system") == DCM, f"ImagingStudy.modality system {coding.get('system')!r}")
        _date_time(res.get("started"), "ImagingStudy.started")
        for series in res.get("series", []):
            _expect(series["modality"].get("system") == DCM, "series.modality system")
            _date_time(series.get("started"), "series.started")
            for inst in series.get("instance", []):
                _expect(inst["sopClass"]["code"].startswith("urn:oid:"), "instance.sopClass urn:oid:")
    elif rtype == "DocumentReference":
        _expect(res["status"] in {"current", "superseded", "entered-in-error"}, "DocumentReference.status")
        for rel in res.get("relatesTo", []):
            _expect(rel["code"] in {"replaces", "transforms", "signs", "appends"}, "relatesTo.code")
        _date_time(res.get("date"), "DocumentReference.date")
    elif rtype == "Composition":
        _expect(res["status"] in {"preliminary", "final", "amended", "entered-in-error"}, "Composition.status")
    elif rtype == "Endpoint":
        _expect(res["status"] in ENDPOINT_STATUS, f"Endpoint.status {res['status']!r}")
        ct = res["connectionType"]
        _expect(
            ct.get("system") == "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "Endpoint.connectionType system",
        )
    elif rtype == "OperationOutcome":
        for issue in res["issue"]:
            _expect(issue["severity"] in SEVERITIES, f"issue.severity {issue['severity']!r}")
            _expect(issue["code"] in ISSUE_TYPES, f"issue.code {issue['code']!r}")
    elif rtype == "CapabilityStatement":
        _expect(res["status"] in {"draft", "active", "retired", "unknown"}, "CapabilityStatement.status")
        _expect(res["kind"] in {"instance", "capability", "requirements"}, "CapabilityStatement.kind")
        for rest in res["rest"]:
            for resource in rest.get("resource", []):
                for sp in resource.get("searchParam", []):
                    _expect(sp["type"] in SEARCH_PARAM_TYPES, f"searchParam.type {sp['type']!r}")


def _date_time(value: str | None, where: str) -> None:
    if value is None:
        return
    _expect(
        bool(_DATETIME_WITH_TIME.fullmatch(value) or _DATE.fullmatch(value)), f"{where} {value!r}: a time needs a zone"
    )


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise FhirCheckError(f"binding/invariant violated: {what}")


def checking_client(app: Any, **kwargs: Any) -> Any:
    """A starlette TestClient that validates every FHIR JSON body it receives (so no test can forget to)."""
    from starlette.testclient import TestClient

    class CheckingTestClient(TestClient):
        def request(self, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
            response = super().request(*args, **kw)
            if response.headers.get("content-type", "").startswith("application/fhir+json") and response.content:
                if "/fhir/R5" in response.request.url.path:
                    from tests.support.fhir_check_r5 import check_r5

                    check_r5(response.json())
                else:
                    check(response.json())
            return response

    return CheckingTestClient(app, **kwargs)
