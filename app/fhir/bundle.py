"""searchset Bundles (R4 Bundle; http.html#search, search.html#paging), pure.

QIDO gives no total (PS3.18 §8.3.4.4), so ``Bundle.total`` is left out rather than invented. Links are absolute
URLs under the base the client used, built from the canonical parameters of the search so they are stable
across pages.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode


def search_url(base: str, resource_type: str, params: list[tuple[str, str]]) -> str:
    query = urlencode(params, quote_via=quote, safe=":/,")
    return f"{base}/{resource_type}" + (f"?{query}" if query else "")


def searchset(
    base: str,
    matches: list[dict[str, Any]],
    *,
    self_url: str,
    next_url: str | None = None,
    previous_url: str | None = None,
    included: list[dict[str, Any]] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """``total`` only where it was counted honestly (``_summary=count``); QIDO itself reports none."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    if previous_url:
        links.append({"relation": "previous", "url": previous_url})
    entries = [_entry(base, r, "match") for r in matches] + [_entry(base, r, "include") for r in included or ()]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def counted_searchset(
    base: str,
    window: list[dict[str, Any]],
    *,
    link: Callable[[int], str],
    offset: int,
    count: int,
    total: int,
    counting: bool = False,
    included: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A page cut from ``total`` matches known here (counted honestly, so ``Bundle.total`` is given): ``link(o)``
    is the search URL at offset o; ``counting`` (``_summary=count``) sends no next link."""
    has_next = not counting and total > offset + count
    return searchset(
        base,
        window,
        self_url=link(offset),
        included=included,
        total=total,
        next_url=link(offset + count) if has_next else None,
        previous_url=link(max(0, offset - count)) if offset and count else None,
    )


def _entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def with_outcome(bundle: dict[str, Any], severity: str, code: str, messages: list[str]) -> dict[str, Any]:
    """The Bundle with one more entry: an OperationOutcome of these issues, ``search.mode = outcome`` (R4
    search.html "Handling Errors"; bundle.html: an outcome entry carries information about the search). Its
    fullUrl is a urn:uuid: it is no resource of this server, and cannot be read back."""
    resource = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": m} for m in messages],
    }
    entry = {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "search": {"mode": "outcome"}}
    return bundle | {"entry": [*bundle.get("entry", []), entry]}
