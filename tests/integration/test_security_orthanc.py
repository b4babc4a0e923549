"""Security against a real Orthanc: SMART patient-context tokens (keys made here), and an injection battery
that must never widen a match, reach another patient's data, or cause a 5xx."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.fhir.search import split_or
from app.main import create_app
from app.settings import Settings
from tests.support.dataset import Manifest
from tests.support.fhir_check import checking_client
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

pytestmark = pytest.mark.integration
KEYS = TokenIssuer()
MUELLER = patient_ids.encode("MRN0001", None)
SMITH_A = patient_ids.encode("SHARED01", "HOSP-A")


@pytest.fixture(scope="module")
def smart(orthanc, tmp_path_factory) -> Iterator[TestClient]:
    jwks = KEYS.write_jwks(tmp_path_factory.mktemp("keys"))
    settings = Settings(
        dicomweb_url=orthanc.dicomweb_url,
        auth_mode="smart",
        jwks_file=str(jwks),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
    )
    with checking_client(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def exact(manifest: Manifest, param: str, value: str) -> set[str]:
    """Studies whose attribute for ``param`` equals one of the literal alternatives of ``value``."""
    literals = {re.sub(r"\\(.)", r"\1", v) for v in split_or(value)}
    attribute = {"patient.identifier": "patient_id", "identifier": "accession", "_id": "study_uid"}.get(param)
    if attribute is None:  # series: a series UID
        return {s.study_uid for s in manifest.studies if literals & {se.uid for se in s.series}}
    return {s.study_uid for s in manifest.studies if getattr(s, attribute) in literals}


def studies(r: Any) -> set[str]:
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"}


def test_patient_token_sees_exactly_its_studies(smart, orthanc):
    manifest: Manifest = orthanc.manifest
    mine = {s.study_uid for s in manifest.studies_of("MRN0001")}
    h = KEYS.headers("patient/ImagingStudy.rs patient/Patient.rs", MUELLER)
    assert studies(smart.get("/fhir/R4/ImagingStudy?_count=100", headers=h)) == mine
    assert studies(smart.get(f"/fhir/R4/ImagingStudy?patient=Patient/{MUELLER}", headers=h)) == mine
    assert studies(smart.get("/fhir/R5/ImagingStudy?modality=CT,MR,CR,US", headers=h)) <= mine
    assert smart.get(f"/fhir/R4/ImagingStudy?patient=Patient/{SMITH_A}", headers=h).status_code == 403
    other = manifest.studies_of("SHARED01", "HOSP-A")[0].study_uid
    assert smart.get(f"/fhir/R4/ImagingStudy/{other}", headers=h).status_code == 404
    assert smart.get(f"/fhir/R4/ImagingStudy/{sorted(mine)[0]}", headers=h).status_code == 200
    body = smart.get("/fhir/R4/Patient?_count=100", headers=h).json()
    assert [e["resource"]["id"] for e in body["entry"]] == [MUELLER]
    assert smart.get(f"/fhir/R4/Patient/{SMITH_A}", headers=h).status_code == 404


def test_user_token_sees_everyone_and_no_token_nothing(smart, orthanc):
    every = {s.study_uid for s in orthanc.manifest.studies}
    assert studies(smart.get("/fhir/R4/ImagingStudy?_count=100", headers=KEYS.headers("user/*.read"))) == every
    r = smart.get("/fhir/R4/ImagingStudy?_count=100")
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"


BATTERY = [
    "*",
    "?",
    "MRN*",
    "MRN000?",
    "MRN0001,MRN0100",
    "MRN0001\\",
    "MRN0001\\,MRN0100",
    "MRN0001&PatientID=*",
    "MRN0001%26PatientID%3D*",
    "MRN0001=x",
    "%",
    "%25",
    "%2A",
    "^",
    "Müller*",
    "山田",
    "\u0000",
    "MRN0001\r\nX-Injected: 1",
    "A" * 5000,
    "' OR '1'='1",
    "../../studies",
]


@pytest.mark.parametrize("value", BATTERY)
@pytest.mark.parametrize(
    "param",
    [
        "patient.identifier",
        "identifier",
        "_id",
        "patient",
        "referrer.name",
        "modality",
        "series",
        "bodysite",
        "started",
    ],
)
def test_injection_never_widens_or_leaks(smart, orthanc, param, value):
    manifest: Manifest = orthanc.manifest
    mine = {s.study_uid for s in manifest.studies_of("MRN0001")}
    h = KEYS.headers("patient/ImagingStudy.rs", MUELLER)
    for encoded in (quote(value, safe=""), quote(value, safe="*?,^\\%&=")):
        r = smart.get(f"/fhir/R4/ImagingStudy?{param}={encoded}&_count=100", headers=h)
        sent = parse_qsl(f"{param}={encoded}", keep_blank_values=True)[0][1]  # what the server decodes as the value
        assert r.status_code < 500, (param, value, r.text)
        if r.status_code == 200:
            assert studies(r) <= mine, (param, value)  # never another patient's study
            if param in ("patient.identifier", "identifier", "_id", "series"):
                # exact token parameters: only literal values may match (a comma ORs literals)
                assert studies(r) <= exact(manifest, param, sent) & mine, (param, value)
        else:
            assert r.json()["resourceType"] == "OperationOutcome"
    # and as a user who may see everyone: a metacharacter still must not widen an exact match
    r = smart.get(
        f"/fhir/R4/ImagingStudy?{param}={quote(value, safe='')}&_count=100", headers=KEYS.headers("user/*.rs")
    )
    assert r.status_code < 500
    if r.status_code == 200 and param in ("patient.identifier", "identifier", "_id"):
        # FHIR's own syntax applies after URL decoding: "," ORs, "\\," is a literal comma (search.html#escaping)
        assert studies(r) == exact(manifest, param, value), (param, value)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/R4/ImagingStudy/..%2F..%2Fstudies",
        "/fhir/R4/ImagingStudy/%2e%2e",
        "/fhir/R4/ImagingStudy/1.2.3%2F..%2F4.5.6",
        "/fhir/R4/Patient/..%2Fmetadata",
        "/fhir/R4/Patient/%00",
        "/fhir/R4/Endpoint/..%2F..%2Fsystem",
        "/fhir/R5/ImagingSelection/%2e%2e%2F%2e%2e",
        "/fhir/R4/ImagingStudy/" + "1." * 400 + "1",
        "/fhir/R4/../R4/metadata/../../../etc/passwd",
    ],
)
def test_path_tricks_are_4xx_outcomes(smart, path):
    r = smart.get(path, headers=KEYS.headers("user/*.rs"))
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "orthanc" not in r.text.lower() and "127.0.0.1" not in r.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/fhir+json; fhirVersion=4.0; q=0.9, */*;q=0"},
        {"Accept": "x" * 8000},
        {"Prefer": "handling=strict" * 100},
        {"Cache-Control": "no-cache, no-cache, no-store"},
        {"X-Forwarded-Host": "evil.example.org", "X-Forwarded-Proto": "https"},
        {"X-Request-ID": "x\r\nInjected: 1"},
        {"Authorization": "Bearer " + "a" * 20000},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ],
)
def test_header_tricks(smart, headers):
    h = KEYS.headers("user/*.rs") | {k: v for k, v in headers.items() if k != "Authorization"}
    if "Authorization" in headers:
        h["Authorization"] = headers["Authorization"]
    try:
        r = smart.get("/fhir/R4/ImagingStudy?modality=CT&_count=2", headers=h)
    except Exception as exc:  # the HTTP client itself refuses some header values: nothing reached the server
        assert "header" in str(exc).lower() or isinstance(exc, ValueError), exc
        return
    assert r.status_code < 500 and r.json()["resourceType"] in ("Bundle", "OperationOutcome")
    if r.status_code == 200:
        assert all(link["url"].startswith("http://testserver/") for link in r.json()["link"])  # no forwarded host
