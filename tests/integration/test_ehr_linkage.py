"""EHR linkage end to end: the EMR's own Patient ids, resolved through a tiny EHR FHIR server process, find the
PACS studies of the MRN, and the results point back at the EHR's Patient."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.settings import Settings
from tests.support.dataset import Manifest
from tests.support.ehr import EhrProcess, ehr_patient
from tests.support.facade import FacadeProcess
from tests.support.fhir_check import check, checking_client

pytestmark = pytest.mark.integration
TOKEN = "ehr-test-token"
DEFAULT_SYSTEM = "urn:x-imaging-facade:patient-id"
HOSP_A = "http://hospital-a.example.org/mrn"
PATIENTS = {
    "123": ehr_patient("123", "MRN0001", system=DEFAULT_SYSTEM, family="Müller"),
    "shared-a": ehr_patient("shared-a", "SHARED01", system=HOSP_A, family="Smith"),
    "456": ehr_patient("456", "NOT-IN-PACS", system=DEFAULT_SYSTEM, family="Nobody"),
    "no-mrn": {"resourceType": "Patient", "id": "no-mrn", "identifier": [{"system": "x", "value": "1"}]},
}


@pytest.fixture(scope="module")
def ehr() -> Iterator[EhrProcess]:
    with EhrProcess(PATIENTS, token=TOKEN) as server:
        yield server


def settings(orthanc, ehr: EhrProcess, **kw: Any) -> Settings:
    values = {
        "auth_mode": "open",
        "dicomweb_url": orthanc.dicomweb_url,
        "ehr_fhir_url": ehr.base,
        "ehr_token": TOKEN,
        "issuer_systems": {"HOSP-A": HOSP_A},
    }
    return Settings(**(values | kw))


@pytest.fixture(scope="module")
def facade(orthanc, ehr) -> Iterator[TestClient]:
    with checking_client(create_app(settings(orthanc, ehr))) as client:
        yield client


def studies(client: TestClient, query: str) -> list[dict[str, Any]]:
    r = client.get(f"/fhir/R4/ImagingStudy?{query}")
    assert r.status_code == 200, r.text
    check(r.json())
    return [e["resource"] for e in r.json().get("entry", [])]


def test_ehr_id_finds_the_mrns_studies_and_the_subject_points_back(facade, orthanc):
    manifest: Manifest = orthanc.manifest
    found = [s for s in studies(facade, "patient=Patient/123") if s["resourceType"] == "ImagingStudy"]
    assert {s["id"] for s in found} == {s.study_uid for s in manifest.studies_of("MRN0001")}
    for study in found:
        assert study["subject"]["reference"] == "Patient/123"
        assert study["subject"]["identifier"]["value"] == "MRN0001"


def test_absolute_ehr_reference_and_issuer_from_the_mrn_system(facade, orthanc, ehr):
    manifest: Manifest = orthanc.manifest
    got = {s["id"] for s in studies(facade, f"patient={quote(ehr.base)}/Patient/123")}
    assert got == {s.study_uid for s in manifest.studies_of("MRN0001")}
    # The MRN system names HOSP-A: the other issuer's SHARED01 studies are another patient.
    got = {s["id"] for s in studies(facade, "subject=Patient/shared-a")}
    assert got == {s.study_uid for s in manifest.studies_of("SHARED01", "HOSP-A")}


def test_unknown_ehr_patient_no_mrn_or_mrn_not_in_pacs_match_nothing(facade):
    for ref in ("Patient/456", "Patient/no-mrn", "Patient/999", "Patient/bad%20id"):
        assert studies(facade, f"patient={ref}") == [], ref


def test_lookups_are_cached(facade, ehr):
    studies(facade, "patient=Patient/456&_count=1")
    before = ehr.reads()
    for _ in range(3):
        studies(facade, "patient=Patient/456")
    assert ehr.reads() == before
    studies(facade, "patient=Patient/456&_count=3")  # another search, same EHR Patient: still cached
    assert ehr.reads() == before


def test_include_and_read_use_the_ehr_id(facade):
    resources = studies(facade, "patient=Patient/123&_include=ImagingStudy:patient")
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert [p["id"] for p in patients] == ["123"]
    read = facade.get("/fhir/R4/Patient/123")
    assert read.status_code == 200 and read.json()["id"] == "123"
    assert read.json()["identifier"][0]["value"] == "MRN0001"
    assert facade.get("/fhir/R4/Patient/456").status_code == 404
    body = facade.get("/fhir/R4/Patient?_id=123").json()
    assert [e["resource"]["id"] for e in body["entry"]] == ["123"]


def test_our_own_ids_still_work(facade, orthanc):
    pid = patient_ids.encode("MRN0001", None)
    found = studies(facade, f"patient=Patient/{pid}")
    assert found and all(s["subject"]["reference"] == f"Patient/{pid}" for s in found)


def test_ehr_refusing_the_facade_is_a_clean_502(orthanc, ehr):
    with checking_client(create_app(settings(orthanc, ehr, ehr_token="wrong"))) as client:
        r = client.get("/fhir/R4/ImagingStudy?patient=Patient/123")
    assert r.status_code == 502
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and "EHR" in body["issue"][0]["diagnostics"]
    assert str(ehr.port) not in r.text and "wrong" not in r.text


def test_real_clients_search_by_the_ehr_id(orthanc, ehr):
    fhirpy = pytest.importorskip("fhirpy")
    fhirclient_client = pytest.importorskip("fhirclient.client")
    from fhirclient.models.imagingstudy import ImagingStudy

    want = {s.study_uid for s in orthanc.manifest.studies_of("MRN0001")}
    env = {"FACADE_EHR_FHIR_URL": ehr.base, "FACADE_EHR_TOKEN": TOKEN}
    with FacadeProcess(orthanc.dicomweb_url, env=env) as facade:
        found = fhirpy.SyncFHIRClient(facade.base).resources("ImagingStudy").search(patient="Patient/123").fetch_all()
        assert {s.id for s in found} == want
        assert {s["subject"]["reference"] for s in found} == {"Patient/123"}
        smart = fhirclient_client.FHIRClient(settings={"app_id": "facade-tests", "api_base": facade.base})
        smart.prepare()
        found = list(ImagingStudy.where(struct={"patient": "123"}).perform_resources_iter(smart.server))
        assert {s.id for s in found} == want
