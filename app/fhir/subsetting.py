"""_elements and _summary applied to the resources of a page (R4/R5 search.html#elements, #summary), pure."""

from __future__ import annotations

from typing import Any

from .search import SearchRequest

# search.html#summary: a resource with elements left out SHALL say so with this tag (owned here; the mapping uses it).
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def subset(resources: list[dict[str, Any]], req: SearchRequest, mandatory: frozenset[str]) -> list[dict[str, Any]]:
    """search.html#elements and _summary=text: the listed plus the mandatory elements, marked SUBSETTED."""
    elements = req.elements or ({"text"} if req.summary == "text" else set())
    if not elements:
        return resources
    keep = elements | mandatory | {"resourceType", "id", "meta"}
    return [{k: v for k, v in r.items() if k in keep} | {"meta": _tagged(r)} for r in resources]


def drop_narrative(resources: list[dict[str, Any]], req: SearchRequest) -> None:
    if req.summary in ("true", "data"):  # neither carries the narrative (search.html#summary)
        for resource in resources:
            if resource.pop("text", None) is not None:
                resource["meta"] = _tagged(resource)


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    """Meta marked SUBSETTED, keeping meta.lastUpdated (a profile is not claimed for a subset)."""
    kept = {k: v for k, v in resource.get("meta", {}).items() if k == "lastUpdated"}
    return kept | {"tag": [dict(SUBSETTED)]}
