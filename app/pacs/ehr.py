"""EHR linkage: an EHR's own Patient ids, turned into the PACS's PatientID through the EHR's FHIR API.

Real EMRs search with their own ids (``ImagingStudy?patient=Patient/123``). With ``ehr_fhir_url`` set, an id that
is not one of ours is read from the EHR (``GET <ehr>/Patient/123``); its MRN — the identifier with
``ehr_mrn_system``, or else the one typed ``MR`` (v2-0203) — is the PatientID the PACS is asked for. The MRN's
system picks the IssuerOfPatientID through the same issuer table as everywhere (app.fhir.patient_ids); a system the
table does not know matches the PatientID under any issuer.

Lookups are cached for ``cache_ttl`` (an EHR Patient's MRN does not change under a running search), including
"no such patient"; errors are not cached. Concurrent lookups of one id make one request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
from cachetools import TTLCache

from ..errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from ..fhir import patient_ids
from ..fhir.search import PatientKey

logger = logging.getLogger(__name__)

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@dataclass(frozen=True)
class MrnRule:
    """How to find the MRN in an EHR Patient and which PACS issuer it belongs to (pure)."""

    system: str | None  # ehr_mrn_system; None: the identifier typed MR
    patient_system: str  # the default system (PatientID without issuer)
    issuer_prefix: str
    issuer_systems: Mapping[str, str]
    # Several archives (issue 21): their patient domains; an identifier in one of them is a key too, MRN or not.
    domains: frozenset[str] = frozenset()

    def keys(self, resource: Any) -> list[PatientKey]:
        """The PACS patient keys of an EHR Patient resource; empty when it has no usable MRN."""
        out: list[PatientKey] = []
        for ident in _identifiers(resource):
            system, value = ident.get("system"), ident.get("value")
            if not isinstance(value, str) or not value or len(value) > 64:
                continue
            if self.domains and isinstance(system, str) and (key := self._key(system, value)).issuer in self.domains:
                out.append(key)
                continue
            if self.system is not None:
                if system != self.system:
                    continue
            elif not _typed_mr(ident):
                continue
            out.append(self._key(system if isinstance(system, str) else None, value))
        return list(dict.fromkeys(out))

    def _key(self, system: str | None, value: str) -> PatientKey:
        if system is None:
            return PatientKey(value, None, any_issuer=True)
        issuer = patient_ids.issuer_for(
            system, default=self.patient_system, prefix=self.issuer_prefix, table=self.issuer_systems
        )
        if issuer is None:  # a system our issuer table does not name: the PatientID under any issuer
            return PatientKey(value, None, any_issuer=True)
        return PatientKey(value, issuer or None)


def _identifiers(resource: Any) -> list[dict[str, Any]]:
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        return []
    idents = resource.get("identifier")
    return [i for i in idents if isinstance(i, dict)] if isinstance(idents, list) else []


def _typed_mr(ident: dict[str, Any]) -> bool:
    codings = (ident.get("type") or {}).get("coding") if isinstance(ident.get("type"), dict) else None
    return isinstance(codings, list) and any(
        isinstance(c, dict) and c.get("code") == "MR" and c.get("system") in (V2_0203, None) for c in codings
    )


class EhrPatients:
    """Reads Patients from the EHR's FHIR API (own credentials from settings), cached."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        rule: MrnRule,
        *,
        token: str | None,
        ttl: float,
        max_entries: int = 10000,
    ) -> None:
        self._client = client
        url = httpx.URL(base_url)
        self._auth: httpx.Auth | None = None
        if url.userinfo:  # credentials in the URL: HTTP Basic, kept out of every URL we log or echo
            user, _, password = url.userinfo.decode().partition(":")
            self._auth = httpx.BasicAuth(unquote(user), unquote(password))
            url = url.copy_with(username=None, password=None)
        self.base = str(url).rstrip("/")
        self._headers = {"Accept": "application/fhir+json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._rule = rule
        self._ttl = ttl
        self._cache: TTLCache[str, tuple[PatientKey, ...]] = TTLCache(maxsize=max_entries, ttl=ttl or 1)
        self._inflight: dict[str, asyncio.Future[tuple[PatientKey, ...]]] = {}
        self.requests = 0

    async def keys(self, ehr_id: str, *, fresh: bool = False) -> tuple[PatientKey, ...]:
        """The PACS keys of EHR Patient ``ehr_id``; empty if the EHR has no such Patient or it has no MRN."""
        if self._ttl > 0 and not fresh and ehr_id in self._cache:
            return self._cache[ehr_id]
        task = self._inflight.get(ehr_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch(ehr_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[ehr_id] = task
        return await asyncio.shield(task)

    async def _fetch(self, ehr_id: str) -> tuple[PatientKey, ...]:
        try:
            keys = tuple(self._rule.keys(await self._read(ehr_id)))
            if self._ttl > 0:
                self._cache[ehr_id] = keys
            return keys
        finally:
            self._inflight.pop(ehr_id, None)

    async def _read(self, ehr_id: str) -> Any:
        self.requests += 1
        try:
            r = await self._client.get(f"{self.base}/Patient/{ehr_id}", headers=self._headers, auth=self._auth)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("the EHR did not answer in time") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable("the EHR is unreachable") from exc
        if r.status_code in (404, 410):  # no such Patient (or deleted): it matches nothing
            return None
        if r.status_code != 200:
            logger.warning("EHR Patient read answered HTTP %s", r.status_code)
            raise UpstreamBadResponse(f"the EHR answered HTTP {r.status_code} to a Patient read")
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("the EHR sent a Patient that is not JSON") from None
