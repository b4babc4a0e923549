"""Endpoint shapes in FHIR answers for the three WADO-RS modes (issue 12): gateway + token (and open), gateway +
capability (a contained Endpoint per study), direct (the PACS). Mocked PACS; every body is validated (R4 and R5)."""

from __future__ import annotations

import time
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from app.fhir import patient_ids
from app.mapping.endpoint import REQUIRES_ACCESS_TOKEN
from app.security.capability import verify
from app.security.context import Unauthorized
from tests.api.conftest import PACS, instance_row, study_row
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

KEYS = TokenIssuer()
A = patient_ids.encode("MRN-A", None)
CAP_KEYS = ("new-" + "n" * 40, "old-" + "o" * 40)
STUDIES = ("1.2.3", "4.5.6")


def _pacs(pacs):
    rows = {"1.2.3": study_row("1.2.3", patient_id="MRN-A"), "4.5.6": study_row("4.5.6", patient_id="MRN-A")}

    def studies(request: httpx.Request) -> httpx.Response:
        query = unquote(str(request.url))
        wanted = [r for uid, r in rows.items() if uid in query]
        return httpx.Response(200, json=wanted if "StudyInstanceUID" in query else list(rows.values()))

    def instances(request: httpx.Request) -> httpx.Response:
        query = unquote(str(request.url))
        out = [instance_row(u, u + ".1", u + ".1.1") for u in rows if u in query]
        out += [instance_row(u, u + ".2", u + ".2.1", series_number=2) for u in rows if u in query]
        return httpx.Response(200, json=out)

    pacs.get(url__regex=rf"^{PACS}/studies").mock(side_effect=studies)
    pacs.get(url__regex=rf"^{PACS}/instances").mock(side_effect=instances)


@pytest.fixture
def smart_client(make_client, tmp_path):
    jwks = KEYS.write_jwks(tmp_path)

    def make(**overrides):
        return make_client(
            auth_mode="smart", jwks_file=str(jwks), token_issuer=ISSUER, token_audience=AUDIENCE, **overrides
        )

    return make


def _flag(endpoint) -> bool:
    (ext,) = [e for e in endpoint["extension"] if e["url"] == REQUIRES_ACCESS_TOKEN]
    return bool(ext["valueBoolean"])


def _entries(body, rtype):
    return [e["resource"] for e in body.get("entry", []) if e["resource"]["resourceType"] == rtype]


class TestGatewayToken:
    def test_shared_endpoint_on_the_request_origin_token_required(self, pacs, smart_client):
        _pacs(pacs)
        client = smart_client()
        headers = KEYS.headers("patient/ImagingStudy.rs", A)
        body = client.get("/fhir/R4/ImagingStudy?_include=ImagingStudy:endpoint", headers=headers).json()
        (endpoint,) = _entries(body, "Endpoint")
        assert endpoint["id"] == "wado-rs" and endpoint["address"] == "http://testserver/dicomweb"
        assert not urlsplit(endpoint["address"]).query and PACS not in str(body)
        assert _flag(endpoint) is True
        for study in _entries(body, "ImagingStudy"):
            assert study["endpoint"] == [{"reference": "Endpoint/wado-rs"}] and "contained" not in study
            assert all(s["endpoint"] == [{"reference": "Endpoint/wado-rs"}] for s in study["series"])
        assert client.get("/fhir/R4/Endpoint/wado-rs", headers=headers).json() == endpoint

    def test_address_follows_the_request_host_and_port(self, pacs, make_client):
        _pacs(pacs)
        client = make_client()
        r = client.get("/fhir/R4/Endpoint/wado-rs", headers={"Host": "imaging.local:8443"})
        assert r.json()["address"] == "http://imaging.local:8443/dicomweb"
        assert _flag(r.json()) is False  # open mode: the gateway serves everyone

    def test_public_url_wins(self, pacs, make_client):
        _pacs(pacs)
        client = make_client(public_url="https://imaging.example.org/base/")
        assert client.get("/fhir/R4/Endpoint/wado-rs").json()["address"] == "https://imaging.example.org/base/dicomweb"
        r5 = client.get("/fhir/R5/Endpoint/wado-rs").json()
        assert r5["address"] == "https://imaging.example.org/base/dicomweb" and r5["connectionType"][0]["coding"]

    def test_imaging_selection_include_points_at_the_gateway(self, pacs, make_client):
        pacs.get(url__regex=rf"^{PACS}/").mock(return_value=httpx.Response(200, json=[]))
        body = make_client().get("/fhir/R5/ImagingSelection?_include=ImagingSelection:endpoint").json()
        assert body["resourceType"] == "Bundle"  # no manifests here: nothing included, but no crash on the base


class TestCapability:
    @pytest.fixture
    def client(self, pacs, smart_client):
        _pacs(pacs)
        return smart_client(wado_access="capability", capability_keys=CAP_KEYS, capability_ttl=600.0)

    def _caps(self, study):
        (contained,) = study["contained"]
        assert contained["resourceType"] == "Endpoint" and contained["id"] == "wado"
        assert _flag(contained) is False
        address = contained["address"]
        prefix = "http://testserver/dicomweb/c/"
        assert address.startswith(prefix) and "?" not in address
        assert study["endpoint"] == [{"reference": "#wado"}]
        assert all(s["endpoint"] == [{"reference": "#wado"}] for s in study["series"])
        return address.removeprefix(prefix)

    @pytest.mark.parametrize("base", ["/fhir/R4", "/fhir/R5"])
    def test_each_study_contains_its_own_endpoint(self, client, base):
        lifetime = 300
        headers = {"Authorization": f"Bearer {KEYS.token('patient/ImagingStudy.rs', A, lifetime=lifetime)}"}
        body = client.get(f"{base}/ImagingStudy?_include=ImagingStudy:endpoint", headers=headers).json()
        assert _entries(body, "Endpoint") == []  # contained: nothing to include
        studies = _entries(body, "ImagingStudy")
        assert sorted(s["id"] for s in studies) == list(STUDIES)
        now = time.time()
        for study in studies:
            cap = self._caps(study)
            grant = verify(cap, study["id"], keys=CAP_KEYS[1:] + CAP_KEYS[:1], now=now, skew=0)
            assert grant.patient == A
            assert grant.expires_at <= now + lifetime + 1  # the token's exp, not capability_ttl (600)
            other = next(u for u in STUDIES if u != study["id"])
            with pytest.raises(Unauthorized):
                verify(cap, other, keys=CAP_KEYS, now=now, skew=0)
            if base == "/fhir/R5":
                assert study["contained"][0]["connectionType"][0]["coding"][0]["code"] == "dicom-wado-rs"
                assert "payload" in study["contained"][0]

    def test_read_contains_it_too(self, client):
        headers = KEYS.headers("user/ImagingStudy.rs")
        study = client.get("/fhir/R4/ImagingStudy/1.2.3", headers=headers).json()
        grant = verify(self._caps(study), "1.2.3", keys=CAP_KEYS, now=time.time(), skew=0)
        assert grant.patient is None  # a user-level grant is unconfined

    def test_elements_keep_the_contained_endpoint_with_its_references(self, client):
        headers = KEYS.headers("user/ImagingStudy.rs")
        body = client.get("/fhir/R4/ImagingStudy?_elements=endpoint", headers=headers).json()
        for study in _entries(body, "ImagingStudy"):
            self._caps_no_series(study)
        body = client.get("/fhir/R4/ImagingStudy?_elements=identifier", headers=headers).json()
        assert all("contained" not in s for s in _entries(body, "ImagingStudy"))

    def _caps_no_series(self, study):
        assert study["endpoint"] == [{"reference": "#wado"}] and study["contained"][0]["id"] == "wado"

    def test_a_token_that_may_not_read_gets_no_capability(self, client):
        body = client.get("/fhir/R4/ImagingStudy", headers=KEYS.headers("user/ImagingStudy.s")).json()
        for study in _entries(body, "ImagingStudy"):
            assert "contained" not in study and "endpoint" not in study
            assert all("endpoint" not in s for s in study["series"])

    def test_shared_endpoint_stays_the_token_route(self, client):
        endpoint = client.get("/fhir/R4/Endpoint/wado-rs", headers=KEYS.headers("user/ImagingStudy.rs")).json()
        assert endpoint["address"] == "http://testserver/dicomweb" and _flag(endpoint) is True

    def test_capability_mode_needs_keys(self, smart_client):
        from app.settings import SettingsError

        with pytest.raises(SettingsError, match="capability_keys"):
            smart_client(wado_access="capability")


class TestDirect:
    def test_endpoint_is_the_pacs(self, pacs, make_client):
        _pacs(pacs)
        client = make_client(wado_mode="direct")
        body = client.get("/fhir/R4/ImagingStudy?_include=ImagingStudy:endpoint").json()
        (endpoint,) = _entries(body, "Endpoint")
        assert endpoint["address"] == PACS and _flag(endpoint) is False
        assert all(s["endpoint"] == [{"reference": "Endpoint/wado-rs"}] for s in _entries(body, "ImagingStudy"))

    def test_wado_url_overrides(self, pacs, make_client):
        client = make_client(wado_mode="direct", wado_url="https://wado.example.org/dicom-web/")
        assert client.get("/fhir/R4/Endpoint/wado-rs").json()["address"] == "https://wado.example.org/dicom-web"
