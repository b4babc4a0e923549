"""IHE RAD MADO on a real Orthanc: every KOS the test stores is found as R4 DocumentReferences in both forms (by
patient, study-instance-uid, accession-number, modality, format); the DICOM form's attachment, fetched with
dicomweb-client, is the KOS; the FHIR form's document Bundle lists exactly what the KOS references; a manifest
created through the R5 base shows on the next R4 search, and one stored as a copy per study is one manifest;
IOCM rejection notes never appear. Every body passes the R4 validators (tests.support.fhir_check)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from starlette.testclient import TestClient

from app.dicom.kos import KOS_SOP_CLASS_UID
from app.fhir import patient_ids
from app.main import create_app
from app.mapping import document_reference as mado
from app.settings import Settings
from tests.support.facade import FacadeProcess
from tests.support.fhir_check import checking_client
from tests.support.kos import (
    FOR_CONFERENCE,
    FOR_REFERRING_PROVIDER,
    FOR_TEACHING,
    REJECTED_FOR_QUALITY,
    make_kos,
    make_multiframe,
    make_study,
)
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store

pytestmark = pytest.mark.integration
R4 = "/fhir/R4"
PID = patient_ids.encode("MADO01", None)
KOS_FORMAT = f"{mado.DCMUID_SYSTEM}|{KOS_SOP_CLASS_UID}"
FHIR_FORMAT = f"{mado.IHE_FORMAT_SYSTEM}|urn:ihe:rad:MADO:fhir-manifest:2026"


@dataclass
class Pacs:
    server: OrthancServer
    ct: list[Dataset]
    mr: list[Dataset]
    kos: dict[str, tuple[Dataset, list[Dataset]]]  # name → (KOS, what it references)
    rejection: Dataset


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    who = {"patient_id": "MADO01", "patient_name": "Müller^Jürgen"}
    ct = make_study(41, "ct", **who, modality="CT", series_sizes=(2, 2), accession="ACC-MADO-CT")
    mr = make_study(41, "mr", **who, modality="MR", series_sizes=(3,), study_date="20240210", accession="ACC-MADO-MR")
    other = make_study(41, "other", patient_id="MADO02", patient_name="Roe^Rick", modality="CT")
    cine = make_multiframe(ct[0], frames=4, seed=41)
    refs: dict[str, tuple[list[Dataset], dict[str, Any]]] = {
        "teaching": (ct[:2], dict(title=FOR_TEACHING, description="Classic findings", seed=1)),
        "conference": ([cine, mr[0]], dict(title=FOR_CONFERENCE, frames={cine.SOPInstanceUID: [2, 3]}, seed=2)),
        "referring": (mr[1:], dict(title=FOR_REFERRING_PROVIDER, seed=3, timezone_offset="+0100")),
        "other": (other, dict(title=FOR_TEACHING, seed=4)),
    }
    kos = {name: (make_kos(r, **kw), list(r)) for name, (r, kw) in refs.items()}
    rejection = make_kos([ct[3]], title=REJECTED_FOR_QUALITY, seed=5)
    with OrthancServer() as server:
        store(server.dicomweb_url, [*ct, *mr, cine, *other, *(k for k, _ in kos.values()), rejection])
        yield Pacs(server, ct, mr, kos, rejection)


@pytest.fixture(scope="module")
def facade(pacs) -> Iterator[TestClient]:
    settings = Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url)
    with checking_client(create_app(settings)) as client:
        yield client


def search(client: TestClient, **params: str) -> list[dict[str, Any]]:
    r = client.get(f"{R4}/DocumentReference", params=params)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def forms(kos: Dataset) -> set[str]:
    uid = str(kos.SOPInstanceUID)
    return {mado.kos_document_id(uid), mado.fhir_document_id(uid)}


def ids(found: list[dict[str, Any]]) -> set[str]:
    return {d["id"] for d in found}


@pytest.mark.parametrize("name", ["teaching", "conference", "referring", "other"])
def test_every_kos_is_found_in_both_forms(facade, pacs, name):
    kos, referenced = pacs.kos[name]
    both = forms(kos)
    pid = patient_ids.encode(str(kos.PatientID), None)
    assert both <= ids(search(facade, patient=f"Patient/{pid}"))
    studies = {str(ds.StudyInstanceUID) for ds in referenced}
    for study in studies:
        assert both <= ids(search(facade, **{"study-instance-uid": study}))
        assert both <= ids(search(facade, **{"study-instance-uid": f"urn:dicom:uid|urn:oid:{study}"}))
    for accession in {str(ds.AccessionNumber) for ds in referenced}:
        assert both <= ids(search(facade, **{"accession-number": accession}))
    for modality in {str(ds.Modality) for ds in referenced}:
        assert both <= ids(search(facade, patient=f"Patient/{pid}", modality=modality))
    by_format = {fmt: ids(search(facade, patient=f"Patient/{pid}", format=fmt)) for fmt in (KOS_FORMAT, FHIR_FORMAT)}
    assert mado.kos_document_id(str(kos.SOPInstanceUID)) in by_format[KOS_FORMAT] - by_format[FHIR_FORMAT]
    assert mado.fhir_document_id(str(kos.SOPInstanceUID)) in by_format[FHIR_FORMAT] - by_format[KOS_FORMAT]
    found = search(facade, identifier=f"urn:dicom:uid|urn:oid:{kos.SOPInstanceUID}")
    assert ids(found) == both


def test_rejection_notes_never_appear(facade, pacs):
    found = search(facade, patient=f"Patient/{PID}")
    assert ids(found) == set().union(*(forms(pacs.kos[n][0]) for n in ("teaching", "conference", "referring")))
    uid = str(pacs.rejection.SOPInstanceUID)
    assert search(facade, identifier=f"urn:oid:{uid}") == []
    assert facade.get(f"{R4}/DocumentReference/{uid}").status_code == 404


@pytest.fixture(scope="module")
def served(pacs) -> Iterator[FacadeProcess]:
    """The facade as a real server (uvicorn), so dicomweb-client (requests) can follow attachment URLs to it."""
    with FacadeProcess(pacs.server.dicomweb_url) as process:
        yield process


@pytest.mark.parametrize("name", ["teaching", "conference", "referring", "other"])
def test_the_attachment_is_the_kos(served, pacs, name):
    kos, _ = pacs.kos[name]
    uid = str(kos.SOPInstanceUID)
    doc = httpx.get(f"{served.base}/DocumentReference/{uid}", timeout=30).json()
    url = doc["content"][0]["attachment"]["url"]
    assert doc["content"][0]["attachment"]["contentType"] == "application/dicom"
    # Through the facade's WADO-RS gateway (never the PACS), as a viewer would follow it with dicomweb-client.
    root = served.base.removesuffix("/fhir/R4") + "/dicomweb"
    assert url.startswith(root + "/studies/")
    path = url.removeprefix(root).split("/")
    study, series, instance = path[2], path[4], path[6]
    assert (study, series) == (str(kos.StudyInstanceUID), str(kos.SeriesInstanceUID))
    fetched = DICOMwebClient(url=root).retrieve_instance(study, series, instance)
    assert fetched.SOPInstanceUID == uid and fetched.SOPClassUID == KOS_SOP_CLASS_UID
    assert fetched.ConceptNameCodeSequence[0].CodeValue == kos.ConceptNameCodeSequence[0].CodeValue


@pytest.mark.parametrize("name", ["teaching", "conference", "referring", "other"])
def test_the_document_bundle_lists_exactly_the_kos_references(facade, pacs, name):
    kos, referenced = pacs.kos[name]
    fhir_doc = facade.get(f"{R4}/DocumentReference/{mado.fhir_document_id(str(kos.SOPInstanceUID))}").json()
    url = fhir_doc["content"][0]["attachment"]["url"]
    assert url.startswith("http://testserver/fhir/R4/Bundle/")
    r = facade.get(url)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "document" and b["entry"][0]["resource"]["resourceType"] == "Composition"
    studies = [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    got = {
        (st["identifier"][0]["value"], s["uid"], i["uid"])
        for st in studies
        for s in st["series"]
        for i in s["instance"]
    }
    want = {(f"urn:oid:{ds.StudyInstanceUID}", str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in referenced}
    assert got == want
    evidence = {
        str(sop.ReferencedSOPInstanceUID)
        for st in kos.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for sop in se.ReferencedSOPSequence
    }
    assert {i for _, _, i in got} == evidence


def test_a_manifest_created_through_r5_shows_on_the_next_r4_search(facade, pacs):
    before = ids(search(facade, patient=f"Patient/{PID}"))  # warms the cache
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _selection(pacs.ct[2:3]), "request": {"method": "POST", "url": "ImagingSelection"}},
            {"resource": _selection(pacs.mr[2:3]), "request": {"method": "POST", "url": "ImagingSelection"}},
        ],
    }
    r = facade.post("/fhir/R5", json=bundle, headers={"content-type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    uid = r.json()["entry"][0]["resource"]["identifier"][0]["value"].removeprefix("urn:oid:")
    after = search(facade, patient=f"Patient/{PID}")
    new = ids(after) - before
    # Two studies: the KOS is stored as one copy per study (PS3.3 C.17.6.2.1), and is one manifest, two forms.
    assert new == {mado.kos_document_id(uid), mado.fhir_document_id(uid)}
    doc = next(d for d in after if d["id"] == uid)
    assert len(doc["identifier"]) == 2  # both copies' UIDs
    related = {i["identifier"]["value"] for i in doc["context"]["related"]}
    assert {"ACC-MADO-CT", "ACC-MADO-MR", f"urn:oid:{pacs.ct[2].StudyInstanceUID}"} <= related


def _selection(instances: list[Dataset]) -> dict[str, Any]:
    return {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "113004"}]},
        "studyUid": instances[0].StudyInstanceUID,
        "seriesUid": instances[0].SeriesInstanceUID,
        "instance": [{"uid": ds.SOPInstanceUID} for ds in instances],
    }


def test_paging_count_and_include_on_a_real_pacs(facade, pacs):
    r = facade.get(f"{R4}/DocumentReference", params={"patient": f"Patient/{PID}", "_summary": "count"})
    total = r.json()["total"]
    assert total >= 6
    seen: list[str] = []
    url: str | None = f"{R4}/DocumentReference?patient=Patient/{PID}&_count=4&_include=DocumentReference:subject"
    while url:
        page = facade.get(url).json()
        seen += [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"]
        assert [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include"] == [PID]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == total == len(set(seen))
