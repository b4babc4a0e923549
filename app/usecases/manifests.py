"""Key-image manifests: KOS documents in the PACS as R5 ImagingSelection (read and search), and the IOCM
rejection notes that hide instances from ImagingStudy.

QIDO-RS finds KOS instances (``/instances?Modality=KO``) but never returns their content (title, evidence,
content tree; verified on Orthanc, tests/integration/test_kos_orthanc.py), so each KOS is read once with WADO-RS
series metadata (PS3.18 §10.4) and kept: a stored SOP instance never changes (PS3.4 — a new version gets a new
SOP Instance UID), so the parsed documents live in an LRU cache with no TTL. The QIDO rows that list the KOS of a
patient are cached with the normal TTL, so new manifests show up.

    search parameter   QIDO-RS                                          checked on the parsed document
    patient, subject   PatientID (+IssuerOfPatientID) at instance level  PatientID, issuer
    identifier, _id    SOPInstanceUID list                               the selection's group, for _id
    study-uid,         the studies' PatientIDs (a KOS may be stored in   a referenced series in that study
    derived-from       another study of the patient, PS3.3 C.17.6.2.1)
    code               —                                                 the document title (CID 7010)
    issued             —                                                 ContentDate/ContentTime, FHIR prefixes
    body-site          —                                                 BodyPartExamined of the selected series
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from cachetools import LRUCache, TTLCache

from ..dicom import dicom_json as dj
from ..dicom.kos import KOS_SOP_CLASS_UID, KeyObjectSelection, NotKeyObjectSelection, parse_kos
from ..dicom.qido import QidoQuery, uid_list
from ..dicom.terminology import BODY_PARTS, SNOMED_SYSTEM
from ..errors import NotFound, TooCostly
from ..fhir import bundle, selection_ids
from ..fhir.dates import DateCriterion, dicom_interval
from ..fhir.search import PatientKey, SearchRequest, Token
from ..fhir.search_params import IMAGING_SELECTION
from ..fhir.subsetting import drop_narrative, subset
from ..mapping.imaging_selection import imaging_selections
from ..mapping.imaging_study import MappingContext
from ..pacs.upstream import QidoResult
from ..planning.plan import patient_check, put_pattern
from .last_updated import ChangeTimes

Fetch = Callable[[QidoQuery], Awaitable[QidoResult]]
SeriesMetadata = Callable[[str, str], Awaitable[list[dict[str, Any]]]]
Resource = dict[str, Any]
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SCHEMES = {"DCM": DCM, "SCT": SNOMED_SYSTEM, "LN": "http://loinc.org"}
KO_FIELDS = ("00080016", "00080018", "0020000D", "0020000E", "00100020", "00100021")


@dataclass(frozen=True)
class ManifestLimits:
    rows: int  # KOS instance rows one search may read (prequery_limit)
    series_fetches: int = 50  # uncached KO series whose metadata one request may read
    concurrency: int = 4  # metadata requests in flight at once (Orthanc serialises them anyway)


class KosDocuments:
    """Parsed KOS documents by SOP Instance UID: immutable, so cached without expiry (LRU-bounded)."""

    def __init__(
        self, metadata: SeriesMetadata, limits: ManifestLimits, *, max_documents: int = 20000, series_ttl: float = 60
    ) -> None:
        self._metadata = metadata
        self._limits = limits
        self._docs: LRUCache[str, KeyObjectSelection | None] = LRUCache(maxsize=max_documents)
        self._series: TTLCache[tuple[str, str], tuple[str, ...]] = TTLCache(maxsize=10000, ttl=series_ttl or 1)

    async def of_rows(self, rows: Iterable[dj.Dataset]) -> list[KeyObjectSelection]:
        """The KOS documents among these QIDO instance rows (any level's rows that carry the SOP attributes)."""
        wanted: dict[str, tuple[str, str]] = {}
        for row in rows:
            if dj.text(row, dj.SOP_CLASS_UID) != KOS_SOP_CLASS_UID:  # nearly every row: one lookup and on
                continue
            sop, study, series = (dj.text(row, t) for t in (dj.SOP_INSTANCE_UID, dj.STUDY_UID, dj.SERIES_UID))
            if sop and study and series:
                wanted[sop] = (study, series)
        if not wanted:
            return []
        await self._load(sorted({where for sop, where in wanted.items() if sop not in self._docs}))
        docs = [self._docs.get(sop) for sop in wanted]
        return [d for d in docs if d is not None]

    async def in_series(self, pairs: Iterable[tuple[str, str]]) -> list[KeyObjectSelection]:
        """The KOS documents of these (study, series) pairs, when only series rows are known (``_summary=true``).
        Which documents a series holds is kept for the cache TTL only: another system may add one to the series."""
        pairs = list(dict.fromkeys(pairs))
        await self._load([p for p in pairs if p not in self._series])
        return [d for p in pairs for sop in self._series.get(p, ()) if (d := self._docs.get(sop)) is not None]

    async def _load(self, missing: list[tuple[str, str]]) -> None:
        """Read and parse the metadata of these series (a bounded number, a few at a time)."""
        if len(missing) > self._limits.series_fetches:
            raise TooCostly(f"more than {self._limits.series_fetches} unread manifest series; narrow the search")
        gate = asyncio.Semaphore(self._limits.concurrency)

        async def load(study: str, series: str) -> None:
            async with gate:
                datasets = await self._metadata(study, series)
            found = []
            for ds in datasets:
                try:
                    doc = parse_kos(ds)
                except NotKeyObjectSelection:
                    continue
                self._docs[doc.sop_instance_uid] = doc
                found.append(doc.sop_instance_uid)
            self._series[(study, series)] = tuple(found)

        await asyncio.gather(*(load(study, series) for study, series in missing))

    async def rejected(self, rows: Iterable[dj.Dataset]) -> frozenset[str]:
        """SOP Instance UIDs rejected by the IOCM rejection notes among these rows (and the notes themselves are
        kept: they are documents of the study, not content to hide)."""
        docs = await self.of_rows(rows)
        return frozenset(r.sop_instance_uid for d in docs if d.is_rejection for r in d.references)


class Manifests:
    def __init__(
        self,
        fetch: Callable[[bool], Fetch],
        documents: KosDocuments,
        mapping: MappingContext,
        limits: ManifestLimits,
        include_studies: Callable[[list[str], bool], Awaitable[list[Resource]]],
        endpoint: Callable[[str], Resource],
        times: ChangeTimes | None = None,
    ) -> None:
        """``times``: when the studies the KOS documents are stored in changed (``_lastUpdated``, meta)."""
        self._fetch = fetch
        self.documents = documents
        self._mapping = mapping
        self._limits = limits
        self._include_studies = include_studies
        self._endpoint = endpoint
        self.times = times or ChangeTimes()

    async def search(self, req: SearchRequest, base: str, *, fresh: bool) -> Resource:
        def link(offset: int) -> str:
            return bundle.search_url(base, "ImagingSelection", req.link_params(offset=offset))

        found, docs, stamps = ([], {}, {}) if req.matches_nothing else await self._matching(req, fresh)
        found.sort(key=lambda r: (r.get("issued", ""), r["id"]), reverse=True)  # newest first, stable
        window = [] if req.summary == "count" else found[req.offset : req.offset + req.count]
        await self.times.stamp_manifests([(s, docs[_kos_uid(s)]) for s in window], stamps)
        window = subset(window, req, IMAGING_SELECTION.mandatory)
        drop_narrative(window, req)
        included: list[Resource] = []
        if window and "ImagingSelection:derived-from" in req.includes:
            included += await self._include_studies(sorted({r["studyUid"] for r in window}), fresh)
        if window and "ImagingSelection:endpoint" in req.includes:
            included.append(self._endpoint(base))
        return bundle.counted_searchset(
            base,
            window,
            link=link,
            offset=req.offset,
            count=req.count,
            total=len(found),
            counting=req.summary == "count",
            included=included,
        )

    async def read(self, rid: str, *, fresh: bool) -> Resource:
        decoded = selection_ids.decode(rid)
        if decoded is not None:
            kos_uid, group = decoded
            docs = await self._documents({"SOPInstanceUID": kos_uid}, fresh)
            for doc in docs:
                selections = selections_of(doc, self._mapping)
                if doc.canonical_uid == kos_uid and group < len(selections):
                    (found,) = await self.with_body_sites([selections[group]], fresh=fresh)
                    await self.times.stamp_manifests([(found, doc)], {})
                    return found
        raise NotFound(f"ImagingSelection/{rid[:70]} is not known")

    async def _matching(
        self, req: SearchRequest, fresh: bool
    ) -> tuple[list[Resource], dict[str, KeyObjectSelection], dict[str, str]]:
        """The selections, their documents by canonical UID, and the documents' last changes if the search asked."""
        keys: dict[str, str] = {}
        doc_checks: list[Callable[[KeyObjectSelection], bool]] = []
        for c in req.all("patient") + req.all("subject"):
            pkeys: list[PatientKey] = list(c.values)
            doc_checks.append(doc_check(patient_check(pkeys)))
            if "PatientID" not in keys:
                put_pattern(keys, "PatientID", [k.patient_id for k in pkeys])
        sop_uids: set[str] | None = None
        groups: dict[str, set[int]] | None = None
        for c in req.all("identifier"):
            sop_uids = set(c.values) if sop_uids is None else sop_uids & set(c.values)
        for c in req.all("_id"):
            decoded = [d for rid in c.values if (d := selection_ids.decode(rid)) is not None]
            ids_here: dict[str, set[int]] = {}
            for uid, k in decoded:
                ids_here.setdefault(uid, set()).add(k)
            groups = ids_here if groups is None else {u: g & ids_here.get(u, set()) for u, g in groups.items()}
            sop_uids = set(ids_here) if sop_uids is None else sop_uids & set(ids_here)
        if sop_uids is not None:
            if not sop_uids:
                return [], {}, {}
            keys["SOPInstanceUID"] = uid_list(sorted(sop_uids))
        studies: set[str] | None = None
        for c in req.all("study-uid") + req.all("derived-from"):
            studies = set(c.values) if studies is None else studies & set(c.values)
        if studies is not None:
            if not studies:
                return [], {}, {}
            if "PatientID" not in keys and "SOPInstanceUID" not in keys:
                # A KOS can live in another study of the patient: ask for the patients' KOS, keep the matches.
                patients = await self._patients_of(sorted(studies), fresh)
                if not patients:
                    return [], {}, {}
                put_pattern(keys, "PatientID", patients)
        docs = await self._documents(keys, fresh)
        for c in req.all("issued"):
            doc_checks.append(_issued_check(list(c.values), self._mapping.zone))
        docs = [d for d in docs if not d.is_rejection and all(check(d) for check in doc_checks)]
        docs = list({d.canonical_uid: d for d in docs}.values())  # the copies of a cross-study KOS are one manifest
        docs, stamps = await self.times.manifests_as_asked(docs, req.last_updated)
        selections = [s for d in docs for s in selections_of(d, self._mapping)]
        if groups is not None:
            selections = [s for s in selections if _group_of(s) in groups.get(_kos_uid(s), set())]
        if studies is not None:
            selections = [s for s in selections if s.get("studyUid") in studies]
        for c in req.all("code"):
            selections = [s for s in selections if _code_matches(s, list(c.values))]
        selections = await self.with_body_sites(selections, fresh=fresh)
        for c in req.all("bodysite"):
            terms = set(c.values)
            selections = [s for s in selections if terms & set(_body_terms(s))]
        return selections, {d.canonical_uid: d for d in docs}, stamps

    async def kos_documents(self, keys: dict[str, str], *, fresh: bool) -> list[KeyObjectSelection]:
        """The KOS documents whose instance rows match these QIDO keys (Modality KO added; bounded like a search),
        for the other views of the same manifests (app.usecases.documents: R4 DocumentReference)."""
        return await self._documents(keys, fresh)

    async def patients_of(self, studies: list[str], *, fresh: bool) -> list[str]:
        """The PatientIDs of these studies (a KOS may be stored in another study of the patient)."""
        return await self._patients_of(studies, fresh)

    async def _documents(self, keys: dict[str, str], fresh: bool) -> list[KeyObjectSelection]:
        query = QidoQuery.build("instances", keys | {"Modality": "KO"}, fields=KO_FIELDS, limit=self._limits.rows + 1)
        rows = (await self._fetch(fresh)(query)).rows
        if len(rows) > self._limits.rows:
            raise TooCostly(f"more than {self._limits.rows} manifests match; narrow the search (e.g. by patient)")
        return await self.documents.of_rows(rows)

    async def _patients_of(self, studies: list[str], fresh: bool) -> list[str]:
        query = QidoQuery.build("studies", {"StudyInstanceUID": uid_list(studies)}, fields=("00100021",))
        rows = (await self._fetch(fresh)(query)).rows
        return sorted({pid for r in rows if (pid := dj.text(r, dj.PATIENT_ID))})

    async def with_body_sites(self, selections: list[Resource], *, fresh: bool) -> list[Resource]:
        """ImagingSelection.bodySite from the selected series' BodyPartExamined (one series-level query): one
        CodeableReference(BodyStructure), the element being 0..1 in R5 (imagingselection.html)."""
        series = sorted({s["seriesUid"] for s in selections if s.get("seriesUid")})
        if not series:
            return selections
        query = QidoQuery.build("series", {"SeriesInstanceUID": uid_list(series)}, fields=("00180015",))
        rows = (await self._fetch(fresh)(query)).rows
        parts = {dj.text(r, dj.SERIES_UID): dj.text(r, dj.BODY_PART) for r in rows}
        out = []
        for s in selections:
            term = parts.get(s.get("seriesUid"))
            site = BODY_PARTS.get(term or "")
            if site is not None:
                code, display = site
                concept = {"coding": [{"system": SNOMED_SYSTEM, "code": code, "display": display}], "text": term}
                s = s | {"bodySite": {"concept": concept}}
            elif term:
                s = s | {"bodySite": {"concept": {"text": term}}}
            out.append(s)
        return out


def doc_check(row_check: Callable[[dj.Dataset], bool]) -> Callable[[KeyObjectSelection], bool]:
    """A planner's row check (patient keys) applied to a KOS document's own Patient module."""
    return lambda doc: row_check(kos_patient_keys(doc))


def kos_patient_keys(doc: KeyObjectSelection) -> dj.Dataset:
    """PatientID and IssuerOfPatientID of a KOS as a slim row (the shape app.planning checks read)."""
    row: dj.Dataset = {}
    if doc.patient_id:
        row[dj.PATIENT_ID] = (doc.patient_id,)
    if doc.issuer_of_patient_id:
        row[dj.ISSUER_OF_PATIENT_ID] = (doc.issuer_of_patient_id,)
    return row


def selections_of(doc: KeyObjectSelection, mapping: MappingContext) -> list[Resource]:
    """The ImagingSelections of a KOS, named by its canonical UID; a cross-study KOS's copies (PS3.3 C.17.6.2.1)
    all stand in ``identifier``, so a search by any copy's UID finds the one manifest."""
    resources = imaging_selections(dataclasses.replace(doc, sop_instance_uid=doc.canonical_uid), mapping)
    if doc.identical:
        copies = sorted({doc.sop_instance_uid, *doc.identical})
        for r in resources:
            r["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"} for uid in copies]
    return resources


def _kos_uid(selection: Resource) -> str:
    decoded = selection_ids.decode(selection["id"])
    return decoded[0] if decoded else ""


def _group_of(selection: Resource) -> int:
    decoded = selection_ids.decode(selection["id"])
    return decoded[1] if decoded else -1


def _code_matches(selection: Resource, tokens: list[Token]) -> bool:
    codings = selection.get("code", {}).get("coding", [])
    return any(
        c.get("code") == t.code and (t.system is None or c.get("system") == t.system) for c in codings for t in tokens
    )


def _issued_check(values: list[DateCriterion], zone: tzinfo | None) -> Callable[[KeyObjectSelection], bool]:
    """On the document's ContentDate/Time: without a zone (none in the KOS, no PACS zone set) ImagingSelection
    carries no ``issued`` (an instant needs one), but the date still answers a date search, as a whole day."""

    def check(doc: KeyObjectSelection) -> bool:
        interval, _ = dicom_interval(doc.content_date, doc.content_time, doc.timezone_offset, zone)
        return interval is not None and any(v.matches(interval) for v in values)

    return check


def _body_terms(selection: Resource) -> list[str]:
    text = selection.get("bodySite", {}).get("concept", {}).get("text")
    return [text] if text else []
