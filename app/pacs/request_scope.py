"""What one request carries down to the PACS calls, as context variables (asyncio tasks copy them).

Set by app.http.endpoints after authorization, read where the PACS is called: which cache partition the request may
share (app.security.auth isolation key), how stale an answer it takes when the PACS fails (:class:`StaleIfError`),
and, with ``pacs_auth = "forward"``, the caller's own token for the PACS.

Set by the HTTP layer (:class:`app.http.observability.ObservabilityMiddleware`) for every incoming request:
:data:`UPSTREAM_BUDGET`, the request's one time budget for the PACS, which every upstream call and retry of that
request must fit into (:class:`app.pacs.upstream.ResilientSender`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Hashable
from typing import Any

CACHE_SCOPE: contextvars.ContextVar[Hashable] = contextvars.ContextVar("cache_scope", default=None)
# The change-clock stamps (clock, scopes, stamp) of the cached QIDO answers one request's answer was made from
# (app.pacs.cache.CachedQido._key), so a finished answer kept for it goes when one of them moves (app.http.answers).
# A list shared by the request's tasks; None outside a request.
DEPENDS: contextvars.ContextVar[list[tuple[Any, Any, int]] | None] = contextvars.ContextVar("depends", default=None)
PACS_TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("pacs_token", default=None)


class StaleIfError:
    """What one request accepts of stale-if-error (RFC 5861 §4), and what it was served.

    ``accepted``: seconds past its freshness a kept answer may be when the PACS fails (0: none, the error goes to the
    client). The HTTP layer decides it from the request's Cache-Control: a client that says ``no-cache`` asks for an
    answer the PACS just gave (RFC 9111 §5.2.1.4), so it accepts none unless it also says ``stale-if-error=<s>``.
    ``served``: the QIDO levels answered from a stale entry, so the response can say it is stale.
    """

    __slots__ = ("accepted", "served")

    def __init__(self, accepted: float) -> None:
        self.accepted = accepted
        self.served: list[str] = []


# Set per request by the HTTP layer; None outside a request (scripts, direct calls): no stale answers.
STALE_IF_ERROR: contextvars.ContextVar[StaleIfError | None] = contextvars.ContextVar("stale_if_error", default=None)


class UpstreamBudget:
    """One incoming request's deadline for the PACS, on the sender's monotonic clock; with several archives, one
    deadline per archive (issue 21: one sick archive never spends another's budget).

    The HTTP layer sets a fresh one per request, with no deadline; the request's first upstream call to an archive
    fixes that archive's at ``now + upstream_budget``. It is one mutable object, not a value, so that calls made in
    other tasks of the same request (``asyncio.gather``, the cache's single-flight fetch: tasks copy the context,
    which holds this object) share one deadline instead of each starting its own.
    """

    __slots__ = ("deadlines",)

    def __init__(self) -> None:
        self.deadlines: dict[Hashable, float] = {}

    @property
    def deadline(self) -> float | None:
        """The one PACS's deadline (None until its first call)."""
        return self.deadlines.get(None)

    @deadline.setter
    def deadline(self, value: float) -> None:
        self.deadlines[None] = value

    def start(self, now: float, seconds: float, archive: Hashable = None) -> float:
        """The archive's deadline: set to ``now + seconds`` by its first call, unchanged for the later ones."""
        deadline = self.deadlines.get(archive)
        if deadline is None:
            deadline = self.deadlines[archive] = now + seconds
        return deadline


# None outside a request (scripts, tests that call a client directly): each send then has a budget of its own.
UPSTREAM_BUDGET: contextvars.ContextVar[UpstreamBudget | None] = contextvars.ContextVar("upstream_budget", default=None)


class SourceNotes:
    """What one request learnt of the archives behind the facade (issue 21).

    ``failed``: the archives that failed it, by source name, with the error each gave. Written where the archives are
    asked (app.pacs.federation), read when the answer is made: a search then carries an OperationOutcome entry per
    failed archive (IHE XCA PartialSuccess), ``Prefer: handling=strict`` turns one into an error, a read that found
    nothing is 503 rather than a false 404, and the answer is not kept.

    ``held``: the Study Instance UIDs each archive returned to the request's study queries (those whose match does
    not depend on which series a copy holds), so the instance rows of a page are asked only of the archives that
    hold its studies; ``partial``: one of those answers was cut at its limit, so what an archive did not list it
    may still hold (then every archive is asked)."""

    __slots__ = ("failed", "held", "partial")

    def __init__(self) -> None:
        self.failed: dict[str, Exception] = {}
        self.held: dict[str, set[str]] = {}
        self.partial = False


# Set per request by the HTTP layer (and by the use cases when called without one).
SOURCE_NOTES: contextvars.ContextVar[SourceNotes | None] = contextvars.ContextVar("source_notes", default=None)
