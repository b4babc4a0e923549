"""The CapabilityStatement says exactly what the parser accepts, and start-up fails on bad settings in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.fhir.search_params import IMAGING_STUDY_PARAMS, INCLUDES, PATIENT_PARAMS
from tests.api.conftest import PACS
from tests.support.fhir_check import check

ROOT = Path(__file__).resolve().parents[2]


def test_metadata_lists_exactly_the_table(client):
    cs = client.get("/fhir/R4/metadata").json()
    check(cs)
    assert cs["fhirVersion"] == "4.0.1"
    (rest,) = cs["rest"]
    study = next(r for r in rest["resource"] if r["type"] == "ImagingStudy")
    assert [p["name"] for p in study["searchParam"]] == [p.name for p in IMAGING_STUDY_PARAMS]
    assert study["searchInclude"] == list(INCLUDES)
    assert {i["code"] for i in study["interaction"]} == {"read", "search-type"}
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert [p["name"] for p in patient["searchParam"]] == [p.name for p in PATIENT_PARAMS]
    assert {i["code"] for i in patient["interaction"]} == {"read", "search-type"} and "searchInclude" not in patient
    endpoint = next(r for r in rest["resource"] if r["type"] == "Endpoint")
    assert {i["code"] for i in endpoint["interaction"]} == {"read"}
    assert cs["implementation"]["url"] == "http://testserver/fhir/R4"


@pytest.mark.parametrize("param", [p.name for p in IMAGING_STUDY_PARAMS])
def test_every_listed_parameter_is_accepted_strictly(pacs, client, param):
    pacs.get(url__startswith=PACS).mock(return_value=httpx.Response(200, json=[]))
    sample = {
        "_id": "1.2.3",
        "identifier": "ACC1",
        "patient": "Patient/pjvje4mbqgayq",
        "subject": "Patient/pjvje4mbqgayq",
        "started": "ge2020",
        "modality": "CT",
        "series": "1.2.3",
        "instance": "1.2.3",
        "dicom-class": "1.2.840.10008.5.1.4.1.1.2",
        "bodysite": "KNEE",
        "endpoint": "Endpoint/wado-rs",
        "referrer": "Smith",
        "status": "available",
    }[param]
    key = "referrer.name" if param == "referrer" else param  # the PACS keeps referrers as names only
    r = client.get(f"/fhir/R4/ImagingStudy?{key}={sample}", headers={"prefer": "handling=strict"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("param", [p.name for p in PATIENT_PARAMS])
def test_every_listed_patient_parameter_is_accepted_strictly(pacs, client, param):
    pacs.get(url__startswith=PACS).mock(return_value=httpx.Response(200, json=[]))
    sample = {"_id": "pjvje4mbqgayq", "identifier": "MRN1", "birthdate": "1970", "gender": "female"}.get(param, "Smi")
    r = client.get(f"/fhir/R4/Patient?{param}={sample}", headers={"prefer": "handling=strict"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FACADE_DICOMWEB_URL": "not a url"}, "dicomweb_url must be an absolute http(s) URL"),
        ({"FACADE_DICOMWEB_URL": "http://pacs:8042", "FACADE_MAX_COUNT": "many"}, "max_count must be an integer"),
        (
            {"FACADE_DICOMWEB_URL": "http://pacs:8042", "FACADE_PACS_TIMEZONE": "Mars/Olympus"},
            "pacs_timezone 'Mars/Olympus' is not an IANA time zone",
        ),
        ({"FACADE_CONFIG": "/nonexistent/facade.toml"}, "does not exist"),
        ({}, "dicomweb_url is required"),
        # Fail closed: no key source and no explicit open mode.
        ({"FACADE_DICOMWEB_URL": "http://pacs:8042"}, "auth_mode 'smart' needs jwks_url, jwks_file or"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FACADE_")}
    done = subprocess.run(
        [sys.executable, "-m", "app", "--port", "0"],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facade: configuration error: ") and message in lines[0]
