"""Patient search against a real Orthanc: distinct (PatientID, issuer) pairs of the generated studies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.planning.plan import fold
from app.settings import Settings
from tests.support.dataset import Manifest, StudyTruth
from tests.support.fhir_check import check, checking_client

pytestmark = pytest.mark.integration
GENDER = {"M": "male", "F": "female", "O": "other"}


@pytest.fixture(scope="module")
def facade(orthanc) -> Iterator[TestClient]:
    app = create_app(Settings(auth_mode="open", dicomweb_url=orthanc.dicomweb_url))
    with checking_client(app) as client:
        yield client


def search(client: TestClient, query: str) -> dict[str, Any]:
    r = client.get(f"/fhir/R4/Patient?{query}")
    assert r.status_code == 200, r.text
    body = r.json()
    check(body)
    return body


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def people(manifest: Manifest) -> dict[str, StudyTruth]:
    """Patient id → one study of theirs (the generator gives each patient one set of demographics)."""
    return {patient_ids.encode(s.patient_id, s.issuer): s for s in manifest.studies}


def want(manifest: Manifest, pred) -> set[str]:
    return {pid for pid, s in people(manifest).items() if pred(s)}


def parts(s: StudyTruth) -> list[str]:
    return [p for group in s.patient_name.split("=") for comp in group.split("^") for p in [comp] if p]


def test_all_patients_once_with_an_exact_total(facade, orthanc):
    body = search(facade, "_count=100")
    assert ids(body) == set(people(orthanc.manifest))
    assert body["total"] == len(people(orthanc.manifest)) == len(orthanc.manifest.patients)


def test_shared_patient_id_with_two_issuers_stays_two_patients(facade, orthanc):
    body = search(facade, "identifier=SHARED01")
    assert ids(body) == {patient_ids.encode("SHARED01", "HOSP-A"), patient_ids.encode("SHARED01", "HOSP-B")}
    system = "urn:x-imaging-facade:issuer:HOSP-B"
    assert ids(search(facade, f"identifier={system}|SHARED01")) == {patient_ids.encode("SHARED01", "HOSP-B")}


def test_identifier_and_id_are_exact(facade, orthanc):
    assert ids(search(facade, "identifier=MRN0100")) == {patient_ids.encode("MRN0100", None)}
    assert ids(search(facade, "identifier=mrn0100")) == {patient_ids.encode("mrn0100", None)}
    assert not ids(search(facade, "identifier=MRN010*"))
    pid = patient_ids.encode("ES0003", None)
    assert ids(search(facade, f"_id={pid}")) == {pid}


@pytest.mark.parametrize(
    ("query", "pred"),
    [
        ("family=mull", lambda s: fold(s.patient_name).startswith("mull")),
        ("family=MÜLLER", lambda s: s.patient_id == "MRN0001"),
        ("name=jurg", lambda s: s.patient_id == "MRN0001"),
        ("given=maria", lambda s: s.patient_id == "ES0003"),
        ("name=gomez", lambda s: s.patient_id == "ES0003"),
        ("name=山田", lambda s: s.patient_id == "JP0002"),
        ("name=たろう", lambda s: s.patient_id == "JP0002"),
        ("name:exact=Müller", lambda s: s.patient_id == "MRN0001"),
        ("name:exact=müller", lambda s: False),
        ("name:contains=ULLE", lambda s: s.patient_id == "MRN0001"),
        ("family=smith,brown", lambda s: s.patient_name.split("^")[0] in ("Smith", "Brown")),
    ],
)
def test_names_ignore_case_and_accents(facade, orthanc, query, pred):
    assert ids(search(facade, query)) == want(orthanc.manifest, pred), query


@pytest.mark.parametrize(
    ("query", "pred"),
    [
        ("birthdate=1970-01-01", lambda s: s.birth_date == "19700101"),
        ("birthdate=1985", lambda s: (s.birth_date or "").startswith("1985")),
        ("birthdate=ge1970&birthdate=lt1980", lambda s: "19700101" <= (s.birth_date or "0") < "19800101"),
        ("birthdate=lt1960-01-01", lambda s: s.birth_date is not None and s.birth_date < "19600101"),
        ("birthdate:missing=true", lambda s: s.birth_date is None),
        ("gender=female", lambda s: s.sex == "F"),
        ("gender=male,other", lambda s: s.sex in ("M", "O")),
        ("gender:not=male", lambda s: s.sex != "M"),
        ("gender:missing=true", lambda s: s.sex is None),
        ("gender=unknown", lambda s: False),
        ("gender=female&birthdate=ge1980", lambda s: s.sex == "F" and (s.birth_date or "0") >= "19800101"),
    ],
)
def test_birthdate_and_gender(facade, orthanc, query, pred):
    assert ids(search(facade, query)) == want(orthanc.manifest, pred), query


def test_paging_visits_each_patient_once(facade, orthanc):
    seen: list[str] = []
    url: str | None = "/fhir/R4/Patient?_count=2"
    while url:
        body = facade.get(url).json()
        check(body)
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(people(orthanc.manifest))


def test_summary_count_and_elements(facade, orthanc):
    body = search(facade, "gender=female&_summary=count")
    assert "entry" not in body and body["total"] == len(want(orthanc.manifest, lambda s: s.sex == "F"))
    body = search(facade, "identifier=MRN0100&_elements=birthDate")
    (resource,) = [e["resource"] for e in body["entry"]]
    assert set(resource) == {"resourceType", "id", "meta", "birthDate"}
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"


def test_search_and_read_agree(facade, orthanc):
    for entry in search(facade, "_count=100")["entry"]:
        resource = entry["resource"]
        assert facade.get(f"/fhir/R4/Patient/{resource['id']}").json() == resource
        assert entry["fullUrl"] == f"http://testserver/fhir/R4/Patient/{resource['id']}"
        truth = people(orthanc.manifest)[resource["id"]]
        assert resource.get("gender") == GENDER.get(truth.sex or "")


def test_strict_rejects_unknown_parameters(facade):
    r = facade.get("/fhir/R4/Patient?address=x", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert facade.get("/fhir/R4/Patient?gender=nope").status_code == 400
    assert facade.get("/fhir/R4/Patient?birthdate=1970-13").status_code == 400
    assert facade.get("/fhir/R4/Patient?name:text=x").status_code == 400
