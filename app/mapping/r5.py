"""R4 resources we already produce → their FHIR R5 (5.0.0) shape (pure).

One mapping core, thin per-version output: DICOM is mapped once (app.mapping.imaging_study, .patient, .endpoint,
app.fhir.bundle); these functions only reshape the R4 dicts where R5 changed an element, so the two versions cannot
drift apart. Inputs may be cached and shared, so they are never mutated: whatever changes is copied, whatever
does not is shared (callers must treat the output as read-only too, as they already do with the R4 dicts).

Differences followed (each function's docstring names the R5 page):

- ImagingStudy (https://hl7.org/fhir/R5/imagingstudy.html): ``modality`` and ``series.modality`` Coding →
  CodeableConcept; ``series.bodySite`` Coding → CodeableReference(BodyStructure); ``series.laterality`` Coding →
  CodeableConcept; ``procedureReference`` → ``partOf``; ``procedureCode`` → ``procedure`` (CodeableReference);
  ``reasonCode``/``reasonReference`` → ``reason`` (CodeableReference); ``interpreter`` removed.
- Endpoint (https://hl7.org/fhir/R5/endpoint.html): ``connectionType`` 1..1 Coding → 1..* CodeableConcept;
  ``payloadType``/``payloadMimeType`` → ``payload[].type``/``payload[].mimeType``; status ``test`` removed from
  the value set (https://hl7.org/fhir/R5/valueset-endpoint-status.html) in favour of ``environmentType``.
- Patient (https://hl7.org/fhir/R5/patient.html): nothing we emit changed (identifier, name with the
  iso21090-EN-representation extension, gender, birthDate, text).
- Bundle (https://hl7.org/fhir/R5/bundle.html): ``link.relation`` is now a ``code`` bound to the IANA link
  relations (ours: self, next, previous, all IANA); otherwise only the entries' resources change.
- OperationOutcome (https://hl7.org/fhir/R5/operationoutcome.html): unchanged; the R5 issue-type value set is a
  superset of R4's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

R5_FHIR_VERSION = "5.0.0"
ENDPOINT_ENVIRONMENT = "http://hl7.org/fhir/endpoint-environment"

Resource = dict[str, Any]


# -- ImagingStudy -------------------------------------------------------------------------------------------------


def imaging_study_r5(r4: Mapping[str, Any]) -> Resource:
    """R4 ImagingStudy → R5 ImagingStudy (https://hl7.org/fhir/R5/imagingstudy.html).

    - ``modality`` 0..* Coding → 0..* CodeableConcept (R5 ImagingStudy.modality, binding CID 33);
    - ``procedureReference`` Reference(Procedure), "the procedure which this ImagingStudy was part of" (R4 maps it
      to the workflow Event.partOf), → ``partOf`` 0..* Reference(Procedure) (R5 ImagingStudy.partOf);
    - ``procedureCode`` CodeableConcept (DICOM Procedure Code Sequence) → ``procedure`` 0..* CodeableReference
      (R5 ImagingStudy.procedure, whose references may only be PlanDefinition | ActivityDefinition);
    - ``reasonCode`` / ``reasonReference`` → ``reason`` 0..* CodeableReference (R5 ImagingStudy.reason);
    - ``interpreter`` has no R5 element and is dropped (the reading physician belongs to the report,
      R5 DiagnosticReport.resultsInterpreter);
    - ``series``: see :func:`_series_r5`.

    ``contained`` resources (the capability-mode Endpoint) go through :func:`resource_r5`.

    ``id``, ``meta`` (e.g. the SUBSETTED tag), ``text`` (the generated narrative, which shows the same data),
    identifier, status, subject, started, referrer, endpoint, counts, description, basedOn, encounter, location
    and note are the same in both versions and are shared, not copied.
    """
    out: Resource = {}
    for key, value in r4.items():
        if key == "modality":
            out["modality"] = [_concept(c) for c in value]
        elif key == "series":
            out["series"] = [_series_r5(s) for s in value]
        elif key == "contained":  # the capability-mode Endpoint (app.mapping.endpoint) is reshaped like any other
            out["contained"] = [resource_r5(r) for r in value]
        elif key not in _RESHAPED:
            out[key] = value
    if "procedureReference" in r4:
        out["partOf"] = [r4["procedureReference"]]
    procedure = [{"concept": c} for c in r4.get("procedureCode", ())]
    if procedure:
        out["procedure"] = procedure
    reason = [{"concept": c} for c in r4.get("reasonCode", ())]
    reason += [{"reference": r} for r in r4.get("reasonReference", ())]
    if reason:
        out["reason"] = reason
    return out


# R4 ImagingStudy elements that R5 renamed or removed.
_RESHAPED = frozenset({"procedureReference", "procedureCode", "reasonCode", "reasonReference", "interpreter"})


def _series_r5(r4: Mapping[str, Any]) -> Resource:
    """R4 ImagingStudy.series → R5 (https://hl7.org/fhir/R5/imagingstudy-definitions.html#ImagingStudy.series).

    ``modality`` 1..1 Coding → CodeableConcept; ``bodySite`` Coding → CodeableReference(BodyStructure) with the
    code in ``concept``; ``laterality`` Coding → CodeableConcept. uid, number, description, numberOfInstances,
    endpoint, specimen, started, performer and instance (uid, sopClass Coding, number, title) are unchanged.
    """
    out: Resource = dict(r4)
    if "modality" in r4:
        out["modality"] = _concept(r4["modality"])
    if "bodySite" in r4:
        out["bodySite"] = {"concept": _concept(r4["bodySite"])}
    if "laterality" in r4:
        out["laterality"] = _concept(r4["laterality"])
    return out


def _concept(coding: Mapping[str, Any]) -> dict[str, Any]:
    """Coding → CodeableConcept. A Coding with a display only (our bodySite for a BodyPartExamined term without
    an Annex L code) is an uncoded term, which in a CodeableConcept belongs in ``text``
    (https://hl7.org/fhir/R5/datatypes.html#CodeableConcept)."""
    if "code" in coding or "system" in coding:
        return {"coding": [coding]}
    if "display" in coding:
        return {"text": coding["display"]}
    return {"coding": [coding]}  # e.g. only an extension: keep it where it was


# -- Patient ------------------------------------------------------------------------------------------------------


def patient_r5(r4: Mapping[str, Any]) -> Resource:
    """R4 Patient → R5 Patient (https://hl7.org/fhir/R5/patient.html): the elements we emit (identifier with type
    MR and assigner, name with iso21090-EN-representation, gender, birthDate, text) are unchanged in R5. A new
    top-level dict, so a caller adding to it cannot touch the shared R4 one."""
    return dict(r4)


# -- Endpoint -----------------------------------------------------------------------------------------------------


def endpoint_r5(r4: Mapping[str, Any]) -> Resource:
    """R4 Endpoint → R5 Endpoint (https://hl7.org/fhir/R5/endpoint.html).

    - ``connectionType`` 1..1 Coding → 1..* CodeableConcept (R5 Endpoint.connectionType, extensible binding to
      the same http://terminology.hl7.org/CodeSystem/endpoint-connection-type, ``dicom-wado-rs``);
    - ``payloadType`` 1..* CodeableConcept and ``payloadMimeType`` 0..* code → one ``payload`` 0..* backbone with
      ``type`` 0..* CodeableConcept and ``mimeType`` 0..* code (R5 Endpoint.payload);
    - ``status``: the same code set minus ``test`` (https://hl7.org/fhir/R5/valueset-endpoint-status.html); an R4
      ``test`` endpoint is ``active`` with ``environmentType`` ``test`` (http://hl7.org/fhir/endpoint-environment).

    id, name, address, header, period, contact, managingOrganization, identifier, text and meta are unchanged.
    """
    out: Resource = {}
    payload: dict[str, Any] = {}
    for key, value in r4.items():
        if key == "connectionType":
            out["connectionType"] = [_concept(value)]
        elif key == "payloadType":
            payload["type"] = value
            out["payload"] = [payload]
        elif key == "payloadMimeType":
            payload["mimeType"] = value
            out["payload"] = [payload]
        elif key == "status" and value == "test":
            out["status"] = "active"
            out["environmentType"] = [{"coding": [{"system": ENDPOINT_ENVIRONMENT, "code": "test"}]}]
        else:
            out[key] = value
    return out


# -- Bundle and dispatch ------------------------------------------------------------------------------------------


def _unchanged(r4: Mapping[str, Any]) -> Resource:
    return dict(r4)


# OperationOutcome: unchanged in what we emit (https://hl7.org/fhir/R5/operationoutcome.html); ImagingSelection
# only exists in R5 (app.mapping.imaging_selection builds it directly).
_BY_TYPE: dict[str, Callable[[Mapping[str, Any]], Resource]] = {
    "ImagingStudy": imaging_study_r5,
    "Patient": patient_r5,
    "Endpoint": endpoint_r5,
    "OperationOutcome": _unchanged,
    "ImagingSelection": _unchanged,
}


def resource_r5(r4: Mapping[str, Any]) -> Resource:
    """Any resource we emit → R5, by resourceType. Bundles go through :func:`bundle_r5`.

    Raises ValueError for a type with no R5 reshaping here (e.g. CapabilityStatement, whose fhirVersion and search
    parameter names differ between versions and must be generated for the version actually served).
    """
    rtype = r4.get("resourceType")
    if rtype == "Bundle":
        return bundle_r5(r4)
    convert = _BY_TYPE.get(str(rtype))
    if convert is None:
        raise ValueError(f"no R5 form for resourceType {rtype!r}")
    return convert(r4)


def bundle_r5(r4: Mapping[str, Any]) -> Resource:
    """R4 Bundle → R5 Bundle (https://hl7.org/fhir/R5/bundle.html): the same structure (type, total, link,
    entry.fullUrl, entry.search.mode); each entry's resource goes through :func:`resource_r5`. ``link.relation``
    became a code bound to the IANA link relations in R5; our ``self``/``next``/``previous`` are such codes."""
    out: Resource = dict(r4)
    if "entry" in r4:
        out["entry"] = [_entry_r5(e) for e in r4["entry"]]
    return out


def _entry_r5(entry: Mapping[str, Any]) -> Resource:
    out: Resource = dict(entry)
    if "resource" in entry:
        out["resource"] = resource_r5(entry["resource"])
    return out
