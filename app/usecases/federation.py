"""What a request makes of archives that failed it (issue 21; IHE XCA partial success).

The archives are asked by app.pacs.federation, which notes each one that failed in the request's
:class:`~app.pacs.request_scope.SourceNotes`. A search answers with what the others gave (the HTTP layer adds an
OperationOutcome entry per failed archive), unless the client asked for all or nothing (``Prefer:
handling=strict``, R4 search.html); a read answers 404 only when every archive said it has no such thing: when one
that could hold it failed, the honest answer is 503 with Retry-After, never a false 404. And /readyz: ready while
one archive is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from ..dicom.qido import QidoQuery
from ..errors import FacadeError, NotFound, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ..pacs.cache import QidoPort
from ..pacs.request_scope import SOURCE_NOTES, SourceNotes


@contextmanager
def noted_failures() -> Iterator[SourceNotes]:
    """The request's record of failed archives; a fresh one for a call made outside a request (tests, scripts)."""
    noted = SOURCE_NOTES.get()
    if noted is not None:
        yield noted
        return
    noted = SourceNotes()
    token = SOURCE_NOTES.set(noted)
    try:
        yield noted
    finally:
        SOURCE_NOTES.reset(token)


def strict_error(noted: SourceNotes) -> UpstreamError:
    """``Prefer: handling=strict`` and an archive failed: 504 when it timed out, else 503 (with Retry-After)."""
    name, error = next(iter(noted.failed.items()))
    why = getattr(error, "message", "it failed")
    text = f"the archive {name!r} did not answer ({why}); Prefer: handling=strict asks for every archive's results"
    return UpstreamTimeout(text) if isinstance(error, UpstreamTimeout) else UpstreamUnavailable(text)


@contextmanager
def not_found_unless_all_answered(noted: SourceNotes) -> Iterator[None]:
    """A NotFound raised while an archive had failed becomes 503: that archive may hold what was asked for."""
    try:
        yield
    except NotFound:
        if not noted.failed:
            raise
        names = ", ".join(repr(n) for n in noted.failed)
        raise UpstreamUnavailable(
            f"not found in the archives that answered, and {names} did not answer: it may be there; try again"
        ) from None


async def readiness(qido: QidoPort) -> tuple[bool, dict[str, str | None]]:
    """For /readyz: whether to take traffic, and each archive's problem (None: it answers a one-row QIDO query,
    uncached, within 3 s, and its circuit is not open). With several archives, ready while at least one is: the
    others' studies are still served, with an outcome entry for the missing one."""
    sources = getattr(qido, "sources", None)
    if sources is None:  # one PACS
        problem = await _probe(qido)
        return problem is None, {"pacs": problem}
    problems = await asyncio.gather(*(_probe(s.qido) for s in sources))
    return any(p is None for p in problems), {s.name: p for s, p in zip(sources, problems, strict=True)}


async def _probe(qido: QidoPort) -> str | None:
    try:
        await asyncio.wait_for(qido.search(QidoQuery.build("studies", {}, limit=1), fresh=True), 3.0)
    except TimeoutError:
        return "the PACS did not answer within 3 s"
    except FacadeError as exc:
        return exc.message
    return None
