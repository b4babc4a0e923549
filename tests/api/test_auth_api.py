"""SMART authorization through the app (mocked PACS): 401/403, patient confinement, reads of other patients,
cache isolation between authorization contexts, discovery and the Endpoint's requires-access-token."""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest

from app.fhir import patient_ids
from tests.api.conftest import PACS, instance_row, study_row
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

KEYS = TokenIssuer()
A = patient_ids.encode("MRN-A", None)
B = patient_ids.encode("MRN-B", None)


@pytest.fixture
def smart(make_client, tmp_path):
    jwks = KEYS.write_jwks(tmp_path)
    return make_client(
        auth_mode="smart",
        jwks_file=str(jwks),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
        smart_token_endpoint="https://auth.example.org/token",
        smart_authorization_endpoint="https://auth.example.org/authorize",
    )


def _pacs(pacs):
    """Study 1.2.3 is A's, 4.5.6 is B's; the mock answers by the PatientID / StudyInstanceUID asked for."""
    rows = {"1.2.3": study_row("1.2.3", patient_id="MRN-A"), "4.5.6": study_row("4.5.6", patient_id="MRN-B")}

    def studies(request: httpx.Request) -> httpx.Response:
        query = unquote(str(request.url))
        out = [r for uid, r in rows.items() if uid in query or f"PatientID={r['00100020']['Value'][0]}&" in query + "&"]
        if "PatientID" not in query and "StudyInstanceUID" not in query:
            out = list(rows.values())
        return httpx.Response(200, json=out)

    def instances(request: httpx.Request) -> httpx.Response:
        query = unquote(str(request.url))
        return httpx.Response(200, json=[instance_row(u, u + ".1", u + ".1.1") for u in rows if u in query])

    s = pacs.get(url__regex=rf"^{PACS}/studies").mock(side_effect=studies)
    i = pacs.get(url__regex=rf"^{PACS}/instances").mock(side_effect=instances)
    return s, i


def ids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"}


def test_missing_bad_and_expired_tokens_are_401_with_a_challenge(pacs, smart):
    _pacs(pacs)
    r = smart.get("/fhir/R4/ImagingStudy")
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["www-authenticate"].startswith("Bearer") and "error=" not in r.headers["www-authenticate"]
    for header in (
        "Bearer nope",
        f"Bearer {KEYS.token('user/*.rs', lifetime=-600)}",
        f"Bearer {TokenIssuer().token('user/*.rs')}",
    ):
        r = smart.get("/fhir/R4/ImagingStudy", headers={"Authorization": header})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        assert header.split()[-1] not in r.text
    assert not pacs.calls  # nothing reached the PACS


def test_scopes_are_checked_per_type_and_interaction(pacs, smart):
    _pacs(pacs)
    r = smart.get("/fhir/R4/ImagingStudy", headers=KEYS.headers("patient/Observation.read", A))
    assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert smart.get("/fhir/R4/ImagingStudy", headers=KEYS.headers("user/ImagingStudy.read")).status_code == 200
    assert smart.get("/fhir/R4/ImagingStudy", headers=KEYS.headers("user/ImagingStudy.s")).status_code == 200
    assert smart.get("/fhir/R4/ImagingStudy/1.2.3", headers=KEYS.headers("user/ImagingStudy.s")).status_code == 403
    assert smart.get("/fhir/R4/Patient", headers=KEYS.headers("user/ImagingStudy.rs")).status_code == 403
    assert smart.get("/fhir/R5/ImagingStudy", headers=KEYS.headers("system/*.*")).status_code == 200


def test_a_patient_token_sees_its_patient_only(pacs, smart):
    studies, _ = _pacs(pacs)
    a = KEYS.headers("patient/ImagingStudy.rs", A)
    assert ids(smart.get(f"/fhir/R4/ImagingStudy?patient=Patient/{A}", headers=a)) == {"1.2.3"}
    assert ids(smart.get("/fhir/R4/ImagingStudy", headers=a)) == {"1.2.3"}  # implicit patient filter
    assert "PatientID=MRN-A" in unquote(str(studies.calls[-1].request.url))
    assert ids(smart.get("/fhir/R4/ImagingStudy?modality=CT", headers=a)) == {"1.2.3"}
    for query in (f"patient=Patient/{B}", f"subject=Patient/{A},Patient/{B}", "patient.identifier=MRN-B"):
        r = smart.get(f"/fhir/R4/ImagingStudy?{query}", headers=a)
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden", query
    assert smart.get("/fhir/R4/ImagingStudy/1.2.3", headers=a).status_code == 200
    r = smart.get("/fhir/R4/ImagingStudy/4.5.6", headers=a)
    assert r.status_code == 404 and "4.5.6" in r.text  # not 403: do not confirm it exists
    assert smart.get(f"/fhir/R4/Patient/{B}", headers=KEYS.headers("patient/*.rs", A)).status_code == 404


def test_a_patient_scope_without_patient_context_is_403(pacs, smart):
    _pacs(pacs)
    assert smart.get("/fhir/R4/ImagingStudy", headers=KEYS.headers("patient/ImagingStudy.rs")).status_code == 403


def test_cache_is_never_shared_across_authorization_contexts(pacs, smart):
    studies, instances = _pacs(pacs)
    a, b = KEYS.headers("patient/ImagingStudy.rs", A), KEYS.headers("patient/ImagingStudy.rs", B)
    assert smart.get("/fhir/R4/ImagingStudy/1.2.3", headers=a).status_code == 200  # warms the cache as A
    before = len(studies.calls) + len(instances.calls)
    assert smart.get("/fhir/R4/ImagingStudy/1.2.3", headers=a).status_code == 200
    assert len(studies.calls) + len(instances.calls) == before  # A's repeat: from A's cache
    assert smart.get("/fhir/R4/ImagingStudy/1.2.3", headers=b).status_code == 404
    assert len(studies.calls) + len(instances.calls) == before + 2  # B: its own requests, none of A's answers
    user1 = KEYS.headers("user/ImagingStudy.rs")
    user2 = KEYS.headers("user/ImagingStudy.rs user/Patient.rs")
    smart.get("/fhir/R4/ImagingStudy?modality=CT", headers=user1)
    n = len(studies.calls)
    smart.get("/fhir/R4/ImagingStudy?modality=CT", headers=KEYS.headers("user/ImagingStudy.read"))
    assert len(studies.calls) == n  # the same grants (v1 spelling): the same partition
    smart.get("/fhir/R4/ImagingStudy?modality=CT", headers=user2)
    assert len(studies.calls) == n + 1


def test_include_patient_needs_patient_scope(pacs, smart):
    _pacs(pacs)
    r = smart.get(
        "/fhir/R4/ImagingStudy?_include=ImagingStudy:patient", headers=KEYS.headers("patient/ImagingStudy.rs", A)
    )
    assert {e["resource"]["resourceType"] for e in r.json()["entry"]} == {"ImagingStudy"}
    r = smart.get("/fhir/R4/ImagingStudy?_include=ImagingStudy:patient", headers=KEYS.headers("patient/*.rs", A))
    assert {e["resource"]["resourceType"] for e in r.json()["entry"]} == {"ImagingStudy", "Patient"}


def test_discovery_and_metadata_are_public(smart):
    cs = smart.get("/fhir/R4/metadata").json()
    security = cs["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"] == "https://auth.example.org/token"
    conf = smart.get("/fhir/R4/.well-known/smart-configuration")
    assert conf.status_code == 200 and conf.json()["token_endpoint"] == "https://auth.example.org/token"
    assert smart.get("/fhir/R5/.well-known/smart-configuration").status_code == 200


def test_endpoint_says_whether_the_token_goes_to_the_pacs(pacs, make_client, smart):
    ext = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
    # The gateway (default) checks the token the viewer presents; open mode serves everyone.
    r = smart.get("/fhir/R4/Endpoint/wado-rs", headers=KEYS.headers("patient/ImagingStudy.rs", A))
    assert r.json()["extension"] == [{"url": ext, "valueBoolean": True}]
    assert make_client().get("/fhir/R4/Endpoint/wado-rs").json()["extension"] == [{"url": ext, "valueBoolean": False}]
    # Direct: the PACS checks a token only when the facade forwards it.
    direct = make_client(wado_mode="direct")
    assert direct.get("/fhir/R4/Endpoint/wado-rs").json()["extension"] == [{"url": ext, "valueBoolean": False}]
    forward = make_client(pacs_auth="forward", wado_mode="direct")
    assert forward.get("/fhir/R4/Endpoint/wado-rs").json()["extension"] == [{"url": ext, "valueBoolean": True}]


def test_open_mode_needs_no_token(pacs, client):
    _pacs(pacs)
    assert client.get("/fhir/R4/ImagingStudy").status_code == 200
    assert client.get("/fhir/R4/.well-known/smart-configuration").status_code == 404
