"""app.fhir.bundle: searchset Bundles with absolute links and fullUrls, no invented total."""

from __future__ import annotations

from datetime import UTC
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle

from app.fhir.bundle import search_url, searchset
from app.fhir.search import SearchContext, parse_search
from tests.support import fhir_check

BASE = "https://fhir.example.org/fhir/R4"
STUDY = {
    "resourceType": "ImagingStudy",
    "id": "1.2.3",
    "status": "available",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
    "subject": {"reference": "Patient/pjvje4mbrgaya"},
}
STUDY_2 = {**STUDY, "id": "1.2.4", "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.4"}]}
ENDPOINT = {
    "resourceType": "Endpoint",
    "id": "wado-rs",
    "status": "active",
    "connectionType": {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "dicom-wado-rs",
    },
    "payloadType": [{"text": "DICOM WADO-RS"}],
    "address": "https://pacs.example.org/dicom-web",
}


def valid(bundle: dict) -> dict:
    Bundle.model_validate(bundle)
    fhir_check.check(bundle)
    return bundle


class TestSearchUrl:
    def test_no_params(self):
        assert search_url(BASE, "ImagingStudy", []) == f"{BASE}/ImagingStudy"

    def test_plain_params_keep_colon_slash_and_comma_readable(self):
        params = [("patient:identifier", "urn:oid:1.2.3"), ("modality", "CT,MR"), ("_count", "20")]
        url = search_url(BASE, "ImagingStudy", params)
        assert url == f"{BASE}/ImagingStudy?patient:identifier=urn:oid:1.2.3&modality=CT,MR&_count=20"

    def test_reserved_characters_are_encoded(self):
        params = [("started", "ge2020-01-01T10:00:00+01:00"), ("x", "a&b=c#d?e%f g")]
        url = search_url(BASE, "ImagingStudy", params)
        assert url == (f"{BASE}/ImagingStudy?started=ge2020-01-01T10:00:00%2B01:00&x=a%26b%3Dc%23d%3Fe%25f%20g")

    @pytest.mark.parametrize(
        "params",
        [
            [("patient.identifier", "http://hospital-a.example.org/mrn|MRN 01/ü")],
            [("identifier", "ACC\\,1,ACC\\|2,ACC\\\\3")],
            [("started", "ge2020-01-01T10:00:00+01:00"), ("started", "lt2021")],
            [("patient", "https://fhir.example.org/fhir/R4/Patient/pjvje4mbrgaya"), ("_count", "5")],
            [("x", "+&=#?%;")],
        ],
    )
    def test_the_query_decodes_back_to_the_params(self, params):
        url = search_url(BASE, "ImagingStudy", params)
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{BASE}/ImagingStudy"
        assert parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True) == params
        assert " " not in url and "+" not in url  # a raw "+" would read back as a space

    def test_self_link_from_a_parsed_search_round_trips(self):
        ctx = SearchContext(
            default_count=20,
            max_count=100,
            search_zone=UTC,
            patient_system="urn:p",
            issuer_prefix="urn:i:",
            base_url=BASE,
        )
        items = [
            ("identifier", "http://h/acc|A\\,1"),
            ("started", "ge2020-01-01T10:00:00+01:00"),
            ("unknown", "dropped"),
            ("_count", "10"),
            ("_offset", "20"),
        ]
        req = parse_search(items, ctx)
        url = search_url(BASE, "ImagingStudy", req.link_params())
        again = parse_search(parse_qsl(urlsplit(url).query, keep_blank_values=True), ctx)
        assert again == req


class TestSearchset:
    def test_empty_result(self):
        bundle = valid(searchset(BASE, [], self_url=f"{BASE}/ImagingStudy?_count=20"))
        assert bundle == {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "self", "url": f"{BASE}/ImagingStudy?_count=20"}],
        }
        assert "total" not in bundle  # QIDO gives no count: no invented total
        assert "entry" not in bundle  # FHIR JSON has no empty arrays

    def test_matches_includes_and_links(self):
        bundle = valid(
            searchset(
                BASE,
                [STUDY, STUDY_2],
                self_url=f"{BASE}/ImagingStudy?_count=2&_offset=2",
                next_url=f"{BASE}/ImagingStudy?_count=2&_offset=4",
                previous_url=f"{BASE}/ImagingStudy?_count=2",
                included=[ENDPOINT],
            )
        )
        assert bundle == {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [
                {"relation": "self", "url": f"{BASE}/ImagingStudy?_count=2&_offset=2"},
                {"relation": "next", "url": f"{BASE}/ImagingStudy?_count=2&_offset=4"},
                {"relation": "previous", "url": f"{BASE}/ImagingStudy?_count=2"},
            ],
            "entry": [
                {"fullUrl": f"{BASE}/ImagingStudy/1.2.3", "resource": STUDY, "search": {"mode": "match"}},
                {"fullUrl": f"{BASE}/ImagingStudy/1.2.4", "resource": STUDY_2, "search": {"mode": "match"}},
                {"fullUrl": f"{BASE}/Endpoint/wado-rs", "resource": ENDPOINT, "search": {"mode": "include"}},
            ],
        }

    def test_no_next_or_previous_when_not_given(self):
        bundle = searchset(BASE, [STUDY], self_url=f"{BASE}/ImagingStudy", next_url=None, previous_url="")
        assert [link["relation"] for link in bundle["link"]] == ["self"]

    def test_links_and_full_urls_are_absolute(self):
        bundle = searchset(
            BASE,
            [STUDY],
            self_url=search_url(BASE, "ImagingStudy", [("_count", "1")]),
            next_url=search_url(BASE, "ImagingStudy", [("_count", "1"), ("_offset", "1")]),
        )
        for url in [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]:
            parts = urlsplit(url)
            assert parts.scheme == "https" and parts.netloc == "fhir.example.org", url
            assert parts.path.startswith("/fhir/R4/"), url

    def test_resources_are_not_copied_or_changed(self):
        bundle = searchset(BASE, [STUDY], self_url=f"{BASE}/ImagingStudy")
        assert bundle["entry"][0]["resource"] is STUDY
