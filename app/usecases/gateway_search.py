"""QIDO-RS through the WADO-RS gateway (issue 20): a search at any level, under the caller's scope, paged exactly.

    searches = GatewaySearch(facade, wado)
    found = await searches.search(parse_qido("studies", items), patient="p…", capability_study=None,
                                  study=None, series=None, public_base=address)
    found.body, found.warnings            # DICOM JSON (RetrieveURL/BulkDataURI under ``public_base``), Warning values

* **Scope** (rule 1): a patient-context token's patient becomes its PACS keys (PatientID + issuer, an EHR id
  resolved, as for the FHIR API), a capability its study, the path its study and series; app.planning.gateway_qido
  forces them into the PACS query and checks every row. IOCM-rejected instances never appear: their instance rows
  go, series and study rows count only the instances still served (a series left with none goes) and name only
  the modalities still shown, and a ModalitiesInStudy search is asked again of the rows so narrowed
  (app.usecases.rejected, with the FHIR search's rules).
* **In-study searches** (``studies/{s}/series``...) are asked as the level's search with the study's (and
  series') UID as a key: the rows then carry the patient and study attributes every check reads (PS3.18
  §10.6.3.3 lets a server return more attributes than asked for), and no path of the client's reaches the PACS.
* **Paging** (rule 3; PS3.18 §8.3.4.4): when no row can fail the checks, the PACS pages (``limit + 1`` rows tell
  whether more exist; with ModalitiesInStudy from offset 0 and cut here, the Orthanc 1.10 quirk of
  app.usecases.studies). When rows can fail them (a widened value, a patient check, IOCM), a first page is still
  asked of the PACS and kept if nothing in it was left out; otherwise, and for any later page, the matches are
  read from the first, checked, and the page cut from what is left, so pages never overlap or skip (a later page
  past the ``max_rows`` that can be read that way is 400 too-costly, as the FHIR side's deep modality pages are).
* **Truncation**: one answer holds at most ``max_rows`` (the FHIR side's ``prequery_limit``, ``instance_limit`` at
  instance level, so a whole large study can be listed). A search with more matches than the client's limit (or
  than that bound, with no limit) is answered with its first rows and ``Warning: 299`` saying so (PS3.18
  §8.3.4.4; the text is the standard's). ``fuzzymatching=true`` is answered with literal matching and its own
  Warning (§8.3.4.2).
"""

from __future__ import annotations

import orjson

from ..dicom import dicom_json as dj
from ..dicom.qido import QidoQuery
from ..dicom.qido_rs import QidoRequest
from ..dicom.wado_rewrite import rewrite_dicom_json
from ..errors import TooCostly, UpstreamBadResponse
from ..pacs.federation import WadoSource, each_source
from ..pacs.wado import WadoUpstream
from ..planning import fanout
from ..planning.gateway_qido import GatewayPlan, Scope, plan_gateway
from .service import Facade
from .studies import OFFSET_BROKEN_BY

__all__ = ["Found", "GatewaySearch"]

TRUNCATED = "The number of results exceeded the maximum supported by the server. Additional results can be requested."
FUZZY = "The fuzzymatching parameter is not supported. Only literal matching has been performed."


class Found:
    """A search's answer: the DICOM JSON body and the ``Warning`` header values (RFC 7234 §5.5 form)."""

    def __init__(self, body: bytes, warnings: list[str], rows: int) -> None:
        self.body = body
        self.warnings = warnings
        self.rows = rows


class GatewaySearch:
    def __init__(self, facade: Facade, wados: list[WadoSource], *, max_json_bytes: int) -> None:
        self.facade = facade
        self.wados = wados
        self.max_json_bytes = max_json_bytes

    async def search(
        self,
        req: QidoRequest,
        *,
        patient: str | None,
        capability_study: str | None,
        study: str | None,
        series: str | None,
        public_base: str,
        agent: str,
    ) -> Found:
        """``patient``: the token's patient context (a FHIR Patient id), None when unconfined; ``agent``: the
        warn-agent of Warning values (the gateway's host)."""
        # Keys as the FHIR API confines a search (app.usecases.service): ours decode, an EHR id is looked up.
        patients = None if patient is None else tuple(await self.facade.subject_keys(patient))
        plan = plan_gateway(req, Scope(patients, capability_study), study=study, series=series)
        notes = [FUZZY] if req.fuzzy else []
        rows, truncated = ([], False) if plan.nothing else await self._page(req, plan)
        if truncated:
            notes.append(TRUNCATED)
        body = orjson.dumps(rewrite_dicom_json(rows, public_base))
        return Found(body, [f'299 {agent} "{note}"' for note in notes], len(rows))

    def max_rows(self, level: str) -> int:
        s = self.facade.settings
        return s.instance_limit if level == "instances" else s.prequery_limit

    async def _page(self, req: QidoRequest, plan: GatewayPlan) -> tuple[list[dj.Dataset], bool]:
        """The page's rows, and whether more matches exist than the answer holds and the client's limit allows
        for (module docstring)."""
        bound = self.max_rows(req.level)
        want = min(req.limit or bound, bound)
        capped = req.limit is None or req.limit > bound
        # IOCM can leave rows out: series and instance rows, and study rows whose ModalitiesInStudy no longer matches.
        recount = self.facade.rejected.recount(self.facade._fetcher(False))
        modalities = req.match(dj.MODALITIES_IN_STUDY)
        screened = recount is not None and (req.level != "studies" or (modalities is not None and modalities.values))
        broken = req.level == "studies" and OFFSET_BROKEN_BY in plan.keys and req.offset > 0
        if req.offset == 0 or (plan.exact and not screened):
            if broken and req.offset + want > bound:
                raise TooCostly(f"a ModalitiesInStudy search page past the first {bound} studies is too costly")
            limit, offset = (req.offset + want + 1, 0) if broken else (want + 1, req.offset)
            rows = await self._rows(req.level, plan, limit=limit, offset=offset)
            if broken:
                rows = rows[req.offset :]
            more = len(rows) > want
            page = rows[:want]
            kept = await self._kept(req, plan, page)
            if len(kept) == len(page) or not more:  # nothing left out, or only from the last matches
                return kept, more and capped
        rows = await self._rows(req.level, plan, limit=bound + 1, offset=0)
        over = len(rows) > bound
        kept = await self._kept(req, plan, rows[:bound])
        page = kept[req.offset : req.offset + want]
        if over and req.offset and len(page) < want:
            # The page reaches past the rows that could be checked: a later page would skip or repeat rows.
            raise TooCostly(f"a page past the first {bound} matches of this search is too costly; narrow the search")
        more = len(kept) > req.offset + want
        return page, over or (more and capped)

    async def _kept(self, req: QidoRequest, plan: GatewayPlan, rows: list[dj.Dataset]) -> list[dj.Dataset]:
        """The rows that pass the checks, with IOCM applied (app.usecases.rejected.RejectedInstances.recount)."""
        kept = [r for r in rows if plan.accepts(r)]
        recount = self.facade.rejected.recount(self.facade._fetcher(False))
        if recount is None or not kept:
            return kept
        kept = await recount(req.level, kept)
        modalities = req.match(dj.MODALITIES_IN_STUDY)
        return [r for r in kept if modalities.accepts(r)] if modalities is not None else kept

    async def _rows(self, level: str, plan: GatewayPlan, *, limit: int, offset: int) -> list[dj.Dataset]:
        query = QidoQuery.build(level, plan.keys, fields=plan.fields, limit=limit, offset=offset)
        if len(self.wados) == 1 and self.wados[0].domain is None:  # one PACS: asked as it is
            return await self._asked(self.wados[0].wado, query)

        async def one(source: WadoSource) -> list[dj.Dataset]:
            rows = await self._asked(source.wado, fanout.source_query(query, source.domain))
            return fanout.stamp(rows, source.domain) if source.domain else rows

        # Several archives (issue 21): asked at once, merged by UID, the window cut (app.planning.fanout).
        answers = await each_source(self.wados, one)
        return fanout.merge(level, [rows for _, rows in answers], offset=offset, limit=limit)

    async def _asked(self, wado: WadoUpstream, query: QidoQuery) -> list[dj.Dataset]:
        answer = await wado.search(query)
        if answer.status == 204:  # no match (PS3.18 §8.3.4.4 lets a server say so)
            await answer.aclose()
            return []
        await answer.raise_for_status()
        return datasets(await answer.read(self.max_json_bytes))


def datasets(raw: bytes) -> list[dj.Dataset]:
    """A DICOM JSON answer's datasets (a bare object is one; PS3.18 F.2.1.1); 502 when it is not DICOM JSON."""
    try:
        data = orjson.loads(raw) if raw.strip() else []
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("the PACS sent a response that is not JSON") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UpstreamBadResponse("the PACS sent JSON that is not DICOM JSON")
    return [d for d in data if isinstance(d, dict)]
