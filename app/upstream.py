"""The PACS, seen through QIDO-RS: the only module that talks HTTP to it.

httpx errors are translated here, once, into the UpstreamError branch of the error tree (the httpx
``map_httpcore_exceptions`` idea); nothing above this module sees httpx. Messages never contain the PACS URL,
which may carry credentials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson

from . import gcpause
from .dicom_json import Dataset, slim
from .errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from .qido import QidoQuery

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QidoResult:
    rows: list[Dataset]
    nbytes: int  # size of the response body; the cache bounds itself by this


class Qido(Protocol):
    async def search(self, query: QidoQuery) -> QidoResult: ...


class DicomWebUpstream:
    """QIDO-RS over one pooled ``httpx.AsyncClient`` (created and closed by the app's lifespan)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self.requests = 0  # upstream requests sent; tests and the benchmark read it

    async def search(self, query: QidoQuery) -> QidoResult:
        # The URL is one string so the hand-built query (raw ^ * ?) reaches the PACS unchanged (app.qido).
        url = f"{self._base}/{query.path}"
        # PS3.18 §6.7: Accept application/dicom+json; some servers answer application/json, also accepted.
        headers = {"Accept": "application/dicom+json, application/json"}
        response = await self._get(url, headers)
        if response.status_code == 204:  # PS3.18 §8.3.4.4: no matches
            return QidoResult([], 0)
        if response.status_code != 200:
            logger.warning("QIDO %s answered HTTP %s", query.level, response.status_code)
            raise UpstreamBadResponse(f"the PACS answered HTTP {response.status_code} to a query")
        body = response.content
        return QidoResult(_parse(body), len(body))

    async def _get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        for attempt in (1, 2):
            self.requests += 1
            try:
                return await self._client.get(url, headers=headers)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout("the PACS did not answer in time") from exc
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # Orthanc closes idle keep-alive connections after 1 s; a request that raced that close fails
                # without reaching it. QIDO is idempotent, so one immediate retry on a new connection is safe.
                if attempt == 2:
                    raise UpstreamUnavailable("the PACS closed the connection") from exc
            except httpx.TransportError as exc:
                raise UpstreamUnavailable("the PACS is unreachable") from exc
        raise AssertionError("unreachable")


def _parse(body: bytes) -> list[Dataset]:
    """Tolerant reader: a list of datasets, or one dataset (some servers send that, as dicomweb-client notes)."""
    with gcpause.paused():
        try:
            data = orjson.loads(body) if body.strip() else []
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("the PACS sent a response that is not JSON") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise UpstreamBadResponse("the PACS sent JSON that is not DICOM JSON")
        return [slim(row) for row in data]
