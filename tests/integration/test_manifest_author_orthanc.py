"""Who made a manifest, on a real Orthanc (issue 19, item 2). A manifest POSTed to /fhir/R5/ImagingSelection is
stored as a KOS whose observer context names its author, and every later read shows it: R5 ImagingSelection
``performer`` (read and search) and the R4 IHE MADO DocumentReferences' ``author`` (read and search), both forms.

- SMART, token with ``fhirUser`` and a name: the person observer, referenced by the ``fhirUser``;
- SMART, token without ``fhirUser``: the facade as device observer (Device Observer UID ``device_observer_uid``);
- open mode: the facade as device observer too.

A KOS a person made in the PACS (person observer, no login) keeps showing that person by name.
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
from app.mapping import document_reference as mado
from app.settings import DEVICE_OBSERVER_UID, Settings
from tests.support.fhir_check import checking_client
from tests.support.kos import FOR_TEACHING, make_kos, make_study
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

pytestmark = pytest.mark.integration
KEYS = TokenIssuer()
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PID = patient_ids.encode("AUTH01", None)
FHIR_USER = "https://ehr.example.org/fhir/Practitioner/p-7"
SCOPE = "user/ImagingSelection.c user/ImagingSelection.rs user/DocumentReference.rs"
FACADE = {
    "type": "Device",
    "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{DEVICE_OBSERVER_UID}"},
    "display": "Imaging FHIR facade",
}


@dataclass
class Pacs:
    server: OrthancServer
    ct: list[Dataset]
    by_hand: Dataset  # a KOS a radiologist made at a PACS workstation


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    ct = make_study(47, "ct", patient_id="AUTH01", patient_name="Müller^Jürgen", series_sizes=(4,))
    by_hand = make_kos(ct[3:], title=FOR_TEACHING, observer_name="Wélby^Marcus", seed=47)
    with OrthancServer() as server:
        store(server.dicomweb_url, [*ct, by_hand])
        yield Pacs(server, ct, by_hand)


@pytest.fixture(scope="module")
def smart(pacs, tmp_path_factory) -> Iterator[TestClient]:
    settings = Settings(
        dicomweb_url=pacs.server.dicomweb_url,
        auth_mode="smart",
        jwks_file=str(KEYS.write_jwks(tmp_path_factory.mktemp("keys"))),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
    )
    with checking_client(create_app(settings)) as client:  # check / check_r5 on every answer
        yield client


@pytest.fixture(scope="module")
def open_facade(pacs) -> Iterator[TestClient]:
    with checking_client(create_app(Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url))) as client:
        yield client


def create(client: TestClient, instance: Dataset, headers: dict[str, str]) -> dict[str, Any]:
    body = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113004"}]},
        "studyUid": str(instance.StudyInstanceUID),
        "seriesUid": str(instance.SeriesInstanceUID),
        "instance": [{"uid": str(instance.SOPInstanceUID)}],
    }
    r = client.post(
        "/fhir/R5/ImagingSelection", json=body, headers={"content-type": "application/fhir+json", **headers}
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def get(client: TestClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = client.get(url, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def shown_everywhere(client: TestClient, created: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    """The authors of one new manifest as every read shows them; all equal (R5 performer.actor, R4 author)."""
    kos_uid = created["identifier"][0]["value"].removeprefix("urn:oid:")
    read = get(client, f"/fhir/R5/ImagingSelection/{created['id']}", headers)
    (found,) = [
        e["resource"]
        for e in get(client, f"/fhir/R5/ImagingSelection?patient=Patient/{PID}", headers)["entry"]
        if e["resource"]["id"] == created["id"]
    ]
    r5 = [[p["actor"] for p in res["performer"]] for res in (created, read, found)]
    documents = [
        r["resource"] for r in get(client, f"/fhir/R4/DocumentReference?patient=Patient/{PID}", headers)["entry"]
    ]
    mine = {mado.kos_document_id(kos_uid), mado.fhir_document_id(kos_uid)}
    r4 = [d["author"] for d in documents if d["id"] in mine]
    r4 += [get(client, f"/fhir/R4/DocumentReference/{rid}", headers)["author"] for rid in sorted(mine)]
    assert len(r4) == 4
    every = r5 + r4
    assert all(authors == every[0] for authors in every), every
    return every[0]


def test_smart_token_with_fhir_user_and_name(pacs, smart):
    h = KEYS.headers(SCOPE, fhirUser=FHIR_USER, name="Jane Roe")
    created = create(smart, pacs.ct[0], h)
    assert shown_everywhere(smart, created, h) == [{"reference": FHIR_USER, "display": "Jane Roe"}]


def test_smart_token_without_fhir_user(pacs, smart):
    h = KEYS.headers(SCOPE)
    created = create(smart, pacs.ct[1], h)
    assert shown_everywhere(smart, created, h) == [FACADE]


def test_open_mode(pacs, open_facade):
    created = create(open_facade, pacs.ct[2], {})
    assert shown_everywhere(open_facade, created, {}) == [FACADE]


def test_the_stored_kos_names_its_author(pacs, smart):
    """In the PACS itself (WADO-RS metadata): the observer context TID 1002 as written."""
    h = KEYS.headers(SCOPE, fhirUser="Practitioner/9", family_name="Roe", given_name="Jane")
    created = create(smart, pacs.ct[0], h)
    kos_uid = created["identifier"][0]["value"].removeprefix("urn:oid:")
    base = pacs.server.dicomweb_url
    (row,) = httpx.get(f"{base}/instances?SOPInstanceUID={kos_uid}", timeout=10).json()
    series = row["0020000E"]["Value"][0]
    url = f"{base}/studies/{pacs.ct[0].StudyInstanceUID}/series/{series}/instances/{kos_uid}/metadata"
    (meta,) = httpx.get(url, timeout=10).json()
    items = {
        item["0040A043"]["Value"][0]["00080100"]["Value"][0]: item
        for item in meta["0040A730"]["Value"]
        if item["0040A010"]["Value"][0] == "HAS OBS CONTEXT"
    }
    assert items["121005"]["0040A168"]["Value"][0]["00080100"]["Value"] == ["121006"]  # Person
    assert items["121008"]["0040A123"]["Value"] == [{"Alphabetic": "Roe^Jane"}]
    assert items["128774"]["0040A160"]["Value"] == ["Practitioner/9"]


def test_a_kos_made_in_the_pacs_keeps_its_person(pacs, open_facade):
    uid = str(pacs.by_hand.SOPInstanceUID)
    doc = get(open_facade, f"/fhir/R4/DocumentReference/{uid}", {})
    assert doc["author"] == [{"display": "Marcus Wélby"}]
