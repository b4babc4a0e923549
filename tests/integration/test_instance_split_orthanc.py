"""instance_query_split on a real Orthanc (issue 19, the cold path): a page's instance rows asked for in two
concurrent requests give exactly what one request gives — the same studies, series and instances, IOCM-rejected
instances still left out — for pages of several studies and for a study of more than SPLIT_ROWS instances (read in
two limit/offset windows), uncached and from the QIDO cache, in R4 and R5.

    6 patients x 4 studies x 3 series x 4 instances        patient, date range pages, _id list, identifier
    one study of 6 series x 120 instances (+ a rejection   read, identifier, patient search, _summary=true
    note rejecting 3 of them), a patient of its own
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.planning.instance_split import SPLIT_ROWS
from app.settings import Settings
from tests.support.dataset import Manifest, build_bulk
from tests.support.fhir_check import checking_client
from tests.support.kos import REJECTED_FOR_QUALITY, make_kos
from tests.support.orthanc import OrthancServer, store

pytestmark = pytest.mark.integration
BIG_PATIENT = "SPLITBIG01"


@dataclass
class Pacs:
    server: OrthancServer
    manifest: Manifest
    big: list[Dataset]
    rejected: set[str]
    note: Dataset  # the rejection note: an instance of the large study itself


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    small, manifest = build_bulk(6, 4, 3, 4, seed=19)
    big, _ = build_bulk(1, 1, 6, 120, seed=1019)
    for ds in big:
        ds.PatientID = BIG_PATIENT
    assert len(big) > SPLIT_ROWS  # the read is split into windows
    note = make_kos([big[5], big[300], big[700]], title=REJECTED_FOR_QUALITY, seed=19)
    with OrthancServer() as server:
        store(server.dicomweb_url, [*small, *big, note])
        yield Pacs(server, manifest, big, {big[i].SOPInstanceUID for i in (5, 300, 700)}, note)


class Recording(httpx.AsyncBaseTransport):
    """The network, with each QIDO instance-level path noted (to see that split = 2 did split)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.instance_queries: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/instances" in request.url.path:
            self.instance_queries.append(str(request.url))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def clients(pacs: Pacs) -> Iterator[dict[str, tuple[TestClient, Recording]]]:
    out: dict[str, tuple[TestClient, Recording]] = {}
    opened = []
    for name, split, ttl in (("one", 1, 0), ("split", 2, 0), ("split_cached", 2, 600)):
        settings = Settings(
            auth_mode="open",
            dicomweb_url=pacs.server.dicomweb_url,
            instance_query_split=split,
            cache_ttl=ttl,
            hide_rejected=True,
        )
        recording = Recording()
        client = checking_client(create_app(settings, transport=recording))
        client.__enter__()
        opened.append(client)
        out[name] = (client, recording)
    yield out
    for client in opened:
        client.__exit__(None, None, None)


def _content(body: dict[str, Any]) -> Any:
    """What a client sees of an answer, without what differs per request (Bundle id, timestamps)."""
    if body.get("resourceType") == "Bundle":
        return {
            "entries": [e["resource"] for e in body.get("entry", [])],
            "links": {link["relation"]: link["url"] for link in body.get("link", [])},
            "total": body.get("total"),
        }
    return body


def _instances(study: dict[str, Any]) -> list[str]:
    return [i["uid"] for se in study.get("series", []) for i in se.get("instance", [])]


def _paths(pacs: Pacs) -> list[str]:
    by_patient = [patient_ids.encode(pid, issuer) for pid, issuer in pacs.manifest.patients]
    uids = [s.study_uid for s in pacs.manifest.studies]
    big = pacs.big[0].StudyInstanceUID
    return [
        *(f"ImagingStudy?patient=Patient/{p}" for p in by_patient[:3]),
        f"ImagingStudy?patient=Patient/{patient_ids.encode(BIG_PATIENT, None)}",
        "ImagingStudy?started=ge2015-01-01&_count=7",
        "ImagingStudy?started=ge2015-01-01&_count=7&_offset=7",
        "ImagingStudy?started=ge2015-01-01&_count=50",
        "ImagingStudy?started=ge2015-01-01&_count=10&_sort=-started",
        f"ImagingStudy?_id={','.join(uids[:9])}",
        f"ImagingStudy?identifier=urn:dicom:uid%7Curn:oid:{uids[3]}",
        f"ImagingStudy?identifier=urn:dicom:uid%7Curn:oid:{big}",
        f"ImagingStudy?_id={big},{uids[0]}",
        f"ImagingStudy?patient=Patient/{by_patient[0]}&_summary=true",
        f"ImagingStudy/{big}",
        f"ImagingStudy/{uids[5]}",
    ]


@pytest.mark.parametrize("base", ["/fhir/R4", "/fhir/R5"])
def test_split_answers_equal_one_request_answers(pacs, clients, base):
    one, _ = clients["one"]
    for path in _paths(pacs):
        want = one.get(f"{base}/{path}")
        assert want.status_code == 200, (path, want.text[:300])
        for name in ("split", "split_cached", "split_cached"):  # the second cached one: from the QIDO cache
            got = clients[name][0].get(f"{base}/{path}", headers={"Cache-Control": "no-store"})
            assert got.status_code == 200, (name, path, got.text[:300])
            assert _content(got.json()) == _content(want.json()), (name, path)


def test_the_large_study_has_every_kept_instance_once(pacs, clients):
    big = pacs.big[0].StudyInstanceUID
    want = sorted(ds.SOPInstanceUID for ds in [*pacs.big, pacs.note] if ds.SOPInstanceUID not in pacs.rejected)
    for name in ("one", "split", "split_cached"):
        client, _ = clients[name]
        got = _instances(client.get(f"/fhir/R4/ImagingStudy/{big}", headers={"Cache-Control": "no-cache"}).json())
        assert sorted(got) == want and len(got) == len(set(got)), name


def test_every_study_of_a_page_has_its_instances_once(pacs, clients):
    truth = {s.study_uid: sorted(i.uid for se in s.series for i in se.instances) for s in pacs.manifest.studies}
    client, _ = clients["split"]
    body = client.get("/fhir/R4/ImagingStudy?started=ge2015-01-01&_count=30").json()
    studies = [e["resource"] for e in body["entry"] if e["resource"]["id"] != pacs.big[0].StudyInstanceUID]
    assert len(studies) == 24 == len(body["entry"]) - 1  # and the large study (its dates are in range too)
    for study in studies:
        assert sorted(_instances(study)) == truth[study["id"]], study["id"]


def test_split_2_did_split(pacs, clients):
    """Without this the equality above could hold because nothing was split."""
    client, recording = clients["split"]
    big = pacs.big[0].StudyInstanceUID
    recording.instance_queries.clear()
    client.get(f"/fhir/R4/ImagingStudy/{big}", headers={"Cache-Control": "no-cache"})
    windows = [q for q in recording.instance_queries if f"StudyInstanceUID={big}&" in q]
    assert len(windows) == 2
    assert any(q.endswith(f"&limit={SPLIT_ROWS}") for q in windows)
    assert any(q.endswith(f"&offset={SPLIT_ROWS}") for q in windows)
    recording.instance_queries.clear()
    pid = patient_ids.encode(*pacs.manifest.patients[0])
    client.get(f"/fhir/R4/ImagingStudy?patient=Patient/{pid}", headers={"Cache-Control": "no-cache"})
    asked = [q.split("StudyInstanceUID=")[1].split("&")[0].split(",") for q in recording.instance_queries]
    assert len(asked) == 2 and sorted(u for a in asked for u in a) == sorted(
        s.study_uid for s in pacs.manifest.studies if s.patient_id == pacs.manifest.patients[0][0]
    )
