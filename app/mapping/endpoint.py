"""The WADO-RS Endpoint (R4 Endpoint; shared/docs/fhir-dicom.md §1.4, shared/docs/wado-gateway.md §1).

Three shapes, one builder: the shared ``Endpoint/<endpoint_id>`` at the PACS (``wado_mode = "direct"``) or at the
facade's gateway (``{root}/dicomweb``, token or open mode), and in capability mode an Endpoint contained in each
ImagingStudy (id :data:`CONTAINED_ENDPOINT_ID`, referenced as ``#wado``) whose address ends in that study's
capability, ``{root}/dicomweb/c/{capability}`` (SMART Imaging Access: ``requires-access-token`` false, the address is
the permission). Clients append ``/studies/{uid}[/series/{uid}...]`` to the address in every case.
"""

from __future__ import annotations

from typing import Any

from ..dicom.terminology import ENDPOINT_CONNECTION_TYPES

# SMART Imaging Access (Argonaut, profile SmartWadoEndpoint): 1..1 on every WADO-RS Endpoint.
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
# Id of the Endpoint contained in an ImagingStudy (capability mode); a contained id is local to its resource.
CONTAINED_ENDPOINT_ID = "wado"


def wado_endpoint(endpoint_id: str, address: str, *, requires_token: bool = False) -> dict[str, Any]:
    """``address`` is the WADO-RS service base; clients append /studies/{uid}[/series/{uid}...].
    ``requires_token``: whether the viewer presents the same SMART access token to it (true when whoever serves
    the address checks the caller's token: the gateway in token mode, or the PACS when the facade forwards tokens).
    """
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
