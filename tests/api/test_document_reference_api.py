"""R4 IHE RAD MADO DocumentReferences and document Bundles through the app, on a mocked PACS that answers QIDO
by the keys asked for: search parameters, paging, counts, includes, reads, patient confinement, the
CapabilityStatement. Every body is validated (checking_client: fhir.resources R4B and google-fhir-r4)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydicom import Dataset

from app.dicom.kos import KOS_SOP_CLASS_UID
from app.fhir import patient_ids
from app.fhir.search_params import DOCUMENT_REFERENCE_PARAMS
from app.mapping import document_reference as mado
from tests.api.conftest import PACS
from tests.support.kos import FOR_REFERRING_PROVIDER, FOR_TEACHING, REJECTED_FOR_QUALITY, kos_json, make_kos, make_study
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

R4 = "/fhir/R4"
KOS_FORMAT = f"{mado.DCMUID_SYSTEM}|{KOS_SOP_CLASS_UID}"
FHIR_FORMAT = f"{mado.IHE_FORMAT_SYSTEM}|urn:ihe:rad:MADO:fhir-manifest:2026"
A = patient_ids.encode("MRN-A", None)
B = patient_ids.encode("MRN-B", None)
KEYS = TokenIssuer()


def _row(ds: Dataset) -> dict[str, Any]:
    return {k: v for k, v in kos_json(ds).items() if k != "7FE00010"}  # after a Part 10 round trip


class Pacs:
    """Two patients: A has a CT and an MR study, a teaching KOS over both (stored in the CT study), a rejection
    note; B has one study and a KOS."""

    def __init__(self) -> None:
        self.ct = make_study(
            13, "ct", patient_id="MRN-A", patient_name="Doe^Jane", series_sizes=(2,), accession="ACC-CT"
        )
        self.mr = make_study(
            13, "mr", patient_id="MRN-A", patient_name="Doe^Jane", modality="MR", study_date="20240210"
        )
        self.b = make_study(13, "b", patient_id="MRN-B", patient_name="Roe^Rick", accession="ACC-B")
        for ds in self.ct:
            ds.BodyPartExamined = "CHEST"
        for ds in self.mr:
            ds.BodyPartExamined = "KNEE"
        self.teaching = make_kos(
            [self.ct[0], self.mr[0]],
            title=FOR_TEACHING,
            description="Key images",
            observer_name="Roe^Rick",
            seed=1,
            timezone_offset="+0100",
        )
        self.rejection = make_kos([self.ct[1]], title=REJECTED_FOR_QUALITY, seed=2)
        self.other = make_kos([self.b[0]], title=FOR_REFERRING_PROVIDER, seed=3, content_date="20240401")
        self.kos = [self.teaching, self.rejection, self.other]
        self.images = [*self.ct, *self.mr, *self.b]
        self.studies = {str(s[0].StudyInstanceUID): _row(s[0]) for s in (self.ct, self.mr, self.b)}
        self.rows = {id(ds): _row(ds) for ds in [*self.kos, *self.images]}

    def install(self, router: Any) -> None:
        router.get(url__regex=rf"^{PACS}/studies/[0-9.]+/series/[0-9.]+/metadata").mock(side_effect=self.metadata)
        router.get(url__regex=rf"^{PACS}/studies(\?|$)").mock(side_effect=self.study_rows)
        router.get(url__regex=rf"^{PACS}/instances(\?|$)").mock(side_effect=self.instance_rows)
        router.get(url__regex=rf"^{PACS}/series(\?|$)").mock(return_value=httpx.Response(200, json=[]))

    def metadata(self, request: httpx.Request) -> httpx.Response:
        series = request.url.path.split("/")[-2]
        return httpx.Response(200, json=[self.rows[id(k)] for k in self.kos if str(k.SeriesInstanceUID) == series])

    @staticmethod
    def _keys(request: httpx.Request) -> dict[str, list[str]]:
        q = parse_qs(urlsplit(str(request.url)).query)
        return {k: v[0].split(",") for k, v in q.items()}

    def study_rows(self, request: httpx.Request) -> httpx.Response:
        keys = self._keys(request)
        rows = list(self.studies.values())
        for key, tag in (("StudyInstanceUID", "0020000D"), ("PatientID", "00100020"), ("AccessionNumber", "00080050")):
            if key in keys:
                rows = [r for r in rows if r.get(tag, {}).get("Value", [None])[0] in keys[key]]
        return httpx.Response(200, json=rows)

    def instance_rows(self, request: httpx.Request) -> httpx.Response:
        keys = self._keys(request)
        pool = self.kos if keys.get("Modality") == ["KO"] else self.images
        rows = [self.rows[id(ds)] for ds in pool]
        for key, tag in (("SOPInstanceUID", "00080018"), ("PatientID", "00100020")):
            if key in keys:
                rows = [r for r in rows if r.get(tag, {}).get("Value", [None])[0] in keys[key]]
        return httpx.Response(200, json=rows)


@pytest.fixture
def data(pacs) -> Pacs:
    d = Pacs()
    d.install(pacs)
    return d


def docs(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def kos_uids(r: httpx.Response) -> set[str]:
    return {d["masterIdentifier"]["value"].removeprefix("urn:oid:") for d in docs(r)}


def test_a_patients_manifests_in_both_forms(data, client):
    r = client.get(f"{R4}/DocumentReference", params={"patient": f"Patient/{A}"})
    found = docs(r)
    uid = str(data.teaching.SOPInstanceUID)
    assert kos_uids(r) == {uid}  # the rejection note never shows
    assert {d["id"] for d in found} == {uid, mado.fhir_document_id(uid)}
    assert {d["content"][0]["format"]["code"] for d in found} == {KOS_SOP_CLASS_UID, FHIR_FORMAT.split("|")[1]}
    kos_doc = next(d for d in found if d["id"] == uid)
    wado = client.get(f"{R4}/Endpoint/wado-rs").json()["address"]  # what the studies' Endpoint says
    assert kos_doc["content"][0]["attachment"]["url"] == (
        f"{wado}/studies/{data.teaching.StudyInstanceUID}/series/{data.teaching.SeriesInstanceUID}/instances/{uid}"
    )
    fhir_doc = next(d for d in found if d["id"] != uid)
    assert fhir_doc["content"][0]["attachment"]["url"] == f"http://testserver{R4}/Bundle/{fhir_doc['id']}"
    accessions = {i["identifier"]["value"] for i in kos_doc["context"]["related"]}
    assert "ACC-CT" in accessions and f"urn:oid:{data.ct[0].StudyInstanceUID}" in accessions
    # the same reads
    for d in found:
        assert client.get(f"{R4}/DocumentReference/{d['id']}").json() == d


def test_the_document_bundle_holds_exactly_the_selection(data, client):
    uid = str(data.teaching.SOPInstanceUID)
    r = client.get(f"{R4}/Bundle/{mado.fhir_document_id(uid)}")
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "document" and b["entry"][0]["resource"]["resourceType"] == "Composition"
    selected = {
        i["uid"]
        for e in b["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
        for s in e["resource"]["series"]
        for i in s["instance"]
    }
    assert selected == {str(data.ct[0].SOPInstanceUID), str(data.mr[0].SOPInstanceUID)}
    assert client.get(f"{R4}/Bundle/{uid}").status_code == 404  # the DICOM form's id names no Bundle
    assert client.get(f"{R4}/Bundle/{mado.fhir_document_id('9.9.9')}").status_code == 404
    assert client.get(f"{R4}/DocumentReference/9.9.9").status_code == 404
    rejection = str(data.rejection.SOPInstanceUID)
    assert client.get(f"{R4}/DocumentReference/{rejection}").status_code == 404
    assert client.get(f"{R4}/Bundle/{mado.fhir_document_id(rejection)}").status_code == 404


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"study-instance-uid": "{ct}"}, {"teaching"}),
        ({"study-instance-uid": "urn:dicom:uid|urn:oid:{mr}"}, {"teaching"}),
        ({"study-instance-uid": "{b}"}, {"other"}),
        ({"accession-number": "ACC-CT"}, {"teaching"}),
        ({"accession-number": "acc-ct"}, set()),
        ({"accession-number": "ACC-B"}, {"other"}),
        ({"related:identifier": "ACC-B"}, {"other"}),
        ({"related:identifier": "urn:dicom:uid|urn:oid:{ct}"}, {"teaching"}),
        ({"related": "ImagingStudy/{mr}"}, {"teaching"}),
        ({"modality": "MR"}, {"teaching"}),
        ({"modality": "http://dicom.nema.org/resources/ontology/DCM|CT"}, {"teaching", "other"}),
        ({"modality": "US"}, set()),
        ({"bodysite": "http://snomed.info/sct|72696002"}, {"teaching"}),
        ({"bodysite": "KNEE"}, {"teaching"}),
        ({"format": KOS_FORMAT}, {"teaching", "other"}),
        ({"format": FHIR_FORMAT}, {"teaching", "other"}),
        ({"type": "http://loinc.org|18748-4"}, {"teaching", "other"}),
        ({"category": "http://loinc.org|18748-4", "status": "current"}, {"teaching", "other"}),
        ({"status": "superseded"}, set()),
        ({"date": "ge2024-04-01"}, {"other"}),
        ({"date": "lt2024-03-02"}, {"teaching"}),
        ({"identifier": "urn:dicom:uid|urn:oid:{teaching}"}, {"teaching"}),
        ({"identifier": "urn:ietf:rfc:3986|urn:oid:{other}"}, {"other"}),
        ({"patient.identifier": "MRN-B"}, {"other"}),
        ({"subject": f"Patient/{B}"}, {"other"}),
        ({"patient": f"Patient/{A}", "study-instance-uid": "{b}"}, set()),
    ],
)
def test_search_parameters(data, client, params, expected):
    names = {
        "ct": str(data.ct[0].StudyInstanceUID),
        "mr": str(data.mr[0].StudyInstanceUID),
        "b": str(data.b[0].StudyInstanceUID),
        "teaching": str(data.teaching.SOPInstanceUID),
        "other": str(data.other.SOPInstanceUID),
    }
    params = {k: v.format(**names) for k, v in params.items()}
    r = client.get(f"{R4}/DocumentReference", params=params)
    by_name = {str(data.teaching.SOPInstanceUID): "teaching", str(data.other.SOPInstanceUID): "other"}
    assert {by_name[u] for u in kos_uids(r)} == expected, params
    if "format" in params:
        assert len(docs(r)) == len(expected)  # one form each


def test_id_picks_one_form(data, client):
    fhir_id = mado.fhir_document_id(str(data.teaching.SOPInstanceUID))
    assert [d["id"] for d in docs(client.get(f"{R4}/DocumentReference", params={"_id": fhir_id}))] == [fhir_id]


def test_count_paging_and_include(data, client):
    r = client.get(f"{R4}/DocumentReference", params={"_summary": "count"})
    assert r.json()["total"] == 4 and "entry" not in r.json()
    assert client.get(f"{R4}/DocumentReference", params={"_count": "0"}).json()["total"] == 4
    seen: list[str] = []
    url: str | None = f"{R4}/DocumentReference?_count=3"
    while url:
        page = client.get(url).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == 4 == len(set(seen))
    r = client.get(f"{R4}/DocumentReference", params={"_include": "DocumentReference:subject"})
    included = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "include"]
    assert sorted(p["id"] for p in included) == sorted([A, B])
    assert {d["subject"]["reference"] for d in docs(r)} == {f"Patient/{A}", f"Patient/{B}"}


def test_bad_values(data, client):
    r = client.get(f"{R4}/DocumentReference", params={"status": "nonsense"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = client.get(f"{R4}/DocumentReference", params={"date": "yesterday"})
    assert r.status_code == 400


@pytest.fixture
def smart(make_client, tmp_path):
    return make_client(
        auth_mode="smart", jwks_file=str(KEYS.write_jwks(tmp_path)), token_issuer=ISSUER, token_audience=AUDIENCE
    )


def test_patient_context_confines_searches_and_reads(data, smart):
    a = KEYS.headers("patient/*.rs", A)
    r = smart.get(f"{R4}/DocumentReference", headers=a)
    assert kos_uids(r) == {str(data.teaching.SOPInstanceUID)}
    r = smart.get(f"{R4}/DocumentReference", params={"patient": f"Patient/{B}"}, headers=a)
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    other = str(data.other.SOPInstanceUID)
    assert smart.get(f"{R4}/DocumentReference/{other}", headers=a).status_code == 404
    assert smart.get(f"{R4}/Bundle/{mado.fhir_document_id(other)}", headers=a).status_code == 404
    mine = mado.fhir_document_id(str(data.teaching.SOPInstanceUID))
    assert smart.get(f"{R4}/Bundle/{mine}", headers=a).status_code == 200
    assert smart.get(f"{R4}/Bundle/{mine}", headers=KEYS.headers("patient/ImagingStudy.rs", A)).status_code == 403
    r = smart.get(
        f"{R4}/DocumentReference",
        params={"_include": "DocumentReference:subject"},
        headers=KEYS.headers("patient/DocumentReference.rs", A),
    )
    assert [e["search"]["mode"] for e in r.json()["entry"]] == ["match", "match"]  # no Patient scope: no include


def test_capability_statement_lists_exactly_this(client):
    rest = client.get(f"{R4}/metadata").json()["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    doc = by_type["DocumentReference"]
    assert [p["name"] for p in doc["searchParam"]] == [p.name for p in DOCUMENT_REFERENCE_PARAMS]
    assert {p.name for p in DOCUMENT_REFERENCE_PARAMS} == {
        "patient", "subject", "_id", "identifier", "status", "type", "category", "format", "date",
        "study-instance-uid", "accession-number", "modality", "bodysite", "related",
    }  # fmt: skip
    assert doc["searchInclude"] == ["DocumentReference:subject"]
    assert doc["supportedProfile"] == [mado.KOS_PROFILE, mado.FHIR_PROFILE]
    assert [i["code"] for i in doc["interaction"]] == ["read", "search-type"]
    assert [i["code"] for i in by_type["Bundle"]["interaction"]] == ["read"]
    r5 = {r["type"] for r in client.get("/fhir/R5/metadata").json()["rest"][0]["resource"]}
    assert "DocumentReference" not in r5 and "Bundle" not in r5


def test_an_ehr_patient_id_finds_the_manifests_and_is_the_subject(data, pacs, make_client):
    from tests.support.ehr import ehr_patient

    ehr = "http://ehr.test/fhir"
    pacs.get(f"{ehr}/Patient/123").mock(
        return_value=httpx.Response(
            200, json=ehr_patient("123", "MRN-A", system="urn:x-imaging-facade:patient-id", family="Doe")
        )
    )
    client = make_client(ehr_fhir_url=ehr)
    r = client.get(f"{R4}/DocumentReference", params={"patient": "123", "_include": "DocumentReference:subject"})
    assert kos_uids(r) == {str(data.teaching.SOPInstanceUID)}
    assert {d["subject"]["reference"] for d in docs(r)} == {"Patient/123"}
    assert [e["resource"]["id"] for e in r.json()["entry"] if e["search"]["mode"] == "include"] == ["123"]
