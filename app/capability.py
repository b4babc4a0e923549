"""The R4 CapabilityStatement, generated from the same table the search parser uses (app.search_params)."""

from __future__ import annotations

from typing import Any

from .search_params import IMAGING_STUDY, PATIENT, ResourceSearch

FHIR_VERSION = "4.0.1"


def capability_statement(base: str, *, software_version: str, date: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Imaging FHIR facade",
        "kind": "instance",
        "software": {"name": "imaging-fhir-facade", "version": software_version},
        "implementation": {"description": "FHIR R4 facade over a DICOMweb PACS (QIDO-RS/WADO-RS)", "url": base},
        "fhirVersion": FHIR_VERSION,
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
                    _searchable(IMAGING_STUDY, "ImagingStudy: sorting with _sort=started|-started only."),
                    _searchable(
                        PATIENT,
                        "Patients are the distinct PatientID + IssuerOfPatientID pairs of the PACS's studies; a "
                        "search reads every matching study (up to prequery_limit) and always gives an exact total.",
                    ),
                    {
                        "type": "Endpoint",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Endpoint",
                        "interaction": [{"code": "read"}],
                        "versioning": "no-version",
                    },
                ],
            }
        ],
    }


def _searchable(spec: ResourceSearch, documentation: str) -> dict[str, Any]:
    return {
        "type": spec.type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{spec.type}",
        "documentation": documentation,
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        **({"searchInclude": list(spec.includes)} if spec.includes else {}),
        "searchParam": [
            {"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.documentation}
            for p in spec.params
        ],
    }
