"""Create a key-image manifest from FHIR: checked against the PACS, built as a KOS, stored with STOW-RS.

The checks (issue: "every referenced instance exists in the PACS and belongs to one patient") use fresh QIDO
answers, never the cache: a manifest must not point at something the PACS no longer has. The new KOS (one document,
in the study of the first selected instance; PS3.3 C.17.6.2.1 makes copies in the other studies optional) is
read back the way any KOS is, so the answer is exactly what a later search returns. Every cached QIDO answer is
dropped after the store, so that search cannot miss it.
"""

from __future__ import annotations

import dataclasses
import io
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..dicom import dicom_json as dj
from ..dicom.kos import parse_kos
from ..dicom.qido import QidoQuery, uid_list
from ..errors import MethodNotAllowed, PreconditionFailed, Unprocessable
from ..fhir.search import PatientKey, SearchRequest
from ..mapping.imaging_study import MappingContext
from ..pacs.dicomweb_write import DicomWebStore
from ..pacs.federation import FederatedStore
from ..pacs.upstream import QidoResult
from ..planning.manifest_input import Author, ManifestInput, author, from_payload
from ..security.context import Forbidden, User
from .manifests import Manifests, selections_of

if TYPE_CHECKING:  # pydicom (numpy) and highdicom cost ~170 MiB: loaded on the first create, not at start-up
    from ..dicom.kos_inputs import Evidence, PatientStudy

Fetch = Callable[[QidoQuery], Awaitable[QidoResult]]
Resource = dict[str, Any]
INSTANCE_CHECK_FIELDS = ("00100020", "00100021", "00280008", "00280010")  # PatientID, issuer, NumberOfFrames, Rows
# The facade as the KOS's Manufacturer (General Equipment Module) and, without a fhirUser, its device observer.
MANUFACTURER = "imaging-fhir-facade"
DEVICE_OBSERVER_NAME = "Imaging FHIR facade"


@dataclass(frozen=True)
class Created:
    status: int  # 201 created, 200 when If-None-Exist found it already
    body: Resource  # the ImagingSelection, or a transaction-response Bundle
    location: str | None


class ManifestWriter:
    def __init__(
        self,
        *,
        fetch: Fetch,  # uncached QIDO
        store: DicomWebStore | FederatedStore,
        manifests: Manifests,
        mapping: MappingContext,
        uid_batch: int,
        subject_keys: Callable[[str], Awaitable[list[PatientKey]]],
        conditional_search: Callable[[str], Awaitable[SearchRequest]],
        stored: Callable[[], Awaitable[None]],
        writable: bool,
        device_observer_uid: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._fetch = fetch
        self._store = store
        self._manifests = manifests
        self._mapping = mapping
        self._uid_batch = uid_batch
        self._subject_keys = subject_keys
        self._conditional = conditional_search
        self._stored = stored
        self.writable = writable
        self._device_uid = device_observer_uid
        self._clock = clock

    async def create(
        self,
        payload: Any,
        base: str,
        *,
        if_none_exist: str | None,
        transaction: bool,
        patient: str | None = None,
        user: User | None = None,
    ) -> Created:
        """``patient``: the token's patient context; the manifest must be that patient's (403 otherwise).
        ``user``: who the token names, the manifest's author (:func:`app.planning.manifest_input.author`)."""
        if not self.writable:
            raise MethodNotAllowed("this server is read-only: manifests cannot be created (manifests_writable)")
        manifest, conditions = from_payload(payload)
        if patient is not None:
            mine = f"Patient/{patient}"
            if manifest.subject not in (None, mine):
                own, asked = (
                    await self._subject_keys(patient),
                    await self._subject_keys(manifest.subject.removeprefix("Patient/")),
                )
                if not asked or set(asked) - set(own):
                    raise Forbidden("the manifest's subject is outside the access token's patient context")
            manifest = dataclasses.replace(manifest, subject=manifest.subject or mine)
        condition = if_none_exist or next((c for c in conditions if c), None)
        if condition:  # http.html#cond-update: 0 matches create, 1 returns it, more is 412
            existing = await self._existing(condition, base)
            if existing is not None:
                return self._answer(existing, base, status=200, transaction=transaction)
        # The answer is what a read of the new manifest gives (bodySite included, from the series' BodyPartExamined).
        who = user or User()
        made_by = author(
            manifest,
            fhir_user=who.fhir_user,
            name=who.name,
            family_name=who.family_name,
            given_name=who.given_name,
            device_uid=self._device_uid,
        )
        selections = await self._manifests.with_body_sites(await self._store_kos(manifest, made_by), fresh=True)
        return self._answer(selections, base, status=201, transaction=transaction)

    async def _existing(self, condition: str, base: str) -> list[Resource] | None:
        req = await self._conditional(condition)
        found = (await self._manifests.search(req, base, fresh=True)).get("entry", [])
        kos = {e["resource"]["identifier"][0]["value"] for e in found}
        if len(kos) > 1:
            raise PreconditionFailed(f"If-None-Exist matched {len(kos)} manifests; make it select one")
        return [e["resource"] for e in found] or None

    async def _store_kos(self, manifest: ManifestInput, made_by: Author) -> list[Resource]:
        from pydicom import dcmread

        from ..dicom.kos_build import DeviceObserver, KosCopy, build_kos_copies, encode

        rows = await self._instances([s.sop_instance_uid for s in manifest.instances])
        evidence = self._evidence(manifest, rows)
        patients = {(dj.text(r, dj.PATIENT_ID), dj.text(r, dj.ISSUER_OF_PATIENT_ID)) for r in rows.values()}
        if len(patients) != 1:
            raise Unprocessable(
                "the selected instances belong to more than one patient: "
                + ", ".join(sorted(f"{pid} ({issuer or 'no issuer'})" for pid, issuer in patients))
            )
        (patient,) = patients
        if manifest.subject is not None:
            keys = await self._subject_keys(manifest.subject.removeprefix("Patient/"))
            if not any(k.patient_id == patient[0] and (k.any_issuer or k.issuer == patient[1]) for k in keys):
                raise Unprocessable(f"the selected instances are not {manifest.subject}'s")
        # One copy in each referenced study, each naming the others (PS3.3 C.17.6.2.1, Identical Documents
        # Sequence: required when a KOS references more than one study); the first in the first instance's study.
        studies = list(dict.fromkeys(e.study_uid for e in evidence))
        copies = [
            KosCopy(await self._study(uid), _new_uid(), (manifest.kos_uid if i == 0 else None) or _new_uid())
            for i, uid in enumerate(studies)
        ]
        documents = build_kos_copies(
            copies,
            evidence,
            title=manifest.title,
            description=manifest.description,
            series_number=9901,
            instance_number=1,
            content_datetime=self._clock(),
            # Who made it (TID 1002): the token's fhirUser as the person, else the facade as the device.
            observer_name=made_by.person_name,
            observer_login=made_by.person_login,
            device_observer=(
                DeviceObserver(made_by.device_uid, DEVICE_OBSERVER_NAME, MANUFACTURER) if made_by.device_uid else None
            ),
            manufacturer=MANUFACTURER,
            # A study without TimezoneOffsetFromUTC gets a KOS without one, in the PACS's local time, so the
            # study's start does not move (PS3.3 C.12.1.1.8; app.dicom.kos_build).
            zone=self._mapping.zone,
        )
        parts = [encode(ds) for ds in documents]
        await self._store.store(parts, study=studies[0])  # several archives: stored where the study is
        # Every cache sharing process sees a new generation before this answers: the client's next search, through
        # any worker or replica, is made after the write (app.pacs.cache.CachedQido.invalidate).
        await self._stored()
        # Read back from the bytes stored, so the answer shows exactly what the PACS now holds.
        doc = parse_kos(dcmread(io.BytesIO(parts[0])).to_json_dict())
        return selections_of(doc, self._mapping)

    async def _instances(self, uids: list[str]) -> dict[str, dj.Dataset]:
        found: dict[str, dj.Dataset] = {}
        for i in range(0, len(uids), self._uid_batch):
            part = sorted(uids[i : i + self._uid_batch])
            query = QidoQuery.build("instances", {"SOPInstanceUID": uid_list(part)}, fields=INSTANCE_CHECK_FIELDS)
            for row in (await self._fetch(query)).rows:
                sop = dj.text(row, dj.SOP_INSTANCE_UID)
                if sop in part:
                    found[sop] = row
        missing = [u for u in uids if u not in found]
        if missing:
            shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise Unprocessable(f"the PACS has no instance {shown}")
        return found

    def _evidence(self, manifest: ManifestInput, rows: dict[str, dj.Dataset]) -> list[Evidence]:
        from ..dicom.kos_inputs import Evidence

        out = []
        for s in manifest.instances:
            row = rows[s.sop_instance_uid]
            ev = Evidence.from_qido(row, s.frames)
            wrong = [
                f"{name} {given}"
                for name, given, actual in (
                    ("studyUid", s.study_uid, ev.study_uid),
                    ("seriesUid", s.series_uid, ev.series_uid),
                    ("sopClass", s.sop_class_uid, ev.sop_class_uid),
                )
                if given is not None and given != actual
            ]
            if wrong:
                raise Unprocessable(f"instance {s.sop_instance_uid} is not in/of " + ", ".join(wrong))
            frames = dj.integer(row, dj.NUMBER_OF_FRAMES)
            if s.frames and (frames is None or s.frames[-1] > frames):
                raise Unprocessable(
                    f"instance {s.sop_instance_uid} has {frames or 'no'} frames; cannot select frame {s.frames[-1]}"
                )
            out.append(ev)
        return out

    async def _study(self, study_uid: str) -> PatientStudy:
        from ..dicom.kos_inputs import PatientStudy

        query = QidoQuery.build("studies", {"StudyInstanceUID": study_uid}, fields=("00100021", "00080201"))
        rows = (await self._fetch(query)).rows
        if not rows:
            raise Unprocessable(f"the PACS has no study {study_uid}")
        return PatientStudy.from_qido(rows[0])

    def _answer(self, selections: list[Resource], base: str, *, status: int, transaction: bool) -> Created:
        location = f"{base}/ImagingSelection/{selections[0]['id']}"
        if not transaction:
            return Created(status, selections[0], location)
        label = "201 Created" if status == 201 else "200 OK"
        entries = [
            {
                "fullUrl": f"{base}/ImagingSelection/{s['id']}",
                "resource": s,
                "response": {"status": label, "location": f"ImagingSelection/{s['id']}"},
            }
            for s in selections
        ]
        return Created(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}, None)


def _new_uid() -> str:
    """A UUID-derived UID (PS3.5 B.2): unique without a registered root."""
    return f"2.25.{uuid.uuid4().int}"
