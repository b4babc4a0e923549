"""``_lastUpdated`` and ``meta.lastUpdated`` (issue 22): a study's last change in the PACS, as an archive with an
API of its own says it (Orthanc's ``LastUpdate``, app.pacs.orthanc_rest); DICOMweb carries none.

- ImagingStudy: the study's last change.
- ImagingSelection and DocumentReference (the KOS manifests): the last change of the study the KOS is stored in
  (of the latest, for a KOS stored as one copy per study, PS3.3 C.17.6.2.1).
- Several archives (``[[sources]]``): answered only when every archive is an Orthanc; a study held by several gets
  the latest of their times. An archive whose REST API fails is noted as failed for the request, as one whose
  QIDO-RS fails is (app.usecases.federation: an OperationOutcome entry, 503 under ``Prefer: handling=strict``), and
  the studies it may hold cannot be judged: they are left out of a ``_lastUpdated`` search rather than guessed.

A search with ``_lastUpdated`` reads every candidate (as ``_sort`` and ``_total`` do), asks when their studies
changed in one request (``prequery_limit`` UIDs per request: the most candidates a search reads), keeps those
whose last change (the second it names) satisfies every ``_lastUpdated`` group (R4 search.html#date prefixes), and
pages over what is left: exact paging and totals as for any criterion. Every resource shown gets
``meta.lastUpdated`` (one request per page, or none when the search asked already); that element is optional, so a
REST API that fails then leaves it out (a warning line) rather than failing a search that did not ask for
``_lastUpdated``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..dicom import dicom_json as dj
from ..dicom.kos import KeyObjectSelection
from ..errors import UpstreamError
from ..fhir.dates import DateCriterion, utc_second
from ..pacs.federation import each_source
from ..pacs.request_scope import SOURCE_NOTES, SourceNotes
from ..settings import Settings

logger = logging.getLogger(__name__)

LastUpdates = Callable[[list[str]], Awaitable[dict[str, str]]]  # Study UIDs → "YYYYMMDDTHHMMSS" (UTC)
Groups = tuple[tuple[DateCriterion, ...], ...]  # AND of OR-groups
Resource = dict[str, Any]


def refusal(settings: Settings) -> str | None:
    """Why ``_lastUpdated`` cannot be answered (the 400's text), or None when every archive says when its studies
    changed (``pacs_kind = orthanc``)."""
    cannot = [s.name for s in settings.pacs_sources if s.pacs_kind != "orthanc"]
    if not cannot:
        return None
    if not settings.federated:
        return "the PACS's DICOMweb answers carry no time of change (pacs_kind = dicomweb)"
    names = ", ".join(repr(n) for n in cannot)
    archives = "archive" if len(cannot) == 1 else "archives"
    return (
        f"the {archives} {names} (pacs_kind = dicomweb) cannot say when their studies changed, "
        "and every archive must for an exact answer"
    )


def satisfies(stamp: str | None, groups: Groups) -> bool:
    """Whether a last change (``YYYYMMDDTHHMMSS``; None: the PACS gave none) satisfies every OR-group."""
    second = utc_second(stamp)
    return second is not None and all(any(c.matches(second[0]) for c in group) for group in groups)


def changed_as_asked(rows: list[dj.Dataset], stamps: dict[str, str], groups: Groups) -> list[dj.Dataset]:
    """The study rows whose study's last change satisfies every OR-group (a study the PACS gave no time for: none)."""
    return [row for row in rows if satisfies(stamps.get(dj.text(row, dj.STUDY_UID) or ""), groups)]


def latest(stamps: dict[str, str], studies: Iterable[str]) -> str | None:
    """The latest change of these studies (those the PACS gave a time for)."""
    return max((stamps[u] for u in studies if u in stamps), default=None)


def set_meta(resource: Resource, stamp: str | None) -> None:
    """``meta.lastUpdated`` (R4 Meta.lastUpdated: an instant), in place; nothing when there is no time."""
    second = utc_second(stamp)
    if second is not None:
        resource.setdefault("meta", {})["lastUpdated"] = second[1]


def with_meta(studies: list[Resource], stamps: dict[str, str]) -> None:
    """``meta.lastUpdated`` on each ImagingStudy (its id is its Study UID) the PACS gave a time for, in place."""
    for study in studies:
        set_meta(study, stamps.get(study.get("id", "")))


@dataclass(frozen=True)
class Archive:
    name: str
    last_updates: LastUpdates


class ArchiveTimes:
    """When studies changed, across several archives that each say it (a :data:`LastUpdates`): all asked at once,
    the latest time of each study kept. An archive that fails is noted for the request (app.pacs.federation
    .each_source; when every one fails, the error is raised), and a study it may hold is given no time: the
    request's study answers tell which studies each archive holds (SourceNotes.held); without them, any may."""

    def __init__(self, archives: Sequence[Archive]) -> None:
        self.archives = tuple(archives)

    async def __call__(self, uids: list[str]) -> dict[str, str]:
        answers = await each_source(self.archives, lambda a: a.last_updates(uids))
        out: dict[str, str] = {}
        for _, stamps in answers:
            for uid, stamp in stamps.items():
                if stamp > out.get(uid, ""):
                    out[uid] = stamp
        answered = {a.name for a, _ in answers}
        failed = [a.name for a in self.archives if a.name not in answered]
        if not failed:
            return out
        notes = SOURCE_NOTES.get()
        if notes is None or notes.partial:
            return {}
        return {u: t for u, t in out.items() if not any(u in notes.held.get(name, {u}) for name in failed)}


class ChangeTimes:
    """What answers ``_lastUpdated`` and ``meta.lastUpdated``: ``lookup`` is set where every archive says when its
    studies changed (app.main), else None (then the search parser refuses ``_lastUpdated``)."""

    def __init__(self) -> None:
        self.lookup: LastUpdates | None = None

    @property
    def answered(self) -> bool:
        return self.lookup is not None

    async def studies_as_asked(self, rows: list[dj.Dataset], groups: Groups) -> tuple[list[dj.Dataset], dict[str, str]]:
        """The study rows whose last change satisfies ``groups``, and the times read (none: no groups)."""
        if not groups or self.lookup is None:
            return rows, {}
        stamps = await self.lookup([dj.text(r, dj.STUDY_UID) or "" for r in rows])
        return changed_as_asked(rows, stamps, groups), stamps

    async def stamp_studies(self, studies: list[Resource], known: dict[str, str]) -> None:
        """``meta.lastUpdated`` on these ImagingStudies, from ``known`` when it has them all (asked by the search)."""
        if self.lookup is None or not studies:
            return
        ids = [study["id"] for study in studies]
        with_meta(studies, known if all(u in known for u in ids) else await self._for_meta(ids))

    async def manifests_as_asked(
        self, docs: list[KeyObjectSelection], groups: Groups
    ) -> tuple[list[KeyObjectSelection], dict[str, str]]:
        """The KOS documents whose home studies' latest change satisfies ``groups``, and that time by canonical
        UID (none: no groups)."""
        if not groups or self.lookup is None:
            return docs, {}
        stamps = _by_manifest(docs, await self.lookup(sorted({u for d in docs for u in d.homes})))
        return [d for d in docs if satisfies(stamps.get(d.canonical_uid), groups)], stamps

    async def stamp_manifests(self, shown: list[tuple[Resource, KeyObjectSelection]], known: dict[str, str]) -> None:
        """``meta.lastUpdated`` on each resource from its KOS document, from ``known`` when it has them all."""
        if self.lookup is None or not shown:
            return
        docs = [doc for _, doc in shown]
        if not all(d.canonical_uid in known for d in docs):
            known = _by_manifest(docs, await self._for_meta(sorted({u for d in docs for u in d.homes})))
        for resource, doc in shown:
            set_meta(resource, known.get(doc.canonical_uid))

    async def _for_meta(self, uids: list[str]) -> dict[str, str]:
        """The times for ``meta.lastUpdated``, an optional element: an archive that fails leaves it out (a warning)
        and is not noted as failing the request, whose resources are all there."""
        assert self.lookup is not None
        outer = SOURCE_NOTES.get()
        quiet = SourceNotes()
        if outer is not None:
            quiet.held, quiet.partial = outer.held, outer.partial
        token = SOURCE_NOTES.set(quiet)
        try:
            return await self.lookup(uids)
        except UpstreamError as exc:
            logger.warning("meta.lastUpdated left out: %s", exc.message)
            return {}
        finally:
            SOURCE_NOTES.reset(token)
            for name, error in quiet.failed.items():
                why = getattr(error, "message", "it failed")
                logger.warning("meta.lastUpdated left out where the archive %s may hold the study: %s", name, why)


def _by_manifest(docs: Iterable[KeyObjectSelection], stamps: dict[str, str]) -> dict[str, str]:
    """Canonical UID → the latest change of the studies the document and its copies are stored in."""
    return {d.canonical_uid: t for d in docs if (t := latest(stamps, d.homes)) is not None}
