"""The IHE PIXm cross-reference manager as a client (ITI-83; the pure part is app.fhir.pixm): one person's
identifiers in the other patient domains of an exchange (issue 21, rule 2).

Lookups are cached for ``cache_ttl`` like the EHR's (app.pacs.ehr), "not known" included; errors are not cached,
and become the error tree's 502/503/504 with messages that never name the manager's address. Concurrent lookups of
one identifier make one request.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import orjson
from cachetools import TTLCache

from ..errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from ..fhir import pixm

logger = logging.getLogger(__name__)

Identifier = tuple[str, str]  # (system, value)


class PixManager:
    def __init__(self, client: httpx.AsyncClient, base_url: str, *, ttl: float, max_entries: int = 10000) -> None:
        self._client = client
        self.base = base_url.rstrip("/")
        self._ttl = ttl
        self._cache: TTLCache[Identifier, tuple[Identifier, ...]] = TTLCache(maxsize=max_entries, ttl=ttl or 1)
        self._inflight: dict[Identifier, asyncio.Future[tuple[Identifier, ...]]] = {}
        self.requests = 0

    async def others(self, system: str, value: str, *, fresh: bool = False) -> tuple[Identifier, ...]:
        """The person's identifiers in other domains; none when the manager does not know this one."""
        key = (system, value)
        if self._ttl > 0 and not fresh and key in self._cache:
            return self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _fetch(self, key: Identifier) -> tuple[Identifier, ...]:
        try:
            found = tuple(i for i in await self._query(*key) if i != key)
            if self._ttl > 0:
                self._cache[key] = found
            return found
        finally:
            self._inflight.pop(key, None)

    async def _query(self, system: str, value: str) -> list[Identifier]:
        self.requests += 1
        params = {"sourceIdentifier": pixm.source_identifier(system, value)}
        headers = {"Accept": "application/fhir+json"}
        try:
            r = await self._client.get(f"{self.base}/Patient/$ihe-pix", params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("the patient identifier cross-reference manager did not answer in time") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable("the patient identifier cross-reference manager is unreachable") from exc
        if r.status_code in (400, 404):  # not known here (400: its assigning authority; 404: the identifier)
            return []
        if r.status_code != 200:
            logger.warning("PIXm query answered HTTP %s", r.status_code)
            raise UpstreamBadResponse(f"the patient identifier cross-reference manager answered HTTP {r.status_code}")
        try:
            return pixm.target_identifiers(orjson.loads(r.content))
        except (orjson.JSONDecodeError, ValueError):
            raise UpstreamBadResponse("the patient identifier cross-reference manager sent no Parameters") from None
