"""``_lastUpdated`` and ``meta.lastUpdated`` on ImagingStudy (issue 22): the study's last change in the PACS, as an
archive with an API of its own says it (Orthanc's ``LastUpdate``, app.pacs.orthanc_rest); DICOMweb carries none.

A search with ``_lastUpdated`` reads every candidate study row (as ``_sort`` and ``_total`` do), asks when they
changed in one request per 100 studies, keeps those whose last change (the second it names) satisfies every
``_lastUpdated`` group (R4 search.html#date prefixes), and pages over what is left: exact paging and totals as for
any criterion. Every ImagingStudy shown gets ``meta.lastUpdated`` (one request per page, or none when the search
asked already).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..dicom import dicom_json as dj
from ..errors import UpstreamError
from ..fhir.dates import DateCriterion, utc_second

logger = logging.getLogger(__name__)

LastUpdates = Callable[[list[str]], Awaitable[dict[str, str]]]


def changed_as_asked(
    rows: list[dj.Dataset], stamps: dict[str, str], groups: tuple[tuple[DateCriterion, ...], ...]
) -> list[dj.Dataset]:
    """The rows whose study's last change satisfies every OR-group (a study the PACS gave no time for: none)."""
    kept = []
    for row in rows:
        second = utc_second(stamps.get(dj.text(row, dj.STUDY_UID) or ""))
        if second is not None and all(any(c.matches(second[0]) for c in group) for group in groups):
            kept.append(row)
    return kept


async def for_meta(lookup: LastUpdates, uids: list[str]) -> dict[str, str]:
    """The times for ``meta.lastUpdated``: an optional element, so a REST API that fails leaves it out (a warning)
    rather than failing a search that did not ask for ``_lastUpdated``."""
    try:
        return await lookup(uids)
    except UpstreamError as exc:
        logger.warning("meta.lastUpdated left out: %s", exc.message)
        return {}


def with_meta(studies: list[dict[str, Any]], stamps: dict[str, str]) -> None:
    """``meta.lastUpdated`` (R4 Meta.lastUpdated: an instant) on each study the PACS gave a time for, in place."""
    for study in studies:
        second = utc_second(stamps.get(study.get("id", "")))
        if second is not None:
            study.setdefault("meta", {})["lastUpdated"] = second[1]
