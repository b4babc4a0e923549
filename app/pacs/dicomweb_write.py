"""The PACS's write side and full-metadata reads: STOW-RS store, WADO-RS series metadata.

    store = DicomWebStore(transport, "http://user:pw@pacs:8042/dicom-web", httpx.Timeout(30.0))
    result = await store.store([app.dicom.kos_build.encode(ds)])      # StowResult(stored=(uid,), failed=(),
    warning=False)
    rows = await store.series_metadata(study_uid, series_uid)   # full DICOM JSON, for app.dicom.kos.parse_kos

Like :class:`app.pacs.upstream.DicomWebUpstream` it sends requests straight to one pooled httpx transport (through the
same :class:`app.pacs.upstream.ResilientSender`: the PACS's shared circuit breaker, retries with backoff for the
metadata
GET only, counters), takes credentials from the URL's userinfo as HTTP Basic, and turns every httpx error and bad
answer into the UpstreamError branch of :mod:`app.errors`, with messages that never contain the PACS URL:

    httpx.TimeoutException            → UpstreamTimeout      504
    other httpx.TransportError         → UpstreamUnavailable  503
    circuit breaker open               → CircuitOpen          503  (an UpstreamUnavailable; Retry-After: seconds left)
    4xx/5xx, not JSON, not DICOM JSON  → UpstreamBadResponse  502  (a refused store: its subclass StowRefused)

UIDs are checked before they go into a URL path (digits and dots in PS3.5 9.1 form), so a caller's value can
neither add path segments (``..``, ``/``) nor a query to the PACS request.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ..errors import UpstreamBadResponse
from .upstream import DicomWebClient, with_credentials

__all__ = ["DicomWebStore", "StowRefused", "StowResult"]

logger = logging.getLogger(__name__)

# PS3.18 §10.5.3 Store Instances Response Module. FailureReason / WarningReason hold DIMSE status codes (PS3.18
# Table 10.5.3-1: 0xA700 out of resources, 0xA900 data set does not match SOP class, 0xC000 cannot understand,
# 0xC122 transfer syntax not supported, 0x0110 processing failure, 0x0122 SOP class not supported, ...).
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"

# PS3.5 9.1: components of digits without leading zeros, separated by dots, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True)
class StowResult:
    """What the PACS said about one STOW-RS request.

    ``stored``: SOP Instance UIDs of the ReferencedSOPSequence (0008,1199); ``failed``: (SOP Instance UID,
    FailureReason) of the FailedSOPSequence (0008,1198), the reason ``None`` when absent or unreadable; ``warning``:
    HTTP 202, a failure, or a WarningReason (0008,1196) on a stored instance. An instance the PACS did not mention
    is in neither, so a caller checks that its own UIDs are in ``stored``.
    """

    stored: tuple[str, ...]
    failed: tuple[tuple[str, int | None], ...]
    warning: bool


class StowRefused(UpstreamBadResponse):
    """STOW-RS answered neither 200 nor 202. ``result`` is the Store Instances Response that came with the refusal,
    if any: instances listed in its ``stored`` are in the PACS despite the error status."""

    def __init__(self, message: str, result: StowResult | None) -> None:
        super().__init__(message)
        self.result = result


class DicomWebStore(DicomWebClient):
    """STOW-RS and WADO-RS metadata over one httpx transport (created and closed by the app's lifespan).

    **Parameters:**
    * transport - the pooled transport; tests pass ``httpx.MockTransport``.
    * base_url - the DICOMweb root; ``user:password@`` in it becomes an ``Authorization: Basic`` header.
    * timeout - per request (connect, read, write, pool).
    * breaker - the PACS's circuit breaker, the same object the :class:`~app.pacs.upstream.DicomWebUpstream` of that
    PACS
      uses; None: no breaker. STOW-RS counts for it like any request (a transport error or a 5xx is a failure), and
      is refused without being sent while it is open.
    * retries, backoff - extra attempts of the metadata GET (never of the STOW-RS POST); 0: none.
    * stats - an :class:`~app.pacs.upstream.UpstreamStats`, may be shared with the upstream; sleep, jitter - for tests.
    """

    async def store(self, parts: Sequence[bytes], *, study: str | None = None) -> StowResult:
        """STOW-RS ``POST {base}/studies`` (PS3.18 §10.5) of DICOM Part 10 files, in one multipart/related body.
        ``study``: the study the files belong to (one archive takes them whatever it is; several: app.pacs.federation).

        200 (all stored) and 202 (some failed or warned) give a :class:`StowResult`. Any other status raises
        :class:`StowRefused` (an UpstreamBadResponse, 502) naming the status and the FailureReasons; its ``result``
        holds what the PACS reported, because a refusal is not always total: Orthanc answers 400 to a request with
        one unreadable part and still stores, and lists, the readable ones.

        Not retried, not even after a connection that broke: a POST that failed while reading the answer may
        have been stored, and this class cannot tell. Resending the same SOP Instance UIDs is harmless on Orthanc
        (200, listed as stored, whatever ``OverwriteInstances`` says), but other archives may refuse a duplicate
        (FailureReason 0x0111) or keep both, so resending is the caller's decision. Orthanc also answers 200 to a
        *different* document under a UID it already has: with ``OverwriteInstances: true`` it replaces the old
        one, with ``false`` (its default) it silently keeps the old one. A success therefore does not prove the PACS
        holds what was sent; every new document needs a new SOP Instance UID.
        """
        if not parts:
            raise ValueError("nothing to store")
        body, content_type = _multipart(parts)
        headers = with_credentials((("Accept", "application/dicom+json"), ("Content-Type", content_type)), self._auth)

        def build() -> httpx.Request:
            return httpx.Request(
                "POST", f"{self._base}/studies", headers=headers, content=body, extensions={"timeout": self._timeout}
            )

        status, answer = await self._sender.send("stow", build, idempotent=False, what="a store request")

        result = _stow_result(answer, status)
        if status in (200, 202):
            if result is None:
                raise UpstreamBadResponse(f"the PACS answered HTTP {status} to a store request, without DICOM JSON")
            return result
        detail = ""
        if result is not None:
            if result.stored:
                detail += f"; {len(result.stored)} stored nonetheless"
            reasons = sorted({f"0x{reason:04X}" for _, reason in result.failed if reason is not None})
            if reasons:
                detail += f"; failure reasons {', '.join(reasons)}"
        logger.warning("STOW-RS answered HTTP %s%s", status, detail)
        raise StowRefused(f"the PACS refused to store the instances (HTTP {status}{detail})", result)

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """WADO-RS ``GET {base}/studies/{study}/series/{series}/metadata`` (PS3.18 §10.4): the full DICOM JSON of
        every instance of the series, sequences included (not :func:`app.dicom.dicom_json.slim`-med: the KOS content
        tree is in there). An unknown series (404) is ``[]``. Raises ValueError for a malformed UID."""
        url = f"{self._base}/studies/{_uid(study_uid)}/series/{_uid(series_uid)}/metadata"
        headers = with_credentials((("Accept", "application/dicom+json"),), self._auth)

        def build() -> httpx.Request:
            return httpx.Request("GET", url, headers=headers, extensions={"timeout": self._timeout})

        # One immediate resend after a stale keep-alive connection, then `retries` with backoff (app.pacs.upstream).
        status, body = await self._sender.send("metadata", build, idempotent=True, what="a metadata request")
        if status in (204, 404):  # 404: no such study or series (Orthanc: "Accessing an inexistent study")
            return []
        if status != 200:
            logger.warning("WADO-RS metadata answered HTTP %s", status)
            raise UpstreamBadResponse(f"the PACS answered HTTP {status} to a metadata request")
        return _datasets(body)


# -- helpers ------------------------------------------------------------------------------------------------------


def _uid(value: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError(f"not a DICOM UID: {value!r}")
    return value


def _multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """PS3.18 §8.6.1.2 / RFC 2387 multipart/related, one ``application/dicom`` part per file."""
    boundary = secrets.token_hex(16)
    while any(boundary.encode() in part for part in parts):  # RFC 2046 §5.1.1: must not occur in the content
        boundary = secrets.token_hex(16)
    delimiter = f"--{boundary}".encode()
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delimiter, b"\r\nContent-Type: application/dicom\r\n\r\n", part, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        return None


def _stow_result(body: bytes, status: int) -> StowResult | None:
    """The Store Instances Response Module, or None when the body is not one. Tolerant: a one-element list is
    read like its element (as dicomweb-client does for servers that wrap datasets in an array)."""
    answer = _json(body)
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, Mapping):
        return None
    stored: list[str] = []
    warned = False
    for item in _items(answer, _REFERENCED_SOP_SEQUENCE):
        uid = _string(item, _REFERENCED_SOP_INSTANCE_UID)
        if uid is not None:
            stored.append(uid)
        warned = warned or bool(_values(item, _WARNING_REASON))
    # Orthanc always sends FailedSOPSequence, empty on success: only its items count.
    failed = [
        (_string(item, _REFERENCED_SOP_INSTANCE_UID) or "", _reason(item))
        for item in _items(answer, _FAILED_SOP_SEQUENCE)
    ]
    return StowResult(tuple(stored), tuple(failed), status == 202 or warned or bool(failed))


def _datasets(body: bytes) -> list[dict[str, Any]]:
    answer = _json(body)
    if isinstance(answer, dict):  # some servers send a single dataset (dicomweb-client notes this)
        answer = [answer]
    if not isinstance(answer, list) or not all(isinstance(row, dict) for row in answer):
        raise UpstreamBadResponse("the PACS sent metadata that is not DICOM JSON")
    return answer


def _values(ds: Mapping[str, Any], tag: str) -> list[Any]:
    element = ds.get(tag)
    value = element.get("Value") if isinstance(element, Mapping) else None
    return value if isinstance(value, list) else []


def _items(ds: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    return [item for item in _values(ds, tag) if isinstance(item, Mapping)]


def _string(ds: Mapping[str, Any], tag: str) -> str | None:
    values = _values(ds, tag)
    return values[0] if values and isinstance(values[0], str) and values[0] else None


def _reason(item: Mapping[str, Any]) -> int | None:
    """FailureReason (US): a JSON number per PS3.18 F.2.3; a decimal or ``0x`` hex string is read too."""
    values = _values(item, _FAILURE_REASON)
    value = values[0] if values else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None
