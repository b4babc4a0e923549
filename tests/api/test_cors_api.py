"""CORS on the FHIR API and /dicomweb (issue 12 rule 6): preflights, headers on answers and on errors, nothing for
an origin that is not allowed. Mocked PACS."""

from __future__ import annotations

import httpx
import pytest

from app.settings import Settings, SettingsError
from tests.api.conftest import PACS, study_row
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

APP = "https://viewer.example.org"
OTHER = "https://evil.example.net"
KEYS = TokenIssuer()
PREFLIGHT = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization, accept"}


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-")}


@pytest.fixture
def client(pacs, make_client):
    pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[study_row("1.2.3")]))
    pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[]))
    return make_client(cors_origins=(APP, "http://localhost:3000"))


@pytest.fixture
def smart(pacs, make_client, tmp_path):
    pacs.get(url__regex=rf"^{PACS}/").mock(return_value=httpx.Response(200, json=[]))
    jwks = KEYS.write_jwks(tmp_path)
    return make_client(
        auth_mode="smart", jwks_file=str(jwks), token_issuer=ISSUER, token_audience=AUDIENCE, cors_origins=(APP,)
    )


class TestPreflight:
    @pytest.mark.parametrize("path", ["/fhir/R4/ImagingStudy", "/fhir/R5/ImagingSelection", "/dicomweb/studies/1.2.3"])
    def test_allowed_origin(self, client, path):
        r = client.options(path, headers={"Origin": APP, **PREFLIGHT})
        assert r.status_code == 204 and r.content == b""
        h = r.headers
        assert h["access-control-allow-origin"] == APP
        assert "origin" in h["vary"].lower()
        assert {m.strip() for m in h["access-control-allow-methods"].split(",")} == {"GET", "POST", "OPTIONS"}
        allowed = {x.strip() for x in h["access-control-allow-headers"].split(",")}
        assert allowed == {
            "authorization",
            "accept",
            "content-type",
            "prefer",
            "if-none-exist",
            "cache-control",
            "x-request-id",
        }
        assert "*" not in h["access-control-allow-headers"]  # the wildcard never covers Authorization (Fetch)
        assert int(h["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in h
        assert h["x-request-id"]  # observability still sees it

    def test_origin_is_matched_as_browsers_serialize_it(self, make_client):
        client = make_client(cors_origins=("HTTPS://Viewer.Example.org:443",))
        r = client.options("/fhir/R4/ImagingStudy", headers={"Origin": APP, **PREFLIGHT})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == APP

    def test_origin_not_allowed(self, client):
        r = client.options("/fhir/R4/ImagingStudy", headers={"Origin": OTHER, **PREFLIGHT})
        assert r.status_code == 403 and cors_headers(r) == {}
        assert r.json()["resourceType"] == "OperationOutcome"  # every 4xx body is one (checked by the client)
        assert OTHER not in r.text

    def test_similar_origins_are_not_allowed(self, client):
        for origin in (APP + ".evil.net", "http://viewer.example.org", APP + ":8443", "null", APP + "/"):
            r = client.options("/fhir/R4/ImagingStudy", headers={"Origin": origin, **PREFLIGHT})
            assert r.status_code == 403 and cors_headers(r) == {}, origin

    def test_options_without_preflight_headers_is_not_a_preflight(self, client):
        assert client.options("/fhir/R4/ImagingStudy", headers={"Origin": APP}).status_code == 405

    def test_paths_outside_the_api_get_no_cors(self, client):
        r = client.options("/metrics", headers={"Origin": APP, **PREFLIGHT})
        assert r.status_code == 405 and cors_headers(r) == {}
        assert cors_headers(client.get("/healthz", headers={"Origin": APP})) == {}


class TestActualRequests:
    def test_success_gets_allow_origin_and_exposed_headers(self, client):
        r = client.get("/fhir/R4/ImagingStudy", headers={"Origin": APP})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP
        assert "origin" in r.headers["vary"].lower()
        exposed = {x.strip() for x in r.headers["access-control-expose-headers"].split(",")}
        assert exposed >= {"location", "etag", "retry-after", "www-authenticate", "x-request-id", "content-location"}
        assert exposed >= {"content-type", "content-length", "warning"}
        assert "access-control-allow-credentials" not in r.headers

    def test_errors_get_them_too(self, smart):
        r = smart.get("/fhir/R4/ImagingStudy", headers={"Origin": APP})  # no token
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["access-control-allow-origin"] == APP
        assert "www-authenticate" in r.headers["access-control-expose-headers"]
        r = smart.get("/fhir/R4/Nothing", headers={"Origin": APP})
        assert r.status_code == 404 and r.headers["access-control-allow-origin"] == APP
        r = smart.get("/fhir/R4/ImagingStudy?_count=x", headers={"Origin": APP, **KEYS.headers("user/*.rs")})
        assert r.status_code == 400 and r.headers["access-control-allow-origin"] == APP

    def test_gateway_paths_are_covered(self, smart):
        r = smart.get("/dicomweb/studies/1.2.3/metadata", headers={"Origin": APP})
        assert r.status_code in (401, 404) and r.headers["access-control-allow-origin"] == APP

    def test_other_origin_gets_nothing(self, client):
        r = client.get("/fhir/R4/ImagingStudy", headers={"Origin": OTHER})
        assert r.status_code == 200 and cors_headers(r) == {}
        assert "origin" in r.headers["vary"].lower()  # caches must not reuse one origin's answer for another

    def test_no_origin_no_cors(self, client):
        assert cors_headers(client.get("/fhir/R4/ImagingStudy")) == {}


class TestWildcardAndOff:
    def test_star_allows_any_origin_without_credentials(self, make_client):
        client = make_client(cors_origins=("*",))
        r = client.options("/fhir/R4/ImagingStudy", headers={"Origin": OTHER, **PREFLIGHT})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        assert "authorization" in r.headers["access-control-allow-headers"]
        r = client.get("/fhir/R4/metadata", headers={"Origin": OTHER})
        assert r.headers["access-control-allow-origin"] == "*" and "access-control-allow-credentials" not in r.headers

    def test_off_by_default(self, client, make_client):
        plain = make_client()
        r = plain.options("/fhir/R4/ImagingStudy", headers={"Origin": APP, **PREFLIGHT})
        assert r.status_code == 405 and cors_headers(r) == {}
        assert cors_headers(plain.get("/fhir/R4/metadata", headers={"Origin": APP})) == {}


class TestSettings:
    def test_comma_separated_from_the_environment(self):
        env = {"FACADE_DICOMWEB_URL": PACS, "FACADE_AUTH_MODE": "open"}
        s = Settings.load(env | {"FACADE_CORS_ORIGINS": f" {APP}, http://localhost:3000 ,"})
        assert s.cors_origins == (APP, "http://localhost:3000")
        assert Settings.load(env | {"FACADE_CORS_ORIGINS": "*"}).cors_origins == ("*",)
        assert Settings.load(env).cors_origins == ()

    @pytest.mark.parametrize("value", ["viewer.example.org", f"{APP}/app", "ftp://x", "*," + APP, "null", f"{APP}?"])
    def test_bad_origins(self, value):
        with pytest.raises(SettingsError, match="cors_origins"):
            Settings.load({"FACADE_DICOMWEB_URL": PACS, "FACADE_AUTH_MODE": "open", "FACADE_CORS_ORIGINS": value})
