"""Every 4xx/5xx is an OperationOutcome, fast, with no internals; PACS faults map to 502/503/504."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.conftest import PACS, instance_row, study_row
from tests.support.fhir_check import check

SECRET_PACS = "http://svc-user:s3cr3t@pacs.internal:8042/dicom-web"


def _outcome(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    check(body)
    assert body["resourceType"] == "OperationOutcome"
    for leak in ("s3cr3t", "svc-user", "pacs.internal", "Traceback", "httpx", "dicom-web"):
        assert leak not in r.text
    return body["issue"][0]


class TestUpstreamFaults:
    @pytest.mark.parametrize(
        ("fault", "status", "code"),
        [
            (httpx.ConnectError("refused"), 503, "transient"),
            (httpx.ConnectTimeout("slow connect"), 504, "timeout"),
            (httpx.ReadTimeout("slow answer"), 504, "timeout"),
            (httpx.RemoteProtocolError("garbled"), 503, "transient"),
        ],
    )
    def test_transport_faults(self, pacs, make_client, fault, status, code):
        pacs.get(url__startswith="http://pacs.internal:8042/dicom-web/").mock(side_effect=fault)
        client = make_client(dicomweb_url=SECRET_PACS)
        started = time.perf_counter()
        r = client.get("/fhir/R4/ImagingStudy?modality=CT")
        assert time.perf_counter() - started < 2
        assert _outcome(r, status)["code"] == code
        if status == 503:
            assert r.headers["retry-after"] == "5"

    @pytest.mark.parametrize(
        "response",
        [
            httpx.Response(500, json={"HttpError": "Internal", "Uri": "/dicom-web/studies"}),
            httpx.Response(401, text="auth needed"),
            httpx.Response(200, text="<html>proxy error page</html>"),
            httpx.Response(200, json=[1, 2]),
            httpx.Response(200, json="just a string"),
        ],
    )
    def test_bad_answers_are_502(self, pacs, make_client, response):
        pacs.get(url__startswith="http://pacs.internal:8042/dicom-web/").mock(return_value=response)
        client = make_client(dicomweb_url=SECRET_PACS)
        assert _outcome(client.get("/fhir/R4/ImagingStudy"), 502)["code"] == "exception"

    def test_credentials_in_the_url_become_basic_auth(self, pacs, make_client):
        route = pacs.get(url__startswith="http://pacs.internal:8042/dicom-web/").mock(
            return_value=httpx.Response(200, json=[])
        )
        make_client(dicomweb_url=SECRET_PACS).get("/fhir/R4/ImagingStudy")
        request = route.calls[0].request
        assert request.headers["authorization"] == "Basic c3ZjLXVzZXI6czNjcjN0"  # svc-user:s3cr3t
        assert "s3cr3t" not in str(request.url)
        direct = make_client(dicomweb_url=SECRET_PACS, wado_mode="direct")
        assert direct.get("/fhir/R4/Endpoint/wado-rs").json()["address"] == "http://pacs.internal:8042/dicom-web"
        gateway = make_client(dicomweb_url=SECRET_PACS).get("/fhir/R4/Endpoint/wado-rs").json()
        assert gateway["address"] == "http://testserver/dicomweb"

    def test_stale_keep_alive_is_retried_once(self, pacs, client):
        route = pacs.get(url__regex=rf"^{PACS}/studies").mock(
            side_effect=[httpx.RemoteProtocolError("closed"), httpx.Response(200, json=[])]
        )
        assert client.get("/fhir/R4/ImagingStudy").status_code == 200
        assert route.call_count == 2

    def test_errors_are_not_cached(self, pacs, client):
        route = pacs.get(url__regex=rf"^{PACS}/studies").mock(
            side_effect=[httpx.Response(500), httpx.Response(200, json=[])]
        )
        assert client.get("/fhir/R4/ImagingStudy").status_code == 502
        assert client.get("/fhir/R4/ImagingStudy").status_code == 200
        assert route.call_count == 2


class TestBadInput:
    @pytest.mark.parametrize(
        "query",
        [
            "started=2020-13-01",
            "started=xx2020",
            "started=ap2020",
            "started=2020-01-01T10",
            "_count=abc",
            "_count=-1",
            "_offset=x",
            "status=bogus",
            "_pretty=maybe",
            "patient:exact=Patient/x",
            "modality:text=CT",
            "bodysite:above=123",
            "identifier:of-type=x|y|z",
            "_count=1&_count=2",
        ],
    )
    def test_malformed_is_400(self, pacs, client, query):
        issue = _outcome(client.get(f"/fhir/R4/ImagingStudy?{query}"), 400)
        assert issue["code"] in ("invalid", "not-supported")
        assert not pacs.calls

    def test_unknown_parameter_lenient_vs_strict(self, pacs, client):
        pacs.get(url__regex=rf"^{PACS}/").mock(return_value=httpx.Response(200, json=[]))
        assert client.get("/fhir/R4/ImagingStudy?encounter=Encounter/1").status_code == 200
        r = client.get("/fhir/R4/ImagingStudy?encounter=Encounter/1", headers={"prefer": "handling=strict"})
        assert _outcome(r, 400)["code"] == "not-supported"

    def test_unknown_route_and_method(self, client):
        assert _outcome(client.get("/fhir/R4/Observation"), 404)["code"] == "not-found"
        assert _outcome(client.delete("/fhir/R4/ImagingStudy/1.2.3"), 405)["code"] == "not-supported"
        assert _outcome(client.put("/fhir/R4/ImagingStudy/1.2.3", json={}), 405)["code"] == "not-supported"

    def test_internal_error_has_no_details(self, pacs, client, monkeypatch):
        pacs.get(url__regex=rf"^{PACS}/").mock(return_value=httpx.Response(200, json=[study_row("1.2.3")]))

        def boom(*args, **kwargs):
            raise RuntimeError("secret internals at /srv/app")

        monkeypatch.setattr("app.usecases.service.imaging_study", boom)
        r = client.get("/fhir/R4/ImagingStudy")
        issue = _outcome(r, 500)
        assert "secret" not in r.text and issue["diagnostics"] == "Internal server error"


class TestNegotiation:
    @pytest.mark.parametrize(
        "accept",
        [
            None,
            "application/fhir+json",
            "application/json",
            "*/*",
            "application/json, text/plain, */*",
            "application/fhir+json; fhirVersion=4.0",
            "text/html,application/xhtml+xml,*/*;q=0.8",
        ],
    )
    def test_json_is_served(self, client, accept):
        headers = {"accept": accept} if accept else {}
        r = client.get("/fhir/R4/metadata", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json; charset=utf-8"

    @pytest.mark.parametrize(
        ("accept", "query"),
        [
            ("application/fhir+xml", ""),
            ("text/html", ""),
            ("application/fhir+json; fhirVersion=3.0", ""),
            (None, "?_format=xml"),
            (None, "?_format=application/fhir+xml"),
        ],
    )
    def test_other_formats_are_406(self, client, accept, query):
        headers = {"accept": accept} if accept else {}
        _outcome(client.get(f"/fhir/R4/metadata{query}", headers=headers), 406)

    @pytest.mark.parametrize("fmt", ["json", "application/json", "application/fhir+json"])
    def test_format_json(self, client, fmt):
        assert client.get(f"/fhir/R4/metadata?_format={fmt}", headers={"accept": "text/html"}).status_code == 200

    def test_pretty(self, client):
        assert client.get("/fhir/R4/metadata?_pretty=true").text.startswith('{\n  "resourceType"')

    def test_head(self, client):
        r = client.head("/fhir/R4/metadata")
        assert r.status_code == 200 and r.content == b""


class TestCache:
    def _serve(self, pacs):
        s = pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[study_row("1.2.3.1")]))
        i = pacs.get(url__regex=rf"^{PACS}/instances").mock(
            return_value=httpx.Response(200, json=[instance_row("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1")])
        )
        return s, i

    def test_second_search_is_served_from_cache(self, pacs, client):
        self._serve(pacs)
        first = client.get("/fhir/R4/ImagingStudy?modality=CT").json()
        assert len(pacs.calls) == 2
        # Another spelling of the same search maps to the same QIDO requests.
        second = client.get("/fhir/R4/ImagingStudy?modality=http://dicom.nema.org/resources/ontology/DCM|CT").json()
        assert len(pacs.calls) == 2
        assert first["entry"] == second["entry"]

    def test_no_cache_goes_to_the_pacs(self, pacs, client):
        self._serve(pacs)
        client.get("/fhir/R4/ImagingStudy")
        client.get("/fhir/R4/ImagingStudy", headers={"cache-control": "no-cache"})
        assert len(pacs.calls) == 4

    def test_ttl_zero_disables_the_cache(self, pacs, make_client):
        self._serve(pacs)
        client = make_client(cache_ttl=0)
        client.get("/fhir/R4/ImagingStudy")
        client.get("/fhir/R4/ImagingStudy")
        assert len(pacs.calls) == 4
