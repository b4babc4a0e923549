"""The gateway's QIDO-RS routes against a mocked PACS (issue 20): what the PACS is asked (rebuilt, never the
client's spelling; scope keys forced), CORS and OperationOutcomes as on the other gateway routes, Warning exposed
to scripts, PACS faults without the PACS's body, HEAD, and the audit line.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

import httpx
import pytest
import respx

from app.fhir import patient_ids
from tests.api.conftest import PACS, study_row
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

KEYS = TokenIssuer()
APP = "https://viewer.example"
P1 = patient_ids.encode("MRN1", None)
SECRET = b"http://pacs.test:8042/dicom-web/secret"


@pytest.fixture
def asked(pacs: respx.MockRouter) -> list[str]:
    """The PACS's QIDO answers every study row it is sent; the list records each query as sent (raw)."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode().removeprefix("/dicom-web/"))
        return httpx.Response(200, json=[study_row("1.2.3", patient_id="MRN1"), study_row("1.2.4", patient_id="MRN2")])

    pacs.get(url__regex=rf"^{PACS}/(studies|series|instances)").mock(side_effect=answer)
    return seen


@pytest.fixture
def smart(asked, make_client, tmp_path):
    jwks = KEYS.write_jwks(tmp_path)
    return make_client(
        auth_mode="smart",
        jwks_file=str(jwks),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
        cors_origins=(APP,),
        hide_rejected=False,
    )


def test_the_query_reaches_the_pacs_rebuilt(smart, asked):
    r = smart.get(
        "/dicomweb/studies?PatientName=M%C3%BCller%5E%2A&includefield=StudyDescription&limit=5",
        headers=KEYS.headers("user/ImagingStudy.rs"),
    )
    assert r.status_code == 200, r.text
    # "Müller^*": ü widened to *, ^ and * raw, the keyword as given; includefield as a tag; one row more than asked.
    assert asked == ["studies?PatientName=M*ller^*&includefield=00081030&includefield=00100010&limit=6"]


def test_a_patient_token_forces_its_patient_and_checks_each_row(smart, asked):
    r = smart.get("/dicomweb/studies?PatientID=MRN2", headers=KEYS.headers("patient/ImagingStudy.rs", P1))
    assert r.status_code == 200 and r.json() == []  # the PACS's MRN2 row (it ignored the key) does not pass
    assert unquote(asked[0]).startswith("studies?PatientID=MRN1&")
    r = smart.get("/dicomweb/studies", headers=KEYS.headers("patient/ImagingStudy.rs", P1))
    assert [row["0020000D"]["Value"] for row in r.json()] == [["1.2.3"]]


def test_cors_and_outcomes_on_errors(smart):
    r = smart.get("/dicomweb/studies", headers={"Origin": APP})
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["access-control-allow-origin"] == APP and "www-authenticate" in r.headers
    r = smart.get("/dicomweb/studies?Foo=1", headers={"Origin": APP, **KEYS.headers("user/ImagingStudy.rs")})
    assert r.status_code == 400 and r.headers["access-control-allow-origin"] == APP
    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    assert smart.options("/dicomweb/series?Modality=CT", headers=preflight).status_code == 204


def test_warning_is_exposed_to_scripts(smart):
    r = smart.get(
        "/dicomweb/studies?fuzzymatching=true", headers={"Origin": APP, **KEYS.headers("user/ImagingStudy.rs")}
    )
    assert r.status_code == 200 and r.headers["warning"].startswith('299 testserver "The fuzzymatching')
    assert "warning" in r.headers["access-control-expose-headers"]


def test_head(smart):
    r = smart.head("/dicomweb/studies", headers=KEYS.headers("user/ImagingStudy.rs"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json" and r.content == b""


@pytest.mark.parametrize(("status", "want"), [(500, 502), (503, 503), (400, 400)])
def test_pacs_faults_name_no_pacs(pacs, make_client, status, want):
    pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(status, content=SECRET))
    r = make_client(upstream_retries=0).get("/dicomweb/studies")
    assert r.status_code == want and r.json()["resourceType"] == "OperationOutcome"
    assert b"pacs.test" not in r.content


def test_one_audit_line_per_search(smart, caplog):
    with caplog.at_level(logging.INFO, logger="facade.audit"):
        smart.get("/dicomweb/studies/1.2.3/series", headers=KEYS.headers("patient/ImagingStudy.rs", P1))
    (record,) = [r for r in caplog.records if r.name == "facade.audit"]
    audit = record.audit  # type: ignore[attr-defined]
    assert audit["route"] == "/dicomweb/studies/{study}/series" and audit["status"] == 200
    assert audit["patient"] == f"Patient/{P1}" and audit["study"] == "1.2.3" and "rows" in audit
