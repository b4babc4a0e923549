"""Patient search and read: a patient is a distinct (PatientID, issuer) pair of the PACS's study rows
(app.planning.patient_plan), shown under the EHR's id when the search came through the EHR link (app.pacs.ehr)."""

from __future__ import annotations

from typing import Any

from ..dicom import dicom_json as dj
from ..fhir import bundle
from ..fhir.search import PatientKey, SearchRequest
from ..fhir.search_params import PATIENT
from ..fhir.subsetting import drop_narrative, subset
from ..mapping.imaging_study import MappingContext
from ..mapping.patient import patient
from ..planning.patient_plan import distinct_patients, linked_ehr_id, plan_patients
from ..planning.plan import PlanContext
from .studies import Fetch, Limits, all_matching


def patient_resource(row: dj.Dataset, links: dict[PatientKey, str], mapping: MappingContext) -> dict[str, Any]:
    """The Patient of a study row; under the EHR's id when the search came through it."""
    resource = patient(row, mapping)
    if (ehr_id := linked_ehr_id(row, links)) is not None:
        resource["id"] = ehr_id
    return resource


async def people(req: SearchRequest, fetch: Fetch, context: PlanContext, limits: Limits) -> list[dj.Dataset]:
    """One study row per distinct patient among every matching one (so the total is exact)."""
    rows = await all_matching(plan_patients(req, context), fetch, limits, why="folding them into patients")
    return distinct_patients(rows)


def patient_searchset(
    req: SearchRequest, found: list[dj.Dataset], links: dict[PatientKey, str], mapping: MappingContext, base: str
) -> dict[str, Any]:
    def link(offset: int) -> str:
        return bundle.search_url(base, "Patient", req.link_params(offset=offset))

    window = [] if req.summary == "count" else found[req.offset : req.offset + req.count]
    resources = subset([patient_resource(row, links, mapping) for row in window], req, PATIENT.mandatory)
    drop_narrative(resources, req)
    return bundle.counted_searchset(
        base,
        resources,
        link=link,
        offset=req.offset,
        count=req.count,
        total=len(found),
        counting=req.summary == "count",
    )
