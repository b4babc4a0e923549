"""Who a search is about: the patient criteria turned into the PACS's keys (PatientID + domain), across the EHR
link and, with several archives, across patient domains (issue 21, rule 2).

* An EHR Patient id becomes the keys of its identifiers (app.pacs.ehr: its MRN; with several archives also every
  identifier whose system names one of their domains), and the results point back at the EHR's Patient.
* With an IHE PIXm manager (``pixm_url``), each key of a ``patient``/``subject`` criterion is cross-referenced
  (ITI-83): the person's identifiers in the other domains are asked too, and the results name the Patient the
  client asked for (IHE XCA: the initiating gateway translates the patient id into each community's assigning
  authority). A key whose issuer has no identifier system we know (any issuer) is not cross-referenced.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from ..fhir import patient_ids
from ..fhir.search import EhrPatient, PatientKey, SearchRequest
from ..pacs.ehr import EhrPatients
from ..pacs.pixm import PixManager

Links = dict[PatientKey, str]  # a key found for the client's Patient -> that Patient's id

CROSS_REFERENCED = ("patient", "subject")  # the criteria naming the subject of an ImagingStudy or a manifest


@dataclasses.dataclass(frozen=True)
class IdentitySystems:
    patient_system: str
    issuer_prefix: str
    issuer_systems: dict[str, str]

    def system(self, key: PatientKey) -> str:
        return patient_ids.system_for(
            key.issuer, default=self.patient_system, prefix=self.issuer_prefix, table=self.issuer_systems
        )

    def key(self, system: str, value: str) -> PatientKey | None:
        issuer = patient_ids.issuer_for(
            system, default=self.patient_system, prefix=self.issuer_prefix, table=self.issuer_systems
        )
        return None if issuer is None else PatientKey(value, issuer or None)


class PatientResolver:
    def __init__(self, systems: IdentitySystems, ehr: EhrPatients | None, pixm: PixManager | None) -> None:
        self.systems = systems
        self.ehr = ehr
        self.pixm = pixm

    async def resolve(
        self, req: SearchRequest, *, fresh: bool, names: tuple[str, ...] = CROSS_REFERENCED
    ) -> tuple[SearchRequest, Links]:
        """The request with EHR ids replaced by keys and, with PIXm, the keys of criteria ``names`` joined by
        the person's keys in other domains; and which key stands for which Patient id of the client's."""
        links: Links = {}
        ehr_ids = any(isinstance(v, EhrPatient) for c in req.criteria for v in c.values)
        if (self.ehr is None or not ehr_ids) and self.pixm is None:
            return req, links
        criteria = []
        for c in req.criteria:
            values: list[Any] = []
            for v in c.values:
                if isinstance(v, EhrPatient) and self.ehr is not None:
                    keys = await self.ehr.keys(v.id, fresh=fresh)
                    links.update(dict.fromkeys(keys, v.id))
                    values += keys
                else:
                    values.append(v)
            if self.pixm is not None and c.name in names and c.modifier != "missing":
                values += await self._others([v for v in values if isinstance(v, PatientKey)], links, fresh=fresh)
            criteria.append(dataclasses.replace(c, values=tuple(dict.fromkeys(values))))
        return dataclasses.replace(req, criteria=tuple(criteria)), links

    async def _others(self, keys: list[PatientKey], links: Links, *, fresh: bool) -> list[PatientKey]:
        """The keys PIXm gives for ``keys``, each linked to the Patient id its key stands for."""
        assert self.pixm is not None
        asked = [k for k in dict.fromkeys(keys) if not k.any_issuer]
        found = await asyncio.gather(
            *(self.pixm.others(self.systems.system(k), k.patient_id, fresh=fresh) for k in asked)
        )
        out: list[PatientKey] = []
        for key, identifiers in zip(asked, found, strict=True):
            client_id = links.get(key) or patient_ids.encode(key.patient_id, key.issuer)
            for system, value in identifiers:
                other = self.systems.key(system, value)
                if other is not None and other not in keys:
                    links.setdefault(other, client_id)
                    out.append(other)
        return out
