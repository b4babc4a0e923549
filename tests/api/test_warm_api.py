"""The warm path (app.http.warm): repeated ImagingStudy GETs answered before the framework, and only ever with what
the handlers would have answered — same bytes, same headers but the request id, same audit line and route label;
anything it cannot vouch for goes on to the handlers."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from app.http.warm import WarmAnswers
from tests.api.conftest import PACS, instance_row, study_row
from tests.api.test_auth_api import (
    KEYS,
    A,
    B,
    smart,  # noqa: F401  (fixture)
)
from tests.api.test_auth_api import _pacs as two_patients
from tests.support.tokens import AUDIENCE, ISSUER


def _warm(client) -> WarmAnswers:
    app = client.app.middleware_stack
    while not isinstance(app, WarmAnswers):
        app = app.app
    return app


def _serve(pacs):
    pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[study_row("1.2.3")]))
    pacs.get(url__regex=rf"^{PACS}/instances").mock(
        return_value=httpx.Response(200, json=[instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1")])
    )


def _same(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code
    assert again.content == first.content
    strip = {"x-request-id"}
    assert {k: v for k, v in again.headers.items() if k not in strip} == {
        k: v for k, v in first.headers.items() if k not in strip
    }


URLS = [
    "/fhir/R4/ImagingStudy?modality=CT",
    "/fhir/R4/ImagingStudy?modality=CT&_pretty=true",
    "/fhir/R4/ImagingStudy?patient=Patient/x&modality=CT",
    "/fhir/R4/ImagingStudy/1.2.3",
    "/fhir/R5/ImagingStudy?modality=CT",
    "/fhir/R5/ImagingStudy/1.2.3",
]


@pytest.mark.parametrize("url", URLS)
def test_a_warm_answer_is_the_handlers_answer(pacs, make_client, url):
    client = make_client(cors_origins=["https://viewer.example"])
    _serve(pacs)
    headers = {"Origin": "https://viewer.example"}
    first = client.get(url, headers=headers)
    n = _warm(client).served
    again = client.get(url, headers=headers)
    _same(first, again)
    assert _warm(client).served == n + 1
    assert again.headers["access-control-allow-origin"] == "https://viewer.example"  # CORS still wraps it


def test_the_route_label_and_the_audit_line_are_the_handlers(pacs, client, caplog):
    _serve(pacs)
    caplog.set_level(logging.INFO, logger="facade.audit")
    for _ in range(2):
        client.get("/fhir/R4/ImagingStudy/1.2.3")
    assert _warm(client).served == 1
    lines = [r.audit for r in caplog.records if r.name == "facade.audit"]
    assert len(lines) == 2
    for line in lines:
        line.pop("ms")
    assert lines[0] == lines[1]
    assert lines[1]["route"] == "/fhir/R4/ImagingStudy/{id}" and lines[1]["resources"] == ["ImagingStudy/1.2.3"]
    metrics = client.get("/metrics").text
    assert 'facade_http_requests_total{method="GET",route="/fhir/R4/ImagingStudy/{id}",status="200"} 2.0' in metrics


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache-Control": "no-cache"},
        {"Accept": "application/fhir+json; fhirVersion=5.0"},  # 406 from the handler
        {"Accept": "text/html"},
    ],
)
def test_what_it_cannot_vouch_for_goes_to_the_handlers(pacs, client, headers):
    _serve(pacs)
    client.get("/fhir/R4/ImagingStudy?modality=CT")
    n = _warm(client).served
    client.get("/fhir/R4/ImagingStudy?modality=CT", headers=headers)
    client.get("/fhir/R4/ImagingStudy?modality=CT&_format=json")
    client.get("/fhir/R4/ImagingStudy/1.2.3?_pretty=true")
    assert _warm(client).served == n


def test_tokens_are_checked_as_the_handlers_check_them(pacs, smart):  # noqa: F811
    two_patients(pacs)
    url = "/fhir/R4/ImagingStudy/1.2.3"
    a = KEYS.headers("patient/ImagingStudy.rs", A)
    assert smart.get(url, headers=a).status_code == 200
    assert smart.get(url, headers=a).status_code == 200
    assert _warm(smart).served == 1
    # another patient's token, a token without the grant, no token, a bad one: the handlers answer
    assert smart.get(url, headers=KEYS.headers("patient/ImagingStudy.rs", B)).status_code == 404
    assert smart.get(url, headers=KEYS.headers("patient/Patient.rs", A)).status_code == 403
    assert smart.get(url).status_code == 401
    assert smart.get(url, headers={"Authorization": "Bearer not.a.token"}).status_code == 401
    assert _warm(smart).served == 1


def test_an_expired_token_is_refused_by_the_handlers(pacs, make_client, tmp_path):
    two_patients(pacs)
    client = make_client(
        auth_mode="smart",
        jwks_file=str(KEYS.write_jwks(tmp_path)),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
        auth_clock_skew=0,
    )
    url = "/fhir/R4/ImagingStudy/1.2.3"
    short = {"Authorization": f"Bearer {KEYS.token('patient/ImagingStudy.rs', A, lifetime=1)}"}
    assert client.get(url, headers=short).status_code == 200
    assert client.get(url, headers=short).status_code == 200
    assert _warm(client).served == 1
    time.sleep(1.6)  # past exp
    assert client.get(url, headers=short).status_code == 401
    assert _warm(client).served == 1
