"""The FHIR versions served, each a base URL with its own CapabilityStatement, search tables and output shape.

One mapping core writes R4-shaped resources (app.mapping); R5 output is a thin conversion of those
(app.mapping.r5), plus ImagingSelection, which exists in R5 only (successor of STU3 ImagingManifest).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..fhir.search_params import (
    DOCUMENT_REFERENCE,
    IMAGING_SELECTION,
    IMAGING_STUDY,
    IMAGING_STUDY_R5,
    PATIENT,
    ResourceSearch,
)
from . import r5

Resource = dict[str, Any]


@dataclass(frozen=True)
class FhirVersion:
    name: str  # path segment: /fhir/<name>
    fhir_version: str  # CapabilityStatement.fhirVersion
    mime_versions: frozenset[str]  # values of the fhirVersion MIME parameter accepted (http.html#version-parameter)
    searches: Mapping[str, ResourceSearch]
    converters: Mapping[str, Callable[[Resource], Resource]]
    # Types served by read only, besides the Endpoint: R4's MADO document Bundles (the FHIR form of a manifest).
    reads: tuple[str, ...] = ()

    def present(self, body: Resource) -> Resource:
        """This version's shape of an R4-shaped resource or searchset Bundle (input left untouched)."""
        if not self.converters:
            return body
        if body.get("resourceType") == "Bundle" and "entry" in body:
            entries = [e | {"resource": self._one(e["resource"])} for e in body["entry"]]
            return body | {"entry": entries}
        return self._one(body)

    def _one(self, resource: Resource) -> Resource:
        convert = self.converters.get(resource.get("resourceType", ""))
        return convert(resource) if convert else resource


R4 = FhirVersion(
    "R4",
    "4.0.1",
    frozenset({"4.0", "4.0.1"}),
    {"ImagingStudy": IMAGING_STUDY, "Patient": PATIENT, "DocumentReference": DOCUMENT_REFERENCE},
    {},
    reads=("Bundle",),
)
R5 = FhirVersion(
    "R5",
    "5.0.0",
    frozenset({"5.0", "5.0.0"}),
    {"ImagingStudy": IMAGING_STUDY_R5, "Patient": PATIENT, "ImagingSelection": IMAGING_SELECTION},
    {"ImagingStudy": r5.imaging_study_r5, "Patient": r5.patient_r5, "Endpoint": r5.endpoint_r5},
)
VERSIONS = (R4, R5)
