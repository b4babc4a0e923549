"""The one WADO-RS Endpoint (R4 Endpoint; shared/docs/fhir-dicom.md §1.4)."""

from __future__ import annotations

from typing import Any

from ..terminology import ENDPOINT_CONNECTION_TYPES


def wado_endpoint(endpoint_id: str, address: str) -> dict[str, Any]:
    """``address`` is the WADO-RS service base; clients append /studies/{uid}[/series/{uid}...]."""
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id,
        "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPES, "code": "dicom-wado-rs"},
        "name": "PACS WADO-RS",
        "payloadType": [
            {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "any"}],
                "text": "DICOM WADO-RS",
            }
        ],
        "payloadMimeType": ["application/dicom"],
        "address": address.rstrip("/"),
    }
