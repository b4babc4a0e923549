"""EHR linkage faults and headers, with the EHR and the PACS mocked (the happy path runs against real servers
in tests/integration/test_ehr_linkage.py)."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import httpx
import pytest

from tests.api.conftest import PACS, study_row
from tests.support.ehr import ehr_patient

EHR = "http://ehr.test/fhir"


@pytest.fixture
def ehr_client(make_client):
    return make_client(ehr_fhir_url=EHR, ehr_token="t0k")


def _pacs(pacs, rows):
    pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=rows))
    pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[]))


def test_bearer_token_and_mrn_key_reach_the_right_places(pacs, ehr_client):
    patient = ehr_patient("123", "MRN1", system="urn:x-imaging-facade:patient-id", family="Doe")
    ehr = pacs.get(f"{EHR}/Patient/123").mock(return_value=httpx.Response(200, json=patient))
    _pacs(pacs, [study_row("1.2.3.1", patient_id="MRN1")])
    body = ehr_client.get("/fhir/R4/ImagingStudy?patient=123").json()
    assert [e["resource"]["subject"]["reference"] for e in body["entry"]] == ["Patient/123"]
    assert ehr.calls[0].request.headers["authorization"] == "Bearer t0k"
    study_query = unquote(str(next(c.request.url for c in pacs.calls if "/studies" in str(c.request.url))))
    assert "PatientID=MRN1" in study_query and "t0k" not in study_query
    assert body["link"][0]["url"].endswith("ImagingStudy?patient=123&_count=20")


def test_basic_credentials_in_the_ehr_url(pacs, make_client):
    client = make_client(ehr_fhir_url="http://user:p%40ss@ehr.test/fhir")
    ehr = pacs.get(f"{EHR}/Patient/1").mock(return_value=httpx.Response(404))
    _pacs(pacs, [])
    assert client.get("/fhir/R4/ImagingStudy?patient=Patient/1").json()["resourceType"] == "Bundle"
    assert ehr.calls[0].request.headers["authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()


@pytest.mark.parametrize(
    ("effect", "status"),
    [
        (httpx.ConnectError("refused"), 503),
        (httpx.ReadTimeout("slow"), 504),
        (httpx.Response(500, text="boom"), 502),
        (httpx.Response(200, text="<html>"), 502),
    ],
)
def test_ehr_faults_are_clean_outcomes_and_not_cached(pacs, ehr_client, effect, status):
    route = pacs.get(f"{EHR}/Patient/123")
    if isinstance(effect, httpx.Response):
        route.mock(return_value=effect)
    else:
        route.mock(side_effect=effect)
    _pacs(pacs, [])
    for _ in range(2):
        r = ehr_client.get("/fhir/R4/ImagingStudy?patient=Patient/123")
        assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"
        assert "ehr.test" not in r.text and "boom" not in r.text
    assert route.call_count == 2  # an error is never cached


def test_without_an_ehr_foreign_ids_match_nothing_and_ask_no_one(pacs, client):
    _pacs(pacs, [])
    assert "entry" not in client.get("/fhir/R4/ImagingStudy?patient=Patient/123").json()
    assert not pacs.calls
