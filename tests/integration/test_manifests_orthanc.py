"""Key-image manifests end to end on a real Orthanc: KOS made with highdicom → R5 ImagingSelection (search,
read, includes), rejection notes hiding instances from ImagingStudy (R4 and R5), and creating a manifest with
POST (STOW-RS), found again by a search and fetched back with WADO-RS."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest
from pydicom import Dataset
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.settings import Settings
from tests.support.fhir_check import checking_client
from tests.support.kos import (
    FOR_CONFERENCE,
    FOR_REFERRING_PROVIDER,
    FOR_TEACHING,
    QUALITY_ISSUE,
    REJECTED_FOR_QUALITY,
    make_kos,
    make_multiframe,
    make_study,
)
from tests.support.orthanc import OrthancServer, dicomweb_plugin, encode_dataset, orthanc_binary, store

pytestmark = pytest.mark.integration
DCM = "http://dicom.nema.org/resources/ontology/DCM"
R5 = "/fhir/R5"


@dataclass
class Pacs:
    server: OrthancServer
    ct: list[Dataset]
    mr: list[Dataset]
    cine: Dataset
    other: list[Dataset]
    kos: dict[str, Dataset]
    rejected: Dataset


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    who = {"patient_id": "KOS0002", "patient_name": "Pérez^Ana"}
    ct = make_study(31, "ct", **who, modality="CT", series_sizes=(2, 2), study_date="20240105")
    mr = make_study(31, "mr", **who, modality="MR", series_sizes=(3,), study_date="20240210")
    cine = make_multiframe(ct[0], frames=5, seed=31)
    other = make_study(31, "other", patient_id="KOS0003", patient_name="Roe^Rick", modality="CT")
    kos = {
        "teaching": make_kos(ct[:2], title=FOR_TEACHING, description="Classic findings", seed=1),
        "conference": make_kos(
            [cine, mr[0]],
            title=FOR_CONFERENCE,
            frames={cine.SOPInstanceUID: [2, 4]},
            seed=2,
            content_date="20240315",
            timezone_offset="+0100",
        ),
        "referring": make_kos(mr[1:], title=FOR_REFERRING_PROVIDER, seed=3, content_date="20240401"),
        "quality": make_kos([ct[3]], title=QUALITY_ISSUE, seed=4),
        "rejection": make_kos([ct[2]], title=REJECTED_FOR_QUALITY, seed=5),
    }
    with OrthancServer() as server:
        store(server.dicomweb_url, [*ct, *mr, cine, *other, *kos.values()])
        yield Pacs(server, ct, mr, cine, other, kos, ct[2])


@pytest.fixture(scope="module")
def facade(pacs) -> Iterator[TestClient]:
    with checking_client(create_app(Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url))) as client:
        yield client


def get(client: TestClient, url: str, status: int = 200) -> dict[str, Any]:
    r = client.get(url)
    assert r.status_code == status, r.text
    return r.json()


def entries(bundle: dict[str, Any], rtype: str = "ImagingSelection") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == rtype]


def kos_uids(bundle: dict[str, Any]) -> set[str]:
    return {s["identifier"][0]["value"].removeprefix("urn:oid:") for s in entries(bundle)}


PID = patient_ids.encode("KOS0002", None)


def test_r5_metadata_lists_imaging_selection_with_create(facade):
    cs = get(facade, f"{R5}/metadata")
    assert cs["fhirVersion"] == "5.0.0"
    sel = next(r for r in cs["rest"][0]["resource"] if r["type"] == "ImagingSelection")
    assert {i["code"] for i in sel["interaction"]} == {"read", "search-type", "create"}
    assert {"patient", "code", "study-uid", "derived-from", "identifier", "issued", "body-site"} <= {
        p["name"] for p in sel["searchParam"]
    }
    study = next(r for r in cs["rest"][0]["resource"] if r["type"] == "ImagingStudy")
    assert "body-site" in {p["name"] for p in study["searchParam"]}
    assert get(facade, "/fhir/R4/metadata")["fhirVersion"] == "4.0.1"


def test_patient_search_shows_every_manifest_but_no_rejection_note(facade, pacs):
    bundle = get(facade, f"{R5}/ImagingSelection?patient=Patient/{PID}")
    want = {k: v.SOPInstanceUID for k, v in pacs.kos.items() if k != "rejection"}
    assert kos_uids(bundle) == set(want.values())
    assert bundle["total"] == len(entries(bundle)) == 5  # the conference KOS spans two studies: two resources
    conference = [s for s in entries(bundle) if s["code"]["coding"][0]["code"] == "113005"]
    assert {s["studyUid"] for s in conference} == {pacs.cine.StudyInstanceUID, pacs.mr[0].StudyInstanceUID}
    (cine,) = [i for s in conference for i in s["instance"] if i["uid"] == pacs.cine.SOPInstanceUID]
    assert cine["subset"] == ["2", "4"]
    teaching = next(s for s in entries(bundle) if s["code"]["coding"][0]["code"] == "113004")
    assert teaching["subject"]["reference"] == f"Patient/{PID}"
    assert teaching["derivedFrom"] == [{"reference": f"ImagingStudy/{pacs.ct[0].StudyInstanceUID}"}]
    assert "Classic findings" in teaching["text"]["div"]


@pytest.mark.parametrize(
    ("query", "names"),
    [
        (f"code={DCM}|113005", {"conference"}),
        ("code=113004,113002", {"teaching", "referring"}),
        ("code=http://snomed.info/sct|113004", set()),
        ("issued=ge2024-03-20", {"referring"}),
        ("issued=2024-03-15", {"conference"}),
    ],
)
def test_code_and_issued(facade, pacs, query, names):
    bundle = get(facade, f"{R5}/ImagingSelection?patient=Patient/{PID}&{query}")
    assert kos_uids(bundle) == {pacs.kos[n].SOPInstanceUID for n in names}


def test_study_uid_finds_manifests_stored_in_another_study(facade, pacs):
    mr_study = pacs.mr[0].StudyInstanceUID
    bundle = get(facade, f"{R5}/ImagingSelection?study-uid={mr_study}")
    assert kos_uids(bundle) == {pacs.kos["conference"].SOPInstanceUID, pacs.kos["referring"].SOPInstanceUID}
    assert {s["studyUid"] for s in entries(bundle)} == {mr_study}
    bundle = get(
        facade,
        f"{R5}/ImagingSelection?derived-from=ImagingStudy/{mr_study}&_include=ImagingSelection:derived-from&_include=ImagingSelection:endpoint",
    )
    (study,) = entries(bundle, "ImagingStudy")
    assert study["id"] == mr_study and study["modality"][0]["coding"][0]["code"] == "MR"  # R5 CodeableConcept
    (endpoint,) = entries(bundle, "Endpoint")
    assert endpoint["connectionType"][0]["coding"][0]["code"] == "dicom-wado-rs"


def test_identifier_and_read(facade, pacs):
    uid = pacs.kos["conference"].SOPInstanceUID
    bundle = get(facade, f"{R5}/ImagingSelection?identifier=urn:dicom:uid%7Curn:oid:{uid}")
    assert len(entries(bundle)) == 2
    for resource in entries(bundle):
        assert get(facade, f"{R5}/ImagingSelection/{resource['id']}") == resource
    assert get(facade, f"{R5}/ImagingSelection?_id={entries(bundle)[1]['id']}")["total"] == 1
    get(facade, f"{R5}/ImagingSelection/nope", 404)
    rejection_id = entries(bundle)[0]["id"].replace(*_swap(uid, pacs.kos["rejection"].SOPInstanceUID))
    get(facade, f"{R5}/ImagingSelection/{rejection_id}", 404)


def _swap(a: str, b: str) -> tuple[str, str]:
    from app.fhir import selection_ids

    return selection_ids.encode(a, 0).split("-")[0], selection_ids.encode(b, 0).split("-")[0]


def test_rejected_instances_are_hidden_from_imaging_study(facade, pacs):
    study_uid = pacs.ct[0].StudyInstanceUID
    rejected = pacs.rejected.SOPInstanceUID
    for base in ("/fhir/R4", R5):
        study = get(facade, f"{base}/ImagingStudy/{study_uid}")
        uids = {i["uid"] for s in study["series"] for i in s.get("instance", [])}
        assert rejected not in uids and pacs.ct[3].SOPInstanceUID in uids, base
        searched = entries(get(facade, f"{base}/ImagingStudy?_id={study_uid}"), "ImagingStudy")[0]
        assert searched == study
    unhidden = Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url, hide_rejected=False)
    with checking_client(create_app(unhidden)) as raw:
        study = raw.get(f"/fhir/R4/ImagingStudy/{study_uid}").json()
        assert rejected in {i["uid"] for s in study["series"] for i in s.get("instance", [])}


def test_r4_shows_kos_as_ko_series(facade, pacs):
    study = get(facade, f"/fhir/R4/ImagingStudy/{pacs.ct[0].StudyInstanceUID}")
    assert "KO" in {s["modality"]["code"] for s in study["series"]}


def selection(instances: list[Dataset], code: str = "113004", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": code}]},
        "studyUid": instances[0].StudyInstanceUID,
        "seriesUid": instances[0].SeriesInstanceUID,
        "instance": [{"uid": ds.SOPInstanceUID} for ds in instances],
        **extra,
    }


def _without_series(body: dict[str, Any]) -> dict[str, Any]:
    del body["studyUid"], body["seriesUid"]
    return body


def post(client: TestClient, body: Any, url: str = f"{R5}/ImagingSelection", **headers: str) -> httpx.Response:
    return client.post(url, json=body, headers={"content-type": "application/fhir+json", **headers})


def test_create_then_find_it_and_fetch_the_kos(facade, pacs):
    other_pid = patient_ids.encode("KOS0003", None)
    before = get(facade, f"{R5}/ImagingSelection?patient=Patient/{other_pid}&code=113004")  # warms the cache
    assert before["total"] == 0
    body = selection(
        pacs.other,
        extension=[{"url": "urn:x-imaging-facade:key-object-description", "valueString": "Nice anatomy"}],
        performer=[{"actor": {"display": "Dr Who"}}],
        subject={"reference": f"Patient/{other_pid}"},
    )
    r = post(facade, body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"http://testserver/fhir/R5/ImagingSelection/{created['id']}"
    found = get(facade, f"{R5}/ImagingSelection?patient=Patient/{other_pid}&code=113004")
    assert entries(found) == [created]
    assert get(facade, f"{R5}/ImagingSelection/{created['id']}") == created
    # The KOS itself, through WADO-RS, as a viewer would fetch it.
    kos_uid = created["identifier"][0]["value"].removeprefix("urn:oid:")
    rows = httpx.get(f"{pacs.server.dicomweb_url}/instances?SOPInstanceUID={kos_uid}").json()
    study, series = rows[0]["0020000D"]["Value"][0], rows[0]["0020000E"]["Value"][0]
    wado = httpx.get(
        f"{pacs.server.dicomweb_url}/studies/{study}/series/{series}/instances/{kos_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert wado.status_code == 200
    part = wado.content[wado.content.index(b"\r\n\r\n") + 4 :]
    ds = pydicom.dcmread(io.BytesIO(part))
    assert ds.Modality == "KO" and ds.ConceptNameCodeSequence[0].CodeValue == "113004"
    assert ds.PatientID == "KOS0003" and ds.StudyInstanceUID == pacs.other[0].StudyInstanceUID
    refs = {
        r.ReferencedSOPInstanceUID
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert refs == {d.SOPInstanceUID for d in pacs.other}


def test_if_none_exist_makes_a_retry_safe(facade, pacs):
    kos_uid = "2.25.123456789012345678901234567890"
    body = selection(
        pacs.mr[:1], code="113009", identifier=[{"system": "urn:dicom:uid", "value": f"urn:oid:{kos_uid}"}]
    )
    condition = f"identifier=urn:dicom:uid|urn:oid:{kos_uid}"
    first = post(facade, body, **{"If-None-Exist": condition})
    second = post(facade, body, **{"If-None-Exist": condition})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    assert get(facade, f"{R5}/ImagingSelection?identifier=urn:oid:{kos_uid}")["total"] == 1


def test_transaction_makes_one_kos_across_two_studies(facade, pacs):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": selection(pacs.ct[:1], code="113008"),
                "request": {"method": "POST", "url": "ImagingSelection"},
            },
            {
                "resource": selection(pacs.mr[2:3], code="113008"),
                "request": {"method": "POST", "url": "ImagingSelection"},
            },
        ],
    }
    r = post(facade, bundle, url=R5)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "transaction-response" and len(answer["entry"]) == 2
    assert {e["response"]["status"] for e in answer["entry"]} == {"201 Created"}
    assert len({e["resource"]["identifier"][0]["value"] for e in answer["entry"]}) == 1
    found = get(facade, f"{R5}/ImagingSelection?patient=Patient/{PID}&code=113008")
    assert found["total"] == 2


@pytest.mark.parametrize(
    ("mutate", "status", "text"),
    [
        (lambda b, p: b["instance"].append({"uid": "1.2.3.4.5.6.7"}), 422, "1.2.3.4.5.6.7"),
        (lambda b, p: _without_series(b)["instance"].append({"uid": p.other[0].SOPInstanceUID}), 422, "more than one"),
        (lambda b, p: b.update(code={"coding": [{"system": DCM, "code": "999999"}]}), 400, "CID 7010"),
        (lambda b, p: b.update(code={"coding": [{"system": DCM, "code": "113001"}]}), 422, "rejection"),
        (
            lambda b, p: b.update(subject={"reference": f"Patient/{patient_ids.encode('KOS0003', None)}"}),
            422,
            "not Patient",
        ),
        (lambda b, p: b["instance"][0].update(subset=["9"]), 422, "frames"),
        (lambda b, p: b.update(seriesUid=p.mr[0].SeriesInstanceUID), 422, "seriesUid"),
        (lambda b, p: b["instance"][0].update(uid="x"), 400, "DICOM UID"),
    ],
)
def test_bad_manifests_are_refused_naming_the_problem(facade, pacs, mutate, status, text):
    body = selection(pacs.ct[:2])
    mutate(body, pacs)
    r = post(facade, body)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and text in r.text


def test_read_only_and_media_type(pacs):
    app = create_app(Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url, manifests_writable=False))
    with checking_client(app) as client:
        r = post(client, selection(pacs.ct[:1]))
        assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
        sel = next(
            x for x in client.get(f"{R5}/metadata").json()["rest"][0]["resource"] if x["type"] == "ImagingSelection"
        )
        assert "create" not in {i["code"] for i in sel["interaction"]}
    with checking_client(create_app(Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url))) as client:
        r = client.post(f"{R5}/ImagingSelection", content=b"<xml/>", headers={"content-type": "application/xml"})
        assert r.status_code == 415


def test_summary_true_counts_leave_rejected_instances_out(facade, pacs):
    study_uid = pacs.ct[0].StudyInstanceUID
    full = get(facade, f"/fhir/R4/ImagingStudy/{study_uid}")
    summary = entries(get(facade, f"/fhir/R4/ImagingStudy?_id={study_uid}&_summary=true"), "ImagingStudy")[0]
    assert summary["numberOfInstances"] == full["numberOfInstances"]  # both without the rejected instance
    assert summary["numberOfSeries"] == full["numberOfSeries"]
    by_uid = {s["uid"]: s["numberOfInstances"] for s in summary["series"]}
    assert by_uid == {s["uid"]: s["numberOfInstances"] for s in full["series"]}
    assert by_uid[pacs.rejected.SeriesInstanceUID] == 1  # two images, one rejected
    unhidden = Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url, hide_rejected=False)
    with checking_client(create_app(unhidden)) as raw:
        body = raw.get(f"/fhir/R4/ImagingStudy?_id={study_uid}&_summary=true").json()
        plain = next(e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
        assert plain["numberOfInstances"] == summary["numberOfInstances"] + 1


def test_the_create_answer_is_what_a_read_gives_body_site_included(facade, pacs):
    # A new patient's knee image, so no other test's counts change.
    image = pydicom.dcmread(io.BytesIO(encode_dataset(pacs.other[0])))
    image.PatientID, image.PatientName, image.BodyPartExamined = "KOS0099", "Knee^Kim", "KNEE"
    image.StudyInstanceUID, image.SeriesInstanceUID, image.SOPInstanceUID = (
        "2.25.9900001",
        "2.25.9900002",
        "2.25.9900003",
    )
    image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
    store(pacs.server.dicomweb_url, [image])
    r = post(facade, selection([image], code="113008"))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["bodySite"]["concept"]["coding"][0]["code"] == "72696002"  # SNOMED knee
    assert get(facade, f"{R5}/ImagingSelection/{created['id']}") == created
