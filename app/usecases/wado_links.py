"""Where a viewer retrieves images: the WADO-RS address of the Endpoints in an answer (issue 12).

``wado_mode = "direct"``: the PACS's own WADO-RS base (``wado_url``). ``"gateway"``: the facade's gateway,
``{root}/dicomweb``, on the origin of the FHIR links (``public_url``, else the request's scheme, host and port), and
in capability mode (``wado_access = "capability"``, auth_mode smart) each ImagingStudy contains its own Endpoint
at ``{root}/dicomweb/c/{capability}``, issued here for the requesting token (app.security.capability); the pure
mapping only receives the address (app.mapping.imaging_study.MappingContext.study_endpoint).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..mapping.imaging_study import MappingContext
from ..security import capability
from ..settings import Settings


@dataclass(frozen=True)
class RetrievalGrant:
    """What the caller may retrieve, for the capabilities of an answer (capability mode): the token's ``exp``
    (a capability never outlives it) and its patient context for ImagingStudy read (None: unconfined)."""

    expires_at: float | None
    patient: str | None


def wado_address(settings: Settings, base: str) -> str:
    """Endpoint.address of the shared Endpoint. ``base`` is ``{root}/fhir/<version>`` (app.http.fhir_http.fhir_base),
    so the gateway sits on exactly the origin (and path prefix) of the FHIR links."""
    if settings.wado_mode == "direct":
        return settings.wado_base
    return base.rpartition("/fhir/")[0] + "/dicomweb"


def study_mapping(
    settings: Settings, mapping: MappingContext, base: str, retrieval: RetrievalGrant | None, now: float
) -> MappingContext:
    """The mapping context of one answer: unchanged unless in capability mode, where each study's Endpoint
    address carries a capability for that study issued at ``now``; without a grant (the token may not read
    ImagingStudy), studies carry no Endpoint at all."""
    if not settings.uses_capabilities:
        return mapping
    if retrieval is None:
        return dataclasses.replace(mapping, study_endpoint=lambda uid: None)
    gateway = wado_address(settings, base)

    def address(uid: str) -> str:
        cap = capability.issue(
            uid,
            keys=settings.capability_keys,
            ttl=settings.capability_ttl,
            not_after=retrieval.expires_at,
            now=now,
            patient=retrieval.patient,
        )
        return f"{gateway}/c/{cap}"

    return dataclasses.replace(mapping, study_endpoint=address)


def keep_contained(full: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """``_elements`` keeps the named elements only; a kept ``#wado`` reference (``endpoint``, ``series``) still
    needs its contained Endpoint, which is no element a client would name (R4 references.html#contained)."""
    if "contained" in full and "contained" not in kept and ("endpoint" in kept or "series" in kept):
        return {**kept, "contained": full["contained"]}
    return kept
