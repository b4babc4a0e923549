"""The facade's use cases, wired from the pure core and the cached QIDO port (no HTTP types here)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from .. import __version__
from ..dicom import dicom_json as dj
from ..dicom import gcpause
from ..errors import InvalidRequest, MethodNotAllowed, NotFound
from ..fhir import bundle, patient_ids
from ..fhir.search import PatientKey, SearchContext, SearchRequest, is_fhir_id, is_uid, parse_search
from ..fhir.search_params import DOCUMENT_REFERENCE, IMAGING_SELECTION, IMAGING_STUDY, PATIENT
from ..fhir.subsetting import drop_narrative, subset
from ..mapping.endpoint import wado_endpoint
from ..mapping.imaging_study import MappingContext, imaging_study
from ..pacs.cache import CachedFetch, QidoPort
from ..pacs.dicomweb_write import DicomWebStore
from ..pacs.ehr import EhrPatients
from ..pacs.federation import FederatedStore
from ..pacs.pixm import PixManager
from ..planning.patient_plan import covered, linked_ehr_id
from ..planning.plan import Plan, PlanContext, plan
from ..security.context import Forbidden, User
from ..settings import Settings
from .documents import Documents, subject_of
from .federation import not_found_unless_all_answered, noted_failures, readiness, strict_error
from .identity import CROSS_REFERENCED, IdentitySystems, PatientResolver
from .last_updated import ChangeTimes, refusal
from .manifest_create import Created, ManifestWriter
from .manifests import KosDocuments, ManifestLimits, Manifests
from .patients import patient_resource, patient_searchset, people
from .rejected import RejectedInstances
from .studies import (
    Fetch,
    Limits,
    StudyPage,
    all_matching,
    read_study,
    search_page,
    sort_by_started,
    window_page,
)
from .wado_links import RetrievalGrant, keep_contained, study_mapping, wado_address


class Facade:
    def __init__(
        self, settings: Settings, qido: QidoPort, ehr: EhrPatients | None = None, pixm: PixManager | None = None
    ) -> None:
        self.settings = settings
        self.clock = time.time  # capability issue times (tests replace it)
        self.qido = qido
        self.ehr = ehr
        systems = IdentitySystems(
            settings.patient_identifier_system, settings.issuer_system_prefix, dict(settings.issuer_systems)
        )
        self.identity = PatientResolver(systems, ehr, pixm)
        self.times = ChangeTimes()  # _lastUpdated, meta.lastUpdated: every archive an Orthanc (app.main)
        self._why_not = refusal(settings) or "the PACS cannot say when its studies changed"  # the 400's text
        self.manifests: Manifests | None = None  # set by attach_manifests
        self.documents: Documents | None = None  # R4 MADO DocumentReference and Bundle, set by attach_manifests
        self.writer: ManifestWriter | None = None
        self.rejected = RejectedInstances(None, uid_batch=settings.uid_batch, row_limit=settings.prequery_limit)
        zone = settings.tz
        self.mapping = MappingContext(
            endpoint_id=settings.endpoint_id,
            zone=zone,
            accession_system=settings.accession_system,
            patient_system=settings.patient_identifier_system,
            issuer_prefix=settings.issuer_system_prefix,
            issuer_systems=settings.issuer_systems,
        )
        self.plan_context = PlanContext(settings.accession_system, zone, settings.prequery_limit)
        # Several archives already answer side by side: splitting a page's instance query again only multiplies
        # the requests (9 instead of 6 for a three-archive patient page, 1.2x the PACS CPU; bench/README.md).
        split = 1 if settings.federated else settings.instance_query_split
        self.limits = Limits(settings.uid_batch, settings.instance_limit, settings.prequery_limit, split)

    def search_context(self, base: str, *, strict: bool) -> SearchContext:
        s = self.settings
        return SearchContext(
            default_count=s.default_count,
            max_count=s.max_count,
            search_zone=s.tz or UTC,
            patient_system=s.patient_identifier_system,
            issuer_prefix=s.issuer_system_prefix,
            issuer_systems=s.issuer_systems,
            base_url=base,
            strict=strict,
            endpoint_id=s.endpoint_id,
            ehr_base=self.ehr.base if self.ehr else None,
            last_updated=self.times.answered,
            last_updated_refusal=self._why_not,
            now=datetime.fromtimestamp(self.clock(), UTC),
        )

    async def _resolve(
        self, req: SearchRequest, *, fresh: bool, names: tuple[str, ...] = CROSS_REFERENCED
    ) -> tuple[SearchRequest, dict[PatientKey, str]]:
        """EHR ids and PIXm cross-references (app.usecases.identity)."""
        return await self.identity.resolve(req, fresh=fresh, names=names)

    def attach_manifests(self, store: DicomWebStore | FederatedStore) -> None:
        """Wire the KOS reader (WADO-RS metadata) and writer (STOW-RS) that share the PACS connection pool."""
        s = self.settings
        limits = ManifestLimits(rows=s.prequery_limit)
        # Which manifests a KO series holds (read for _summary=true) is not in QIDO rows, so no change clock keys it:
        # where a change feed is followed, it is kept no longer than a poll interval (issue 22, rule 2).
        followed = any(source.pacs_kind == "orthanc" for source in s.pacs_sources)
        series_ttl = min(s.cache_ttl, s.change_poll_interval) if followed else s.cache_ttl
        self.manifests = Manifests(
            self._fetcher,
            KosDocuments(store.series_metadata, limits, series_ttl=series_ttl),
            self.mapping,
            limits,
            self._studies_for_include,
            self.endpoint,
            self.times,
        )
        self.documents = Documents(
            self.manifests,
            self._fetcher,
            self.mapping,
            uid_batch=s.uid_batch,
            row_limit=s.prequery_limit,
            endpoint=self.endpoint,
            software_version=__version__,
        )
        self.writer = ManifestWriter(
            fetch=self._fetcher(True),
            store=store,
            manifests=self.manifests,
            mapping=self.mapping,
            uid_batch=s.uid_batch,
            subject_keys=self.subject_keys,
            conditional_search=self._conditional_search,
            stored=self.qido.invalidate,
            writable=s.accepts_manifests,
            device_observer_uid=s.device_observer_uid,
        )
        if s.hide_rejected:
            documents = self.manifests.documents
            self.rejected = RejectedInstances(documents, uid_batch=s.uid_batch, row_limit=s.prequery_limit)

    async def create_manifest(
        self,
        payload: Any,
        base: str,
        *,
        if_none_exist: str | None,
        transaction: bool,
        patient: str | None = None,
        user: User | None = None,
    ) -> Created:
        if self.writer is None:
            raise MethodNotAllowed("manifests cannot be created here")
        return await self.writer.create(
            payload, base, if_none_exist=if_none_exist, transaction=transaction, patient=patient, user=user
        )

    async def _studies_for_include(self, uids: list[str], fresh: bool) -> list[dict[str, Any]]:
        """The ImagingStudies a page of manifests derives from (2 upstream requests, like a search page)."""
        page = await search_page(
            Plan(study_uids=tuple(uids)), self._fetcher(fresh), count=len(uids), offset=0, limits=self.limits
        )
        studies = [imaging_study(row, rows, self.mapping) for row, rows in await self.rejected.hide(page.studies)]
        await self.times.stamp_studies(studies, {})
        return studies

    async def subject_keys(self, patient_id: str) -> list[PatientKey]:
        """The PACS keys of a Patient id: ours decodes, an EHR id is looked up (app.pacs.ehr); unknown: none."""
        req = parse_search([("_id", patient_id)], self.search_context("", strict=False), PATIENT)
        req, _ = await self._resolve(req, fresh=True, names=("_id",))
        return [k for c in req.criteria for k in c.values if isinstance(k, PatientKey)]

    async def _conditional_search(self, condition: str) -> SearchRequest:
        """If-None-Exist: a search query string of ImagingSelection (http.html#ccreate)."""
        items = parse_qsl(condition.removeprefix("ImagingSelection?"), keep_blank_values=True)
        req = parse_search(items, self.search_context("", strict=True), IMAGING_SELECTION)
        if not req.criteria:
            raise InvalidRequest("If-None-Exist must name a search, e.g. identifier=urn:dicom:uid|urn:oid:<uid>")
        return (await self._resolve(req, fresh=True))[0]

    async def ready(self) -> tuple[bool, dict[str, str | None]]:
        """Whether to take traffic, and each archive's problem (app.usecases.federation.readiness)."""
        return await readiness(self.qido)

    async def search(
        self,
        resource_type: str,
        req: SearchRequest,
        base: str,
        *,
        fresh: bool,
        patient: str | None = None,
        retrieval: RetrievalGrant | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        """``patient``: the access token's patient context (app.security.auth); the search is confined to it.
        ``retrieval``: what the caller may retrieve (capability mode: no grant, no Endpoint in the studies).
        ``strict`` (``Prefer: handling=strict``): an archive that did not answer fails the search (issue 21)."""
        with noted_failures() as failed:
            result = await self._search(resource_type, req, base, fresh=fresh, patient=patient, retrieval=retrieval)
        if strict and failed.failed:
            raise strict_error(failed)
        return result

    async def _search(
        self,
        resource_type: str,
        req: SearchRequest,
        base: str,
        *,
        fresh: bool,
        patient: str | None,
        retrieval: RetrievalGrant | None,
    ) -> dict[str, Any]:
        if patient is not None:
            req = await self._confine(resource_type, req, patient, fresh=fresh)
        if resource_type == "ImagingStudy":
            return await self.search_studies(req, base, fresh=fresh, retrieval=retrieval)
        if resource_type == "Patient":
            return await self.search_patients(req, base, fresh=fresh)
        if resource_type == "ImagingSelection" and self.manifests is not None:
            req, _ = await self._resolve(req, fresh=fresh)
            return await self.manifests.search(req, base, fresh=fresh)
        if resource_type == "DocumentReference" and self.documents is not None:
            req, links = await self._resolve(req, fresh=fresh)
            return await self.documents.search(req, base, fresh=fresh, links=links)
        raise NotFound(f"{resource_type} is not served here")

    async def read(
        self,
        resource_type: str,
        rid: str,
        base: str,
        *,
        fresh: bool,
        patient: str | None = None,
        retrieval: RetrievalGrant | None = None,
    ) -> dict[str, Any]:
        """``patient``: the token's patient context; another patient's resource reads as 404 (SMART Imaging Access:
        do not confirm that it exists)."""
        with noted_failures() as failed, not_found_unless_all_answered(failed):
            return await self._read(resource_type, rid, base, fresh=fresh, patient=patient, retrieval=retrieval)

    async def _read(
        self,
        resource_type: str,
        rid: str,
        base: str,
        *,
        fresh: bool,
        patient: str | None,
        retrieval: RetrievalGrant | None,
    ) -> dict[str, Any]:
        if resource_type == "Endpoint":
            return self.endpoint(base, rid)
        if resource_type == "ImagingStudy":
            resource = await self.read_study(rid, fresh=fresh, mapping=self._mapping(base, retrieval))
        elif resource_type == "Patient":
            resource = await self.read_patient(rid, fresh=fresh)
        elif resource_type == "ImagingSelection" and self.manifests is not None:
            resource = await self.manifests.read(rid, fresh=fresh)
        elif resource_type in ("DocumentReference", "Bundle") and self.documents is not None:
            resource = await self.documents.read(resource_type, rid, base, fresh=fresh)
        else:
            raise NotFound(f"{resource_type} is not served here")
        if patient is not None:
            ref = f"Patient/{resource['id']}" if resource_type == "Patient" else subject_of(resource)
            if ref != f"Patient/{patient}" and not covered(
                await self.subject_keys(ref.removeprefix("Patient/")), await self.subject_keys(patient)
            ):
                raise NotFound(f"{resource_type}/{rid[:70]} is not known")
        return resource

    async def _confine(self, resource_type: str, req: SearchRequest, patient: str, *, fresh: bool) -> SearchRequest:
        """A patient-context token: naming another patient is 403 (not an empty Bundle, SMART Imaging Access);
        the token's patient is AND-ed to every search, so no criterion can widen it to anyone else."""
        names = ("_id", "identifier") if resource_type == "Patient" else ("patient", "subject")
        specs = {"Patient": PATIENT, "ImagingSelection": IMAGING_SELECTION, "DocumentReference": DOCUMENT_REFERENCE}
        spec = specs.get(resource_type, IMAGING_STUDY)
        mine = parse_search([(names[0], patient)], self.search_context("", strict=False), spec)
        resolved, _ = await self._resolve(req, fresh=fresh)
        allowed = await self.subject_keys(patient)
        for c in resolved.criteria:
            if c.name in names and c.modifier != "missing" and not covered(list(c.values), allowed):
                raise Forbidden("the search names a patient outside the access token's patient context")
        return dataclasses.replace(req, criteria=(*req.criteria, *mine.criteria))

    async def search_studies(
        self, req: SearchRequest, base: str, *, fresh: bool, retrieval: RetrievalGrant | None = None
    ) -> dict[str, Any]:
        def link(offset: int) -> str:
            return bundle.search_url(base, "ImagingStudy", req.link_params(offset=offset))

        req, links = await self._resolve(req, fresh=fresh)
        the_plan, fetch = plan(req, self.plan_context), self._fetcher(fresh)
        summary = req.summary == "true"
        level = "series" if summary else "instances"
        screen = self.rejected.screen(fetch)
        total: int | None = None
        stamps: dict[str, str] = {}
        if req.summary == "count" or req.sort or req.total != "none" or req.last_updated:
            # Counting, sorting and _lastUpdated need every matching study row (QIDO does none of them).
            rows = await all_matching(the_plan, fetch, self.limits, screen=screen)
            rows, stamps = await self.times.studies_as_asked(rows, req.last_updated)
            total = len(rows)
            if req.summary == "count":
                return bundle.searchset(base, [], self_url=link(req.offset), total=total)
            if req.sort:
                rows = sort_by_started(rows, self.plan_context.zone, descending=req.sort.startswith("-"))
            page = await window_page(rows, fetch, count=req.count, offset=req.offset, limits=self.limits, level=level)
        else:
            page = await search_page(
                the_plan, fetch, count=req.count, offset=req.offset, limits=self.limits, level=level, screen=screen
            )
        shown = await (self.rejected.lower_counts if summary else self.rejected.hide)(page.studies)
        # Asked again of what is shown: a study found by a modality whose every instance is rejected is not found
        # (app.dicom.rejections.narrow_modalities). A counted total can still include it.
        page = StudyPage([(row, rows) for row, rows in shown if the_plan.accepts(row)], page.has_next)
        mapping = self._mapping(base, retrieval)
        with gcpause.paused():  # many small dicts, no cycles (app.dicom.gcpause)
            studies = [
                imaging_study(row, None, mapping, series_rows=rows) if summary else imaging_study(row, rows, mapping)
                for row, rows in page.studies
            ]
        await self.times.stamp_studies(studies, stamps)
        for (row, _), study in zip(page.studies, studies, strict=True):
            if (ehr_id := linked_ehr_id(row, links)) is not None:
                study["subject"]["reference"] = f"Patient/{ehr_id}"
        kept = subset(studies, req, IMAGING_STUDY.mandatory)
        studies = [keep_contained(full, k) for full, k in zip(studies, kept, strict=True)]
        included: list[dict[str, Any]] = []
        if req.include_patient:
            # The subject's attributes are in the study rows already: no extra upstream request.
            subjects = {
                patient_ids.encode(dj.text(r, dj.PATIENT_ID) or "", dj.text(r, dj.ISSUER_OF_PATIENT_ID)): r
                for r, _ in page.studies
            }
            included += [patient_resource(row, links, self.mapping) for row in subjects.values()]
        if req.include_endpoint and studies and not self.settings.uses_capabilities:
            included.append(self.endpoint(base))  # capability mode: each study contains its own
        drop_narrative(studies + included, req)
        return bundle.searchset(
            base,
            studies,
            self_url=link(req.offset),
            included=included,
            total=total if req.total != "none" else None,
            next_url=link(req.offset + req.count) if page.has_next else None,
            previous_url=link(max(0, req.offset - req.count)) if req.offset and req.count else None,
        )

    async def read_study(self, study_id: str, *, fresh: bool, mapping: MappingContext | None = None) -> dict[str, Any]:
        if not is_uid(study_id):
            raise NotFound(f"ImagingStudy/{study_id[:70]} is not known")

        found = await read_study(study_id, self._fetcher(fresh), self.limits)
        if found is None:
            raise NotFound(f"ImagingStudy/{study_id} is not known")
        ((row, instances),) = await self.rejected.hide([found])
        study = imaging_study(row, instances, mapping or self.mapping)
        await self.times.stamp_studies([study], {})
        return study

    async def retrievable(
        self, study_uid: str, *, patient: str | None
    ) -> tuple[dj.Dataset, list[dj.Dataset], frozenset[str]]:
        """What the WADO-RS gateway may serve of a study (app.usecases.retrieve): its row, its instance rows and the
        SOP Instance UIDs IOCM notes reject. 404 as :meth:`read`: not a UID, unknown, or another patient's."""
        with noted_failures() as failed, not_found_unless_all_answered(failed):
            return await self._retrievable(study_uid, patient=patient)

    async def _retrievable(
        self, study_uid: str, *, patient: str | None
    ) -> tuple[dj.Dataset, list[dj.Dataset], frozenset[str]]:
        found = await read_study(study_uid, self._fetcher(False), self.limits) if is_uid(study_uid) else None
        if found is None:
            raise NotFound(f"ImagingStudy/{study_uid[:70]} is not known")
        row, instances = found
        if patient is not None:
            ref = patient_ids.encode(dj.text(row, dj.PATIENT_ID) or "", dj.text(row, dj.ISSUER_OF_PATIENT_ID))
            if ref != patient and not covered(await self.subject_keys(ref), await self.subject_keys(patient)):
                raise NotFound(f"ImagingStudy/{study_uid} is not known")
        return row, instances, await self.rejected.rejected_in(instances)

    async def search_patients(self, req: SearchRequest, base: str, *, fresh: bool) -> dict[str, Any]:
        """Patients are the distinct (PatientID, issuer) pairs of every matching study row (app.usecases.patients);
        that makes the total exact, so it is always given."""
        resolved, links = await self._resolve(req, fresh=fresh)
        found = await people(resolved, self._fetcher(fresh), self.plan_context, self.limits)
        return patient_searchset(resolved, found, links, self.mapping, base)

    async def read_patient(self, patient_id: str, *, fresh: bool) -> dict[str, Any]:
        """Patient/<id>: the id encodes PatientID + issuer; the patient's latest study speaks for them."""
        if not is_fhir_id(patient_id):
            raise NotFound(f"Patient/{patient_id[:70]} is not known")
        ctx = self.search_context("", strict=False)
        req = parse_search([("_id", patient_id)], ctx, PATIENT)  # ours, the linked EHR's, or nothing
        req, links = await self._resolve(req, fresh=fresh)
        found = [] if req.matches_nothing else await people(req, self._fetcher(fresh), self.plan_context, self.limits)
        if not found:
            raise NotFound(f"Patient/{patient_id[:70]} is not known")
        return patient_resource(found[0], links, self.mapping)

    def _mapping(self, base: str, retrieval: RetrievalGrant | None) -> MappingContext:
        return study_mapping(self.settings, self.mapping, base, retrieval, self.clock())

    def _fetcher(self, fresh: bool) -> Fetch:
        """The cached QIDO port, bypassing cached answers when the client sent Cache-Control: no-cache; the
        stale-if-error the request accepts is the HTTP layer's to say (app.pacs.request_scope)."""
        return CachedFetch(self.qido, fresh=fresh)

    def endpoint(self, base: str, endpoint_id: str | None = None) -> dict[str, Any]:
        """The shared Endpoint. In capability mode studies contain their own; this one (still what ImagingSelection
        and Endpoint reads name) is the gateway's token route, so a viewer must present its token there."""
        if endpoint_id is not None and endpoint_id != self.settings.endpoint_id:
            raise NotFound(f"Endpoint/{endpoint_id[:70]} is not known")
        s = self.settings
        requires = s.requires_token or s.uses_capabilities
        return wado_endpoint(s.endpoint_id, wado_address(s, base), requires_token=requires)
