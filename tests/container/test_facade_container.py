"""The facade container in front of the Orthanc container (issue 23, item 3): what an EMR and a viewer do, with
real clients, through the container only: a patient's studies, a read, paging to the last page, WADO-RS through
the gateway, and a manifest POSTed and found again."""

from __future__ import annotations

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.container.conftest import P1, P2, Pacs
from tests.support.containers import Facade

fhirpy = pytest.importorskip("fhirpy")

pytestmark = pytest.mark.container
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def test_a_patients_studies_with_fhirpy(facade: Facade, pacs: Pacs):
    client = fhirpy.SyncFHIRClient(facade.base)
    found = client.resources("ImagingStudy").search(patient=f"Patient/{P1}").fetch_all()
    assert {s.id for s in found} == pacs.p1_uids
    assert {s["subject"]["reference"] for s in found} == {f"Patient/{P1}"}
    newest = client.resources("ImagingStudy").search(patient=f"Patient/{P1}", started__ge="2024-01-05").fetch_all()
    assert [s["started"][:10] for s in newest] == ["2024-01-05"]


def test_a_read(facade: Facade, pacs: Pacs):
    study = pacs.p2_study
    uid = str(study[0].StudyInstanceUID)
    r = httpx.get(f"{facade.base}/ImagingStudy/{uid}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["identifier"][0]["value"] == f"urn:oid:{uid}"
    assert body["numberOfSeries"] >= 2 and body["subject"]["reference"] == f"Patient/{P2}"
    assert httpx.get(f"{facade.base}/ImagingStudy/1.2.3.999").status_code == 404


def test_paging_follows_next_links_to_the_last_page(facade: Facade, pacs: Pacs):
    url: str | None = f"{facade.base}/ImagingStudy?patient=Patient/{P1}&_count=2"
    pages: list[list[str]] = []
    while url is not None:
        r = httpx.get(url)
        assert r.status_code == 200, r.text
        bundle = r.json()
        pages.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        assert url is None or url.startswith(facade.base)  # links point at the container, not the PACS
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(uid for page in pages for uid in page) == sorted(pacs.p1_uids)


def test_wado_rs_through_the_gateway_with_dicomweb_client(facade: Facade, pacs: Pacs):
    study = pacs.p2_study
    uid = str(study[0].StudyInstanceUID)
    r = httpx.get(f"{facade.base}/ImagingStudy", params={"_id": uid, "_include": "ImagingStudy:endpoint"})
    (endpoint,) = [e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "Endpoint"]
    assert endpoint["address"] == f"{facade.root}/dicomweb"  # the gateway in the container, not Orthanc
    client = DICOMwebClient(url=endpoint["address"])
    # (A manifest another test makes adds a KO series to this study: compare the study's own instances.)
    retrieved = client.retrieve_study(uid, media_types=(("application/dicom", "*"),))
    assert {ds.SOPInstanceUID for ds in retrieved} >= {ds.SOPInstanceUID for ds in study}
    first = study[0]
    series = client.retrieve_series(uid, first.SeriesInstanceUID, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(
        ds.SOPInstanceUID for ds in study if ds.SeriesInstanceUID == first.SeriesInstanceUID
    )
    instance = client.retrieve_instance(uid, first.SeriesInstanceUID, first.SOPInstanceUID)
    assert instance.PixelData == first.PixelData
    metadata = client.retrieve_study_metadata(uid)
    assert {item["00080018"]["Value"][0] for item in metadata} >= {str(ds.SOPInstanceUID) for ds in study}
    assert {s["0020000E"]["Value"][0] for s in client.search_for_series(uid)} >= {
        str(ds.SeriesInstanceUID) for ds in study
    }


def test_a_manifest_posted_is_stored_and_found(facade: Facade, pacs: Pacs):
    study = pacs.p2_study
    selections = f"{facade.root}/fhir/R5/ImagingSelection?patient=Patient/{P2}"
    before = httpx.get(selections).json().get("entry", [])
    body = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113004"}]},
        "studyUid": str(study[0].StudyInstanceUID),
        "seriesUid": str(study[0].SeriesInstanceUID),
        "instance": [{"uid": str(study[0].SOPInstanceUID)}],
    }
    r = httpx.post(
        f"{facade.root}/fhir/R5/ImagingSelection", json=body, headers={"content-type": "application/fhir+json"}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    after = httpx.get(selections).json()["entry"]
    assert created["id"] in {e["resource"]["id"] for e in after} and len(after) == len(before) + 1
    # Stored in the Orthanc container as a KOS: a new KO series of the study.
    kos = httpx.get(f"{pacs.dicomweb_url}/studies/{study[0].StudyInstanceUID}/series", params={"Modality": "KO"})
    assert kos.status_code == 200 and len(kos.json()) == len(after)
