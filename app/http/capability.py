"""The CapabilityStatement of each FHIR base, generated from the same tables the search parser uses
(app.fhir.search_params, via app.mapping.versions)."""

from __future__ import annotations

from typing import Any

from ..fhir.search_params import LAST_UPDATED_TYPES, ResourceSearch
from ..mapping.document_reference import BUNDLE_PROFILE, FHIR_PROFILE, KOS_PROFILE
from ..mapping.versions import FhirVersion
from ..security.smart_discovery import capability_security
from ..settings import Settings
from ..usecases.last_updated import refusal

_CHANGED = {
    "ImagingStudy": "The study's last change in the PACS",
    "ImagingSelection": "The last change in the PACS of the study the manifest (KOS) is stored in",
    "DocumentReference": "The last change in the PACS of the study the manifest (KOS) is stored in",
}


def last_updated_param(rtype: str) -> dict[str, str]:
    """_lastUpdated as listed where it is answered: every archive an Orthanc (app.usecases.last_updated)."""
    return {
        "name": "_lastUpdated",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
        "type": "date",
        "documentation": f"{_CHANGED[rtype]} (Orthanc's LastUpdate, UTC to the second; with several archives the "
        "latest of those holding it; also meta.lastUpdated). Every date prefix; alone or with the other criteria. "
        "Deletions do not move it on Orthanc 1.10.",
    }


def capability_statement(
    base: str, version: FhirVersion, settings: Settings, *, software_version: str, date: str
) -> dict[str, Any]:
    writable = "ImagingSelection" in version.searches and settings.accepts_manifests
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Imaging FHIR facade",
        "kind": "instance",
        "software": {"name": "imaging-fhir-facade", "version": software_version},
        "implementation": {
            "description": f"FHIR {version.name} facade over a DICOMweb PACS (QIDO-RS/WADO-RS/STOW-RS)",
            "url": base,
        },
        "fhirVersion": version.fhir_version,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Searches are answered live from the PACS's QIDO-RS. Paging uses _count (capped, "
                "never rejected) and _offset in the next/previous links; no Bundle.total is given "
                "because QIDO-RS reports none, except for _summary=count, which counts every matching study. "
                "_summary=true gives series without their instances (a series-level QIDO query instead). "
                "_sort=started|-started and _total=accurate|estimate read every matching study (up to the "
                "server's prequery_limit; more is refused as too costly), since QIDO-RS can neither sort nor count.",
                "resource": [
                    _searchable(spec, _DOCS[rtype], writable=rtype == "ImagingSelection" and settings.accepts_manifests)
                    for rtype, spec in version.searches.items()
                ]
                + [
                    {
                        "type": "Endpoint",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Endpoint",
                        "interaction": [{"code": "read"}],
                        "versioning": "no-version",
                    },
                ]
                + [_read_only(rtype) for rtype in version.reads],
            }
        ],
    }
    if refusal(settings) is None:  # answered only where every archive says when its studies changed (issue 22)
        for resource in statement["rest"][0]["resource"]:
            if resource["type"] in LAST_UPDATED_TYPES and "searchParam" in resource:
                resource["searchParam"].append(last_updated_param(resource["type"]))
    if settings.auth_mode == "smart":  # SMART App Launch: the security element and where tokens come from
        if settings.smart_token_endpoint:
            security = capability_security(
                token_endpoint=settings.smart_token_endpoint,
                authorization_endpoint=settings.smart_authorization_endpoint,
                introspection_endpoint=settings.introspection_url,
            )
        else:
            security = {"service": [SMART_SERVICE]}
        security["description"] = (
            "Bearer tokens (SMART on FHIR, scopes v1 and v2): patient/, user/ and system/ scopes per resource type; "
            "a patient-context token sees its patient only (403 when a search names another)."
        )
        statement["rest"][0]["security"] = security
    if writable:  # a transaction Bundle of the ImagingSelections of one manifest (app.planning.manifest_input)
        statement["rest"][0]["interaction"] = [
            {"code": "transaction", "documentation": "ImagingSelection creates only"}
        ]
    return statement


SMART_SERVICE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]
}
_DOCS = {
    "ImagingStudy": "Sorting with _sort=started|-started only.",
    "Patient": "Patients are the distinct PatientID + IssuerOfPatientID pairs of the PACS's studies; a search reads "
    "every matching study (up to prequery_limit) and always gives an exact total.",
    "DocumentReference": "IHE RAD MADO Document Responder (MHD ITI-67): each KOS manifest of the PACS (IOCM "
    "rejection notes excluded; a KOS stored as one copy per study is one manifest) as two DocumentReferences, "
    "MadoDicomKosDocumentReference (the KOS, application/dicom, fetched with WADO-RS) and MadoFhirDocumentReference "
    "(the FHIR document Bundle, application/fhir+json, read at Bundle/<id>), linked by relatesTo transforms.",
    "ImagingSelection": "Key Object Selection (KOS) documents of the PACS, one resource per selected series; IOCM "
    "rejection notes are not selections. Create (POST, or a transaction Bundle of the selections of one KOS) "
    "stores a new KOS with STOW-RS; If-None-Exist on identifier makes a retried create safe.",
}


def _read_only(rtype: str) -> dict[str, Any]:
    """A type served by read only: R4's MADO document Bundles (MadoFhirBundle), the FHIR form of a manifest."""
    return {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "supportedProfile": [BUNDLE_PROFILE],
        "documentation": "The FHIR form of a key-image manifest: a document Bundle made from the KOS on each read "
        "(DocumentReference.content.attachment.url of the MadoFhirDocumentReference); needs DocumentReference read.",
        "interaction": [{"code": "read"}],
        "versioning": "no-version",
    }


# Profiles the resources of a type conform to (CapabilityStatement.rest.resource.supportedProfile).
_SUPPORTED_PROFILES = {"DocumentReference": [KOS_PROFILE, FHIR_PROFILE]}


def _searchable(spec: ResourceSearch, documentation: str, *, writable: bool = False) -> dict[str, Any]:
    interactions = ["read", "search-type"] + (["create"] if writable else [])
    supported = _SUPPORTED_PROFILES.get(spec.type)
    return {
        "type": spec.type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{spec.type}",
        **({"supportedProfile": supported} if supported else {}),
        "documentation": documentation,
        "interaction": [{"code": code} for code in interactions],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": writable,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        **({"searchInclude": list(spec.includes)} if spec.includes else {}),
        "searchParam": [
            {"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.documentation}
            for p in spec.params
        ],
    }
