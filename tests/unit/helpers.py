"""Shared values for the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import httpx

from app.fhir.search import SearchContext

BASE = "https://fhir.example.org/fhir/R4"
SEARCH_CTX = SearchContext(
    default_count=20,
    max_count=100,
    search_zone=UTC,
    patient_system="urn:x-imaging-facade:patient-id",
    issuer_prefix="urn:x-imaging-facade:issuer:",
    issuer_systems={"HOSP-A": "http://hospital-a.example.org/mrn"},
    base_url=BASE,
)


def inside(da: str, rng: str | None) -> bool:
    """Is DICOM date ``da`` inside the QIDO StudyDate range ``rng`` (None: unbounded; "EMPTY": nothing)?"""
    if rng is None:
        return True
    if rng == "EMPTY":
        return False
    lo, _, hi = rng.partition("-")
    return (not lo or lo <= da) and (not hi or da <= hi)


class Stream(httpx.AsyncByteStream):
    """An upstream (PACS) body: chunks, then optionally a fault; records whether it was closed."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None) -> None:
        self.chunks, self.fail, self.closed = chunks, fail, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail

    async def aclose(self) -> None:
        self.closed = True
