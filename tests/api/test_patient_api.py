"""Patient read: derived from the PACS's study-level patient attributes, id = encoded PatientID + issuer."""

from __future__ import annotations

from urllib.parse import unquote

import httpx

from app.fhir import patient_ids
from tests.api.conftest import PACS, study_row


def _serve(pacs, rows):
    return pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=rows))


def test_read_patient_from_a_study_row(pacs, client):
    row = study_row("1.2.3.1", patient_id="SHARED01", issuer="HOSP-A", name="Smith^John^^Dr")
    row["00100030"] = {"vr": "DA", "Value": ["19600505"]}
    row["00100040"] = {"vr": "CS", "Value": ["M"]}
    route = _serve(pacs, [row])
    pid = patient_ids.encode("SHARED01", "HOSP-A")
    patient = client.get(f"/fhir/R4/Patient/{pid}").json()
    assert patient.pop("text")["div"] == (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>Dr John Smith</b>, male, born 1960-05-05</p>'
        "<p>Patient ID: SHARED01 (HOSP-A)</p></div>"
    )
    assert patient == {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:x-imaging-facade:issuer:HOSP-A",
                "value": "SHARED01",
                "assigner": {"display": "HOSP-A"},
            }
        ],
        "name": [{"use": "official", "text": "Dr John Smith", "family": "Smith", "given": ["John"], "prefix": ["Dr"]}],
        "gender": "male",
        "birthDate": "1960-05-05",
    }
    query = unquote(str(route.calls[0].request.url))
    assert "PatientID=SHARED01" in query and "IssuerOfPatientID=HOSP-A" in query


def test_other_issuer_or_case_is_not_the_patient(pacs, client):
    _serve(
        pacs,
        [
            study_row("1.2.3.1", patient_id="shared01", issuer="HOSP-A"),
            study_row("1.2.3.2", patient_id="SHARED01", issuer="HOSP-B"),
        ],
    )
    r = client.get(f"/fhir/R4/Patient/{patient_ids.encode('SHARED01', 'HOSP-A')}")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_unknown_or_foreign_ids_are_404_without_asking_for_foreign_ones(pacs, client):
    _serve(pacs, [])
    assert client.get(f"/fhir/R4/Patient/{patient_ids.encode('NOPE', None)}").status_code == 404
    calls = len(pacs.calls)
    assert client.get("/fhir/R4/Patient/123").status_code == 404
    assert len(pacs.calls) == calls


def test_study_subject_resolves_to_the_patient(pacs, client):
    _serve(pacs, [study_row("1.2.3.1", patient_id="MRN1")])
    pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[]))
    study = client.get("/fhir/R4/ImagingStudy/1.2.3.1").json()
    patient = client.get(f"/fhir/R4/{study['subject']['reference']}").json()
    assert patient["resourceType"] == "Patient"
    assert patient["identifier"][0]["value"] == study["subject"]["identifier"]["value"] == "MRN1"


def test_search_sends_only_parsed_keys_and_folds_studies_into_patients(pacs, client):
    a1 = study_row("1.2.3.1", patient_id="MRN1", name="Müller^Jürgen", date="20200101")
    a2 = study_row("1.2.3.2", patient_id="MRN1", name="Müller^Jürgen", date="20210101")
    b = study_row("1.2.3.3", patient_id="MRN2", name="Muller^Anna")
    for r in (a1, a2, b):
        r["00100040"] = {"vr": "CS", "Value": ["F"]}
    route = _serve(pacs, [a1, a2, b])
    body = client.get("/fhir/R4/Patient?name=mül&gender=female&address=ignored").json()
    assert body["total"] == 2 and len(body["entry"]) == 2
    query = unquote(str(route.calls[0].request.url))
    assert "PatientSex=F" in query and "PatientName" not in query and "address" not in query
    assert body["link"][0]["url"] == "http://testserver/fhir/R4/Patient?name=m%C3%BCl&gender=female&_count=20"


def test_search_past_the_prequery_limit_is_refused_as_too_costly(pacs, client):
    limit = client.app.state.facade.settings.prequery_limit
    _serve(pacs, [study_row(f"1.2.3.{i}", patient_id=f"P{i}") for i in range(limit + 1)])
    r = client.get("/fhir/R4/Patient?name=x")
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"
    assert "folding them into patients is too costly" in r.text


def test_post_search_equals_get(pacs, client):
    _serve(pacs, [study_row("1.2.3.1", patient_id="MRN1")])
    got = client.get("/fhir/R4/Patient?identifier=MRN1").json()
    posted = client.post("/fhir/R4/Patient/_search", data={"identifier": "MRN1"}).json()
    assert got["entry"] == posted["entry"] and got["total"] == posted["total"] == 1
