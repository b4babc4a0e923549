"""IOCM rejection notes applied to what ImagingStudy shows and finds (IHE RAD TF-2 Rejection Note; KOS titles 113001,
113037, 113038, 113039). Orthanc keeps rejected instances (it does not apply IOCM), so the facade leaves them out:
from a page's instance rows (:meth:`RejectedInstances.hide`), from the counts when only series rows are known
(``_summary=true``, :meth:`~RejectedInstances.lower_counts`), and from the rows of the series/instance-level
pre-queries (:meth:`~RejectedInstances.screen`), so that a search cannot find a study through an instance it does
not show. The pure rules are app.dicom.rejections; this module reads the notes (QIDO, then their cached content).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..dicom import dicom_json as dj
from ..dicom import rejections
from ..dicom.qido import QidoQuery, uid_list
from ..dicom.rejections import StudyRows
from ..errors import TooCostly
from ..planning.plan import Prequery
from .manifests import KO_FIELDS, KosDocuments
from .studies import Fetch, Screen


class RejectedInstances:
    """``documents``: the cached KOS reader; None when rejected instances are shown (hide_rejected = false)."""

    def __init__(self, documents: KosDocuments | None, *, uid_batch: int, row_limit: int) -> None:
        self._documents = documents
        self._uid_batch = uid_batch
        self._row_limit = row_limit

    async def hide(self, studies: list[StudyRows]) -> list[StudyRows]:
        """Instances a rejection note rejects are not shown. The notes are KOS instances of the studies, already in
        the instance rows; only their content costs a (cached) read."""
        if self._documents is None:
            return studies
        rejected = await self._documents.rejected(r for _, rows in studies for r in rows)
        return rejections.drop_instances(studies, rejected)

    async def rejected_in(self, rows: list[dj.Dataset]) -> frozenset[str]:
        """SOP Instance UIDs the rejection notes among these instance rows reject (none when shown): what the
        WADO-RS gateway must not serve (app.usecases.retrieve)."""
        return frozenset() if self._documents is None else await self._documents.rejected(rows)

    async def lower_counts(self, studies: list[StudyRows]) -> list[StudyRows]:
        """The ``_summary=true`` form of :meth:`hide`: with series rows only, the rejection notes are found through
        the KO series' metadata (app.dicom.rejections lowers the counts to match)."""
        if self._documents is None:
            return studies
        ko = rejections.ko_series(studies)
        docs = await self._documents.in_series(ko) if ko else []
        return rejections.lower_series_counts(studies, docs)

    def screen(self, fetch: Fetch) -> Screen | None:
        """:meth:`screen_rows` in the form the FHIR search's pre-queries take."""
        screen = self.screen_rows(fetch)
        if screen is None:
            return None

        async def prequery(pre: Prequery, rows: list[dj.Dataset]) -> list[dj.Dataset]:
            return await screen(pre.query.level, rows)

        return prequery

    def recount(self, fetch: Fetch) -> Callable[[str, list[dj.Dataset]], Awaitable[list[dj.Dataset]]] | None:
        """IOCM for the WADO-RS gateway's search answers (app.usecases.gateway_search), rows of any QIDO level:
        instance rows of rejected instances go (:meth:`screen_rows`); series rows get their instance counts
        lowered, and go when none is left; study rows get their series and instance counts and ModalitiesInStudy
        as the series still shown. None when rejected instances are shown.

        Cost, only for rows of studies that hold a rejection note: the notes' QIDO row query (as for the FHIR
        search), one instance query of the rejected SOP Instance UIDs (which of them the PACS holds), and for study
        rows one series query of the studies concerned; all cached like any."""
        screen = self.screen_rows(fetch)
        documents = self._documents
        if screen is None or documents is None:
            return None
        batch, limit = self._uid_batch, self._row_limit

        async def recount(level: str, rows: list[dj.Dataset]) -> list[dj.Dataset]:
            if level == "instances":
                return await screen(level, rows)
            studies = sorted({uid for r in rows if (uid := dj.text(r, dj.STUDY_UID))})
            notes = await _rows_of(fetch, batch, limit, "instances", "StudyInstanceUID", studies, {"Modality": "KO"})
            rejected = rejections.rejected_references(await documents.of_rows(notes))
            if not rejected:
                return rows
            sops = sorted({sop for _, sop in rejected})
            present = await _rows_of(fetch, batch, limit, "instances", "SOPInstanceUID", sops, {}, ())
            if level == "series":
                return rejections.recount_series(rows, present)
            touched = sorted({uid for r in present if (uid := dj.text(r, dj.STUDY_UID))})
            series = await _rows_of(fetch, batch, limit, "series", "StudyInstanceUID", touched, {}, ())
            return rejections.recount_studies(rows, rejections.recount_series(series, present), touched)

        return recount

    def screen_rows(self, fetch: Fetch) -> Callable[[str, list[dj.Dataset]], Awaitable[list[dj.Dataset]]] | None:
        """IOCM for the series/instance-level criteria: a study found only through rejected instances is not found
        (the search must agree with the content, :meth:`hide`). The rejection notes of the studies the pre-query
        found are read like a page's: KO instance rows, their content from the cached documents.

        Cost, only when the pre-query found something: one QIDO query per ``uid_batch`` of those studies (cached
        like any), plus the metadata of KO series not read before (app.usecases.manifests, bounded); for a series
        row whose instances may all be rejected, one more instance-level query of such series."""
        documents = self._documents
        if documents is None:
            return None
        batch, limit = self._uid_batch, self._row_limit

        async def rows_of(key: str, uids: list[str], more: dict[str, str], fields: tuple[str, ...]) -> list[dj.Dataset]:
            return await _rows_of(fetch, batch, limit, "instances", key, uids, more, fields)

        async def screen(level: str, rows: list[dj.Dataset]) -> list[dj.Dataset]:
            """``rows``: series or instance rows (QIDO ``level``); the WADO-RS gateway's searches use it too."""
            studies = sorted({uid for r in rows if (uid := dj.text(r, dj.STUDY_UID))})
            notes = await rows_of("StudyInstanceUID", studies, {"Modality": "KO"}, KO_FIELDS)
            rejected = rejections.rejected_references(await documents.of_rows(notes))
            if not rejected:
                return rows
            if level == "instances":
                return rejections.screen_instances(rows, rejected)
            doubtful = rejections.doubtful_series(rows, rejected)
            instances = await rows_of("SeriesInstanceUID", doubtful, {}, ()) if doubtful else []
            return rejections.screen_series(rows, doubtful, instances, rejected)

        return screen


async def _rows_of(
    fetch: Fetch,
    batch: int,
    limit: int,
    level: str,
    key: str,
    uids: list[str],
    more: dict[str, str],
    fields: tuple[str, ...] = KO_FIELDS,
) -> list[dj.Dataset]:
    """Rows at ``level`` whose ``key`` is one of ``uids`` (one UID list per ``batch``); TooCostly past ``limit``."""
    out: list[dj.Dataset] = []
    for i in range(0, len(uids), batch):
        keys = {key: uid_list(uids[i : i + batch])} | more
        rows = (await fetch(QidoQuery.build(level, keys, fields=fields, limit=limit + 1))).rows
        if len(rows) > limit:
            raise TooCostly("too many manifests or rejected instances to check in the studies found; narrow the search")
        out += rows
    return out
