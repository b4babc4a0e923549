"""WADO-RS retrieval through the gateway (issue 12): which study may be served, what the PACS is asked, and how its
answer is re-wrapped before it reaches the client (shared/docs/wado-gateway.md).

    retrieval = Retrieval(facade, wado)
    study = await retrieval.study("1.2.3", patient=None)                      # 404: unknown, another patient's
    body = await retrieval.body(parse_wado_path(...), study, accept=..., query="", public_base=address)
    async for chunk in body.chunks: ...                                       # aclose() closes the PACS answer

Rules (issue 12):

* **Authorization of the study** (Rule 1): the study must exist in the PACS (its QIDO row, from the facade's cache)
  and, under a patient context, be that patient's — the same test as an ImagingStudy read, so a study the FHIR API
  answers 404 is 404 here. A series or instance that is not among the study's instance rows is 404 without asking
  the PACS; the PACS is asked only the full ``studies/{s}/series/{se}/...`` path built from validated UIDs
  (:class:`app.dicom.wado_rewrite.WadoPath`), so nothing outside the authorized study is reachable.
* **Streaming** (Rule 2): multipart answers are re-wrapped part by part (app.dicom.multipart), never held whole;
  their length is then unknown, so no Content-Length is passed on. Rendered images pass unchanged, with the
  PACS's Content-Length. Metadata is read whole, bounded by :data:`MAX_JSON_BYTES`, because every BulkDataURI in
  it must be rewritten (Orthanc builds it in memory too, §3). Searches (QIDO-RS, in a study or not) are
  :attr:`Retrieval.searches`, app.usecases.gateway_search.
* **Nothing points at the PACS** (Rule 3): BulkDataURI, RetrieveURL and part Content-Location are rewritten by path
  to ``public_base`` (app.dicom.wado_rewrite), or left out; only content headers of parts are kept.
* **IOCM** (Rule 4): a rejected instance's own routes are 404; metadata and search answers leave rejected
  instances out; a study or series retrieve that would include one is made of the series that hold none (one
  request each) and, for the series that do, of their other instances one by one, all under one new boundary.
  Study and series ``rendered`` then render the first instance that is not rejected.
* **Several archives** (issue 21, rule 7): which archive holds which instance of the study is read from each one's
  cached instance rows. A study, series or instance held whole by one archive is asked of it (the first in
  configuration order); one split over several is made of each series from an archive that holds it whole, else
  of its instances one by one from the first that holds each, all under one boundary; metadata is read from every
  archive that holds part of the target and joined (each SOP Instance once).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

import orjson

from ..dicom import dicom_json as dj
from ..dicom import multipart as mp
from ..dicom.media_type import boundary_of, rendered_accept, retrieve_accept, with_boundary
from ..dicom.qido import QidoQuery
from ..dicom.wado_rewrite import WadoPath, drop_instances, rewrite_dicom_json, rewrite_part_headers
from ..errors import NotFound, UpstreamBadResponse
from ..fhir import patient_ids
from ..pacs.federation import FederatedQido, WadoSource
from ..pacs.request_scope import CACHE_SCOPE
from ..pacs.wado import WadoAnswer, WadoUpstream
from .gateway_search import GatewaySearch, datasets
from .service import Facade

__all__ = ["MAX_JSON_BYTES", "AuthorizedStudy", "Body", "Retrieval"]

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 256 * 1024 * 1024  # metadata of a 2,000-instance CT study is ~10 MB
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class AuthorizedStudy:
    """A study the caller may retrieve: its UID, its subject's Patient id (for the audit line), the instance rows
    the facade knows (QIDO, instance level) and the SOP Instance UIDs that IOCM rejection notes reject."""

    uid: str
    patient: str
    instances: tuple[dj.Dataset, ...]
    rejected: frozenset[str]
    # (archive, the SOP Instance UIDs it holds), in configuration order; empty: the one PACS holds it all
    holders: tuple[tuple[str, frozenset[str]], ...] = ()

    def sops(self, series: str | None = None, instance: str | None = None) -> set[str]:
        """The instances a target spans (rejected ones included: the PACS is asked for what it holds)."""
        if instance is not None:
            return {instance}
        rows = self.instances if series is None else self.series_instances(series)
        return {sop for r in rows if (sop := dj.text(r, dj.SOP_INSTANCE_UID))}

    def holder(self, sops: set[str]) -> str | None:
        """The first archive that holds all of ``sops``; with one PACS, "" (it holds everything)."""
        if not self.holders:
            return ""
        return next((name for name, held in self.holders if sops <= held), None)

    def holding(self, sops: set[str]) -> list[str]:
        """Every archive that holds any of ``sops``."""
        return [name for name, held in self.holders if sops & held] if self.holders else [""]

    def series_instances(self, series: str) -> list[dj.Dataset]:
        return [r for r in self.instances if dj.text(r, dj.SERIES_UID) == series]

    def check(self, target: WadoPath) -> None:
        """404 for a series or instance that is not in this study, and for a rejected instance's own routes."""
        if target.series is not None:
            rows = self.series_instances(target.series)
            if not rows:
                raise NotFound("no such series in this study")
            if target.instance is not None:
                if target.instance in self.rejected:
                    raise NotFound("no such instance in this series")
                if not any(dj.text(r, dj.SOP_INSTANCE_UID) == target.instance for r in rows):
                    raise NotFound("no such instance in this series")

    def rejected_in(self, series: str | None) -> bool:
        """Whether the study (or one series of it) holds an instance that must not be served."""
        if not self.rejected:
            return False
        rows = self.instances if series is None else self.series_instances(series)
        return any(dj.text(r, dj.SOP_INSTANCE_UID) in self.rejected for r in rows)


class Chunks(Protocol):
    """Body bytes, and ``aclose()`` to close the PACS answer behind them whatever state they are in."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass
class Body:
    """What the gateway answers: status, Content-Type, a length only for bytes passed unchanged, and the chunks
    (:class:`Chunks`: ``aclose()`` closes the PACS answer behind them, even before the first chunk)."""

    status: int
    content_type: str | None
    chunks: Chunks
    length: str | None = None
    rewritten: bool = True


class Retrieval:
    """The gateway's use case over the facade (study rows, patient check, IOCM) and the streaming WADO-RS client."""

    def __init__(self, facade: Facade, wados: list[WadoSource], *, max_json_bytes: int = MAX_JSON_BYTES) -> None:
        self.facade = facade
        self.wados = {w.name: w.wado for w in wados}
        self.wado = wados[0].wado
        self.max_json_bytes = max_json_bytes
        self.searches = GatewaySearch(facade, wados, max_json_bytes=max_json_bytes)

    async def study(self, uid: str, *, patient: str | None) -> AuthorizedStudy:
        """The study if this caller may retrieve it (module docstring, Rule 1); NotFound otherwise."""
        row, instances, rejected = await self.facade.retrievable(uid, patient=patient)
        subject = patient_ids.encode(dj.text(row, dj.PATIENT_ID) or "", dj.text(row, dj.ISSUER_OF_PATIENT_ID))
        return AuthorizedStudy(uid, subject, tuple(instances), rejected, await self._holders(uid))

    async def _holders(self, uid: str) -> tuple[tuple[str, frozenset[str]], ...]:
        """Which archive holds which instance of the study: each one's instance rows (cached, as the FHIR side
        reads them); empty with one PACS."""
        qido = getattr(self.facade, "qido", None)
        if not isinstance(qido, FederatedQido):
            return ()
        query = QidoQuery.build("instances", {"StudyInstanceUID": uid}, limit=self.facade.settings.instance_limit * 5)
        answers = await qido.each(query, context=CACHE_SCOPE.get())
        return tuple(
            (source.name, frozenset(sop for r in found.rows if (sop := dj.text(r, dj.SOP_INSTANCE_UID))))
            for source, found in answers
        )

    def _wado(self, study: AuthorizedStudy, sops: set[str]) -> WadoUpstream:
        name = study.holder(sops)
        if name is None:  # split over archives: the caller asks for the parts
            raise NotFound("no archive that answered holds this")
        return self._archive(name)

    def _archive(self, name: str) -> WadoUpstream:
        """An archive by name; "" (a study of the one PACS, :meth:`AuthorizedStudy.holder`) is the one PACS."""
        return self.wados.get(name, self.wado)

    async def body(
        self, target: WadoPath, study: AuthorizedStudy, *, accept: str | None, query: str, public_base: str
    ) -> Body:
        """The answer for ``target`` (already parsed and validated) within ``study``; the PACS's errors raise
        before anything is sent (app.pacs.wado.refusal). ``query``: a rendered or thumbnail request's parameters,
        rebuilt (app.dicom.wado_rewrite.rendered_query); nothing else takes one."""
        if target.study != study.uid:
            raise NotFound("no such study")
        study.check(target)
        resource = target.resource
        if resource == "metadata":
            return await self._metadata(target, study, base=public_base)
        if resource in ("rendered", "thumbnail") or target.rendered:
            if resource == "thumbnail":  # the rendered resource, at a small viewport (app.dicom.wado_rewrite)
                target = replace(target, resource="rendered")
            if target.instance is None and study.rejected_in(target.series):
                target = self._first_kept(target, study)
            if study.holder(study.sops(target.series, target.instance)) is None:
                target = self._first_kept(target, study)  # split over archives: one that holds its first image
            # One image type to the PACS, however many the client listed (app.dicom.media_type.rendered_accept).
            wado = self._wado(study, study.sops(target.series, target.instance))
            return await self._passed(wado, target.path, accept=rendered_accept(accept or "image/jpeg"), query=query)
        # No preference (no Accept, */*): the standard's default, not whatever the PACS makes of it.
        accept = retrieve_accept(accept, resource)
        whole = study.holder(study.sops(target.series, target.instance))
        if resource in ("frames", "bulk"):
            return await self._rewrapped(
                [(self._wado(study, {target.instance or ""}), target.path)], accept, public_base
            )
        # A retrieve: study, series or instance.
        if whole is None or (target.instance is None and study.rejected_in(target.series)):
            return await self._rewrapped(self._units(target, study), accept, public_base)
        return await self._rewrapped([(self._archive(whole), target.path)], accept, public_base)

    # -- the kinds of answer

    async def _passed(self, wado: WadoUpstream, path: str, *, accept: str | None, query: str) -> Body:
        """Bytes passed unchanged (rendered images): status, type and length as the PACS sent them."""
        answer = await wado.open(path, accept=accept, query=query)
        await answer.raise_for_status()
        return Body(answer.status, answer.content_type, _chunks(answer), answer.content_length, rewritten=False)

    async def _metadata(self, target: WadoPath, study: AuthorizedStudy, *, base: str) -> Body:
        """Metadata: read, rejected instances left out, URLs rewritten. (Searches, QIDO-RS inside the study too,
        are app.usecases.gateway_search's.)"""
        found: list[dj.Dataset] = []
        seen: set[str] = set()
        for name in study.holding(study.sops(target.series, target.instance)):
            answer = await self._archive(name).open(target.path, accept=DICOM_JSON)
            await answer.raise_for_status()
            for d in datasets(await answer.read(self.max_json_bytes)):
                sop = dj.text(d, dj.SOP_INSTANCE_UID)
                if sop is None or sop not in seen:  # a copy held by two archives: once
                    seen.add(sop or "")
                    found.append(d)
        found = [d for d in found if _in(d, dj.STUDY_UID, study.uid)]
        if target.series is not None:
            found = [d for d in found if _in(d, dj.SERIES_UID, target.series)]
        body = orjson.dumps(rewrite_dicom_json(drop_instances(found, study.rejected), base))
        return Body(200, DICOM_JSON, _one(body), str(len(body)))

    async def _rewrapped(self, paths: list[tuple[WadoUpstream, str]], accept: str | None, base: str) -> Body:
        """The multipart answers to ``paths`` (each asked of its archive), in order, as one multipart body under a
        new boundary, part headers rewritten. The first answer's headers decide the status and type; a later one
        that is gone (404, deleted since the QIDO rows were read) is skipped, any other failure cuts the body (no
        close delimiter)."""
        first = await paths[0][0].open(paths[0][1], accept=accept)
        await first.raise_for_status()
        boundary = boundary_of(first.content_type or "")
        if boundary is None:
            if len(paths) == 1:  # a single-part answer (a PACS may send one for an instance or a frame): unchanged
                return Body(first.status, first.content_type, _chunks(first), first.content_length, rewritten=False)
            await first.aclose()
            raise UpstreamBadResponse("the PACS sent a retrieval answer that is not multipart")
        writer = mp.MultipartWriter()
        content_type = with_boundary(first.content_type or "", writer.boundary)

        def rewrite(headers: mp.Headers) -> list[tuple[str, str]]:
            return rewrite_part_headers(headers, base)

        async def chunks() -> AsyncGenerator[bytes, None]:
            answer: WadoAnswer | None = first
            upstream_boundary: str | None = boundary
            try:
                for i, (wado, path) in enumerate(paths):
                    if i:
                        # Each further request gets a budget of its own: the request's budget bounds the wait for
                        # the first headers, and a long study outlives it by design (app.pacs.wado).
                        answer = await wado.open(path, accept=accept, own_budget=True)
                        if answer.status == 404:
                            await answer.aclose()
                            continue
                        await answer.raise_for_status()
                        upstream_boundary = boundary_of(answer.content_type or "")
                        if upstream_boundary is None:
                            raise UpstreamBadResponse("the PACS sent a retrieval answer that is not multipart")
                    assert answer is not None and upstream_boundary is not None
                    async for piece in mp.rewrap(answer.chunks(), upstream_boundary, writer, rewrite, close=False):
                        yield piece
                    await answer.aclose()
                yield writer.close()
            finally:
                if answer is not None:
                    await answer.aclose()

        return Body(first.status, content_type, _Closing(chunks(), first))

    # -- IOCM

    def _units(self, target: WadoPath, study: AuthorizedStudy) -> list[tuple[WadoUpstream, str]]:
        """The requests that make up a study or series retrieve without its rejected instances, or split over
        archives (module doc): whole series where one archive can give them, else instance by instance."""
        if target.instance is not None:  # an instance no archive that answered holds
            raise NotFound("no archive that answered holds this instance")
        series = [target.series] if target.series else list(dict.fromkeys(_series_order(study)))
        paths: list[tuple[WadoUpstream, str]] = []
        for uid in series:
            rows = study.series_instances(uid)
            whole = study.holder(study.sops(uid))
            if whole is not None and not any(dj.text(r, dj.SOP_INSTANCE_UID) in study.rejected for r in rows):
                paths.append((self._archive(whole), replace(target, series=uid, instance=None).path))
                continue
            for r in rows:
                sop = dj.text(r, dj.SOP_INSTANCE_UID)
                if sop and sop not in study.rejected and (name := study.holder({sop})) is not None:
                    paths.append((self._archive(name), WadoPath(study.uid, uid, sop).path))
        if not paths:
            raise NotFound("every instance here is rejected (IOCM)")
        return paths

    def _first_kept(self, target: WadoPath, study: AuthorizedStudy) -> WadoPath:
        rows = study.series_instances(target.series) if target.series else list(study.instances)
        for r in sorted(rows, key=lambda r: (dj.text(r, dj.SERIES_UID) or "", dj.integer(r, dj.INSTANCE_NUMBER) or 0)):
            sop = dj.text(r, dj.SOP_INSTANCE_UID)
            if sop and sop not in study.rejected:
                return WadoPath(study.uid, dj.text(r, dj.SERIES_UID), sop, "rendered")
        raise NotFound("every instance here is rejected (IOCM)")


def _series_order(study: AuthorizedStudy) -> list[str]:
    return [uid for r in study.instances if (uid := dj.text(r, dj.SERIES_UID))]


def _in(ds: dj.Dataset, tag: str, uid: str) -> bool:
    """The dataset does not name another study/series than ``uid`` (a row without the attribute is kept)."""
    value = dj.text(ds, tag)
    return value is None or value == uid


class _Closing:
    """The chunks of ``body`` whose ``aclose()`` also closes ``answer``: an async generator that never started runs
    none of its ``finally`` when closed, so a client gone before the first chunk would leave the PACS answer (and
    its pooled connection) open."""

    def __init__(self, body: AsyncGenerator[bytes, None], answer: WadoAnswer) -> None:
        self._body = body
        self._answer = answer

    def __aiter__(self) -> _Closing:
        return self

    async def __anext__(self) -> bytes:
        return await self._body.__anext__()

    async def aclose(self) -> None:
        try:
            await self._body.aclose()
        finally:
            await self._answer.aclose()


def _chunks(answer: WadoAnswer) -> _Closing:
    async def body() -> AsyncGenerator[bytes, None]:
        async for chunk in answer.chunks():
            yield chunk

    return _Closing(body(), answer)


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data
