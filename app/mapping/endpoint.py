"""The one WADO-RS Endpoint (R4 Endpoint; shared/docs/fhir-dicom.md §1.4)."""

from __future__ import annotations

from typing import Any

from ..dicom.terminology import ENDPOINT_CONNECTION_TYPES

# SMART Imaging Access (Argonaut, profile SmartWadoEndpoint): 1..1 on every WADO-RS Endpoint.
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


def wado_endpoint(endpoint_id: str, address: str, *, requires_token: bool = False) -> dict[str, Any]:
    """``address`` is the WADO-RS service base; clients append /studies/{uid}[/series/{uid}...].
    ``requires_token``: whether the viewer presents the same SMART access token to it (true when the PACS checks
    the caller's token, i.e. the facade forwards tokens)."""
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id,
        "extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": requires_token}],
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
