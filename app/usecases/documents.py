"""Key-image manifests for R4 EMRs: IHE RAD MADO DocumentReferences (search, read) and the FHIR document Bundle
(read), over the same KOS documents the R5 ImagingSelection base serves (app.usecases.manifests).

Each KOS manifest (never an IOCM rejection note; the copies of a cross-study KOS are one manifest) is two
DocumentReferences, its DICOM and its FHIR form (app.mapping.document_reference). The KOS documents are found as
for ImagingSelection (instance-level QIDO ``Modality=KO``, content from WADO-RS metadata, parsed documents cached);
then two QIDO requests (each batched by ``uid_batch``) show them with the PACS's rows: the referenced studies
(accession numbers, the KOS's own study's ``started``, the Patient) and the selected instances (modality, body
part, number, frames).

    search parameter              QIDO-RS                                     checked here
    patient, subject              PatientID (+issuer) of the KOS instances     PatientID, issuer
    identifier, _id               SOPInstanceUID list                          the form, for _id
    study-instance-uid, related   the studies' PatientIDs                      a referenced study
    accession-number              /studies?AccessionNumber= → as above         exact value and system
    date                          —                                            ContentDate/Time, FHIR prefixes
    modality, bodysite            —                                            the selected instances' rows
    status, type, category,       —                                            the resource (every manifest is
    format                                                                     current, LOINC 18748-4)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any

from ..dicom import dicom_json as dj
from ..dicom.kos import KeyObjectSelection
from ..dicom.qido import INSTANCE_FIELDS, STUDY_FIELDS, QidoQuery, uid_list
from ..errors import NotFound, TooCostly
from ..fhir import bundle
from ..fhir.dates import DateCriterion, dicom_interval
from ..fhir.search import PatientKey, SearchRequest, Token
from ..fhir.search_params import DOCUMENT_REFERENCE
from ..fhir.search_values import DICOM_UID_SYSTEM
from ..fhir.subsetting import drop_narrative, subset
from ..mapping import document_reference as mado
from ..mapping.imaging_study import MappingContext
from ..mapping.manifest_bundle import manifest_bundle
from ..mapping.patient import patient
from ..planning.plan import patient_check, put_pattern
from .manifests import Manifests, doc_check, kos_patient_keys
from .studies import Fetch

Resource = dict[str, Any]
# Instance rows show the selected images: the ImagingStudy instance fields plus NumberOfFrames, SeriesDescription.
_SELECTED_FIELDS = (*INSTANCE_FIELDS, "00280008", "0008103E")


class Documents:
    def __init__(
        self,
        manifests: Manifests,
        fetch: Callable[[bool], Fetch],
        mapping: MappingContext,
        *,
        uid_batch: int,
        row_limit: int,
        endpoint: Callable[[str], Resource],
        software_version: str,
    ) -> None:
        """``endpoint(base)``: the WADO-RS Endpoint the studies name for a client of that base (where a KOS is
        fetched, and what the document's per-series Endpoints say)."""
        self._manifests = manifests
        self._fetch = fetch
        self._mapping = mapping
        self._uid_batch = uid_batch
        self._row_limit = row_limit
        self._endpoint = endpoint
        self._version = software_version

    def context(self, base: str) -> mado.DocumentContext:
        """The one place the WADO-RS address of the KOS attachment (and of the document's Endpoints) comes from:
        what the studies' Endpoint says to a client of this base (app.usecases.service.Facade.endpoint)."""
        endpoint = self._endpoint(base)
        requires = any(e.get("valueBoolean") is True for e in endpoint.get("extension", []))
        return mado.DocumentContext(self._mapping, base, endpoint["address"], requires, self._version)

    # -- search -------------------------------------------------------------------------------------------------

    async def search(
        self, req: SearchRequest, base: str, *, fresh: bool, links: dict[PatientKey, str] | None = None
    ) -> Resource:
        """``links``: EHR Patient ids the search came through (app.pacs.ehr): subjects point back at them."""

        def link(offset: int) -> str:
            return bundle.search_url(base, "DocumentReference", req.link_params(offset=offset))

        found, stamps = ([], {}) if req.matches_nothing else await self._matching(req, base, fresh)
        found.sort(key=lambda pair: (pair[1].get("date", ""), pair[1]["id"]), reverse=True)  # newest first
        window = [] if req.summary == "count" else found[req.offset : req.offset + req.count]
        resources = [_linked(res, m, links) for m, res in window]
        await self._manifests.times.stamp_manifests(
            [(r, m.kos) for r, (m, _) in zip(resources, window, strict=True)], stamps
        )
        included: list[Resource] = []
        if resources and "DocumentReference:subject" in req.includes:
            people: dict[str, Resource] = {}
            for (m, _), res in zip(window, resources, strict=True):
                person = _patient(m, self._mapping)
                person["id"] = res["subject"]["reference"].removeprefix("Patient/")
                people.setdefault(person["id"], person)
            included = list(people.values())
        resources = subset(resources, req, DOCUMENT_REFERENCE.mandatory)
        drop_narrative(resources + included, req)
        return bundle.counted_searchset(
            base,
            resources,
            link=link,
            offset=req.offset,
            count=req.count,
            total=len(found),
            counting=req.summary == "count",
            included=included,
        )

    async def _matching(
        self, req: SearchRequest, base: str, fresh: bool
    ) -> tuple[list[tuple[mado.Manifest, Resource]], dict[str, str]]:
        """The manifests' DocumentReferences, and the manifests' last changes if the search asked (by KOS UID)."""
        keys: dict[str, str] = {}
        doc_checks: list[Callable[[KeyObjectSelection], bool]] = []
        for c in req.all("patient") + req.all("subject"):
            pkeys: list[PatientKey] = list(c.values)
            doc_checks.append(doc_check(patient_check(pkeys)))
            if "PatientID" not in keys:
                put_pattern(keys, "PatientID", [k.patient_id for k in pkeys])
        sop_uids: set[str] | None = None
        ids: set[str] | None = None
        for c in req.all("identifier"):
            sop_uids = _and(sop_uids, set(c.values))
        for c in req.all("_id"):
            decoded = {rid: d for rid in c.values if (d := mado.decode_document_id(rid)) is not None}
            ids = _and(ids, set(decoded))
            sop_uids = _and(sop_uids, {uid for uid, _ in decoded.values()})
        if sop_uids is not None:
            if not sop_uids:
                return [], {}
            keys["SOPInstanceUID"] = uid_list(sorted(sop_uids))
        study_sets = [set(c.values) for c in req.all("study-instance-uid")]
        for c in req.all("accession-number"):
            study_sets.append(await self._studies_by_accession(list(c.values), fresh))
        for c in req.all("related"):
            tokens: list[Token] = list(c.values)
            uids = {t.code for t in tokens if t.system == DICOM_UID_SYSTEM}
            accession = [t for t in tokens if t.system != DICOM_UID_SYSTEM]
            study_sets.append(uids | (await self._studies_by_accession(accession, fresh) if accession else set()))
        if study_sets:
            studies = set.intersection(*study_sets)
            if not studies:
                return [], {}
            if "PatientID" not in keys and "SOPInstanceUID" not in keys:
                # A KOS can live in another study of the patient: ask for the patients' KOS, keep the matches.
                patients = await self._manifests.patients_of(sorted(studies), fresh=fresh)
                if not patients:
                    return [], {}
                put_pattern(keys, "PatientID", patients)
        for c in req.all("date"):
            doc_checks.append(_date_check(list(c.values), self._mapping.zone))
        docs = await self._manifests.kos_documents(keys, fresh=fresh)
        docs = [d for d in docs if not d.is_rejection and all(check(d) for check in doc_checks)]
        docs = list(_one_per_manifest(docs).values())
        docs = [d for d in docs if all(s & set(mado.referenced_studies(d)) for s in study_sets)]
        docs, stamps = await self._manifests.times.manifests_as_asked(docs, req.last_updated)
        manifests = await self.shown(docs, fresh=fresh)
        for c in req.all("modality"):
            codes = set(c.values)
            manifests = [m for m in manifests if codes & {x["code"] for x in mado.modalities(m)}]
        for c in req.all("bodysite"):
            terms = set(c.values)
            manifests = [m for m in manifests if terms & set(mado.body_part_terms(m))]
        ctx = self.context(base)
        found = [(m, res) for m in manifests for res in mado.document_references(m, ctx)]
        if ids is not None:
            found = [(m, r) for m, r in found if r["id"] in ids]
        for c in req.all("status"):
            found = [(m, r) for m, r in found if r["status"] in c.values]
        for name, path in (("type", ("type",)), ("category", ("category",)), ("format", ("content", "format"))):
            for c in req.all(name):
                found = [(m, r) for m, r in found if _token_matches(_codings(r, path), list(c.values))]
        return found, stamps

    async def _studies_by_accession(self, tokens: list[Token], fresh: bool) -> set[str]:
        """Study UIDs whose AccessionNumber is one of these (exact, case-sensitive; the system must be ours)."""
        system = self._mapping.accession_system or ""
        out: set[str] = set()
        for t in tokens:
            if t.system is not None and t.system != system:
                continue
            keys: dict[str, str] = {}
            put_pattern(keys, "AccessionNumber", [t.code])
            if not keys:
                continue
            query = QidoQuery.build("studies", keys, fields=("00100021",), limit=self._row_limit + 1)
            rows = (await self._fetch(fresh)(query)).rows
            if len(rows) > self._row_limit:
                raise TooCostly(f"more than {self._row_limit} studies have accession number {t.code[:40]!r}")
            out |= {uid for r in rows if dj.text(r, dj.ACCESSION) == t.code and (uid := dj.text(r, dj.STUDY_UID))}
        return out

    # -- the PACS rows a manifest is shown with -----------------------------------------------------------------

    async def shown(self, docs: list[KeyObjectSelection], *, fresh: bool) -> list[mado.Manifest]:
        """The documents with the rows of their studies and selected instances (two batched QIDO requests)."""
        if not docs:
            return []
        study_uids = sorted({u for d in docs for u in (d.study_uid, *mado.referenced_studies(d)) if u})
        sop_uids = sorted({r.sop_instance_uid for d in docs for r in d.references})
        studies = {
            uid: row
            for row in await self._rows("studies", "StudyInstanceUID", study_uids, STUDY_FIELDS, fresh)
            if (uid := dj.text(row, dj.STUDY_UID))
        }
        instances = {
            uid: row
            for row in await self._rows("instances", "SOPInstanceUID", sop_uids, _SELECTED_FIELDS, fresh)
            if (uid := dj.text(row, dj.SOP_INSTANCE_UID))
        }
        return [mado.Manifest(d, d.canonical_uid, studies, instances) for d in docs]

    async def _rows(
        self, level: str, key: str, uids: list[str], fields: tuple[str, ...], fresh: bool
    ) -> list[dj.Dataset]:
        rows: list[dj.Dataset] = []
        valid = [u for u in uids if _is_uid_list_safe(u)]
        for start in range(0, len(valid), self._uid_batch):
            batch = valid[start : start + self._uid_batch]
            query = QidoQuery.build(level, {key: uid_list(batch)}, fields=fields)
            rows += (await self._fetch(fresh)(query)).rows
        return rows

    # -- read ---------------------------------------------------------------------------------------------------

    async def manifest(self, rid: str, resource_type: str, *, fresh: bool) -> tuple[mado.Manifest, str]:
        """The manifest an id names, and the form (``dicom`` | ``fhir``); NotFound otherwise."""
        decoded = mado.decode_document_id(rid)
        if decoded is not None:
            uid, form = decoded
            if resource_type == "DocumentReference" or form == "fhir":
                docs = await self._manifests.kos_documents({"SOPInstanceUID": uid_list([uid])}, fresh=fresh)
                docs = [d for d in docs if not d.is_rejection]
                doc = _one_per_manifest(docs).get(uid)
                if doc is not None:
                    return (await self.shown([doc], fresh=fresh))[0], form
        raise NotFound(f"{resource_type}/{rid[:70]} is not known")

    async def read(self, resource_type: str, rid: str, base: str, *, fresh: bool) -> Resource:
        """``DocumentReference/{id}`` (either form) or ``Bundle/{id}`` (the FHIR form's document)."""
        m, form = await self.manifest(rid, resource_type, fresh=fresh)
        ctx = self.context(base)
        if resource_type == "Bundle":
            resource = manifest_bundle(m, ctx, now=datetime.now(UTC).isoformat(timespec="seconds"))
        else:
            dicom, fhir = mado.document_references(m, ctx)
            resource = fhir if form == "fhir" else dicom
        await self._manifests.times.stamp_manifests([(resource, m.kos)], {})
        return resource


def subject_of(resource: Resource) -> str:
    """The Patient reference of a DocumentReference or of a document Bundle (its Composition's subject)."""
    if resource.get("resourceType") == "Bundle":
        reference: str = resource["entry"][0]["resource"]["subject"]["reference"]
        return reference
    ref: str = resource["subject"]["reference"]
    return ref


def _one_per_manifest(docs: Iterable[KeyObjectSelection]) -> dict[str, KeyObjectSelection]:
    """The copies of a cross-study KOS are one manifest: keyed by canonical UID, the canonical copy preferred
    (its WADO-RS URL then fetches an instance whose SOP Instance UID is the manifest's identifier)."""
    out: dict[str, KeyObjectSelection] = {}
    for d in docs:
        held = out.get(d.canonical_uid)
        if held is None or (d.sop_instance_uid == d.canonical_uid and held.sop_instance_uid != held.canonical_uid):
            out[d.canonical_uid] = d
    return out


def _and(current: set[str] | None, new: set[str]) -> set[str]:
    return new if current is None else current & new


def _is_uid_list_safe(uid: str) -> bool:
    return bool(uid) and all(c.isdigit() or c == "." for c in uid)


def _patient(m: mado.Manifest, mapping: MappingContext) -> Resource:
    """The manifest's Patient, from the study row of the KOS (the PACS's patient attributes)."""
    row = m.studies.get(m.kos.study_uid or "")
    if row is None:
        row = {k: {"vr": "LO", "Value": list(v)} for k, v in kos_patient_keys(m.kos).items()}
    return patient(row, mapping)


def _linked(res: Resource, m: mado.Manifest, links: dict[PatientKey, str] | None) -> Resource:
    """Point the subject at the EHR's Patient when the search came through its id (app.pacs.ehr)."""
    if not links:
        return res
    pid, issuer = m.kos.patient_id or "", m.kos.issuer_of_patient_id
    ehr_id = next((e for k, e in links.items() if k.patient_id == pid and (k.any_issuer or k.issuer == issuer)), None)
    if ehr_id is None:
        return res
    return res | {"subject": res["subject"] | {"reference": f"Patient/{ehr_id}"}}


def _codings(res: Resource, path: tuple[str, ...]) -> list[Resource]:
    """The Codings at ``type``, ``category`` or ``content.format``."""
    if path == ("type",):
        return list(res.get("type", {}).get("coding", []))
    if path == ("category",):
        return [c for cc in res.get("category", []) for c in cc.get("coding", [])]
    return [content["format"] for content in res.get("content", []) if "format" in content]


def _token_matches(codings: list[Resource], tokens: list[Token]) -> bool:
    return any(
        c.get("code") == t.code and (t.system is None or c.get("system", "") == t.system)
        for c in codings
        for t in tokens
    )


def _date_check(values: list[DateCriterion], zone: tzinfo | None) -> Callable[[KeyObjectSelection], bool]:
    """On the KOS ContentDate/Time; without a zone there is no ``date`` (an instant needs one), but the date still
    answers a date search, as a whole day (as ImagingSelection's ``issued``)."""

    def check(doc: KeyObjectSelection) -> bool:
        interval, _ = dicom_interval(doc.content_date, doc.content_time, doc.timezone_offset, zone)
        return interval is not None and any(v.matches(interval) for v in values)

    return check
