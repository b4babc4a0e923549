"""ImagingStudy search and read through the ASGI app, with the PACS mocked (respx)."""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest

from app.fhir import patient_ids
from tests.api.conftest import PACS, instance_row, study_row
from tests.support.fhir_check import check
from tests.support.kos import FOR_TEACHING, KOS_SOP_CLASS_UID, kos_json, make_kos, make_study


def _serve(pacs, studies, instances):
    pacs.get(url__regex=rf"^{PACS}/studies(\?.*)?$").mock(return_value=httpx.Response(200, json=studies))
    pacs.get(url__regex=rf"^{PACS}/instances(\?.*)?$").mock(return_value=httpx.Response(200, json=instances))


def _paths(pacs):
    return [unquote(str(call.request.url)).removeprefix(PACS + "/") for call in pacs.calls]


class TestUpstreamCost:
    # The study rows count 3 instances each: from MIN_SPLIT_ROWS instances on, the page's instance rows are asked
    # for in two concurrent requests (instance_query_split = 2, the default), each with half of the Study UIDs.
    @pytest.mark.parametrize(("k", "split", "calls"), [(1, 2, 2), (5, 2, 2), (20, 2, 3), (60, 2, 3), (60, 1, 2)])
    def test_a_page_of_k_studies_costs_two_or_three_requests(self, pacs, make_client, k, split, calls):
        studies = [study_row(f"1.2.3.{i}") | {"00201208": {"vr": "IS", "Value": [3]}} for i in range(k)]
        instances = [
            instance_row(f"1.2.3.{i}", f"1.2.3.{i}.1", f"1.2.3.{i}.1.{j}", number=j)
            for i in range(k)
            for j in range(1, 4)
        ]
        _serve(pacs, studies, instances)  # every instance query gets every row: each request keeps its own
        client = make_client(instance_query_split=split)
        r = client.get(f"/fhir/R4/ImagingStudy?_count={k}")
        assert r.status_code == 200
        body = r.json()
        check(body)
        assert len(body["entry"]) == k
        assert all(len(e["resource"]["series"][0]["instance"]) == 3 for e in body["entry"])
        assert len(pacs.calls) == calls
        studies_call, *instance_calls = _paths(pacs)
        assert studies_call.startswith("studies?") and f"limit={k + 1}" in studies_call
        listed = []
        for call in instance_calls:
            assert call.startswith("instances?StudyInstanceUID=")
            listed += call.split("StudyInstanceUID=")[1].split("&")[0].split(",")
        assert sorted(listed) == sorted(f"1.2.3.{i}" for i in range(k))  # each study asked for once

    def test_extra_row_means_next_link(self, pacs, client):
        _serve(pacs, [study_row(f"1.2.3.{i}") for i in range(3)], [])
        body = client.get("/fhir/R4/ImagingStudy?_count=2").json()
        assert len(body["entry"]) == 2
        rel = {link["relation"]: link["url"] for link in body["link"]}
        assert rel["next"] == "http://testserver/fhir/R4/ImagingStudy?_count=2&_offset=2"
        assert "total" not in body

    def test_no_match_costs_one_request_and_no_entries(self, pacs, client):
        _serve(pacs, [], [])
        body = client.get("/fhir/R4/ImagingStudy?patient.identifier=NOBODY").json()
        check(body)
        assert "entry" not in body and len(pacs.calls) == 1


class TestQidoTranslation:
    def test_patient_reference_becomes_patient_id_and_issuer(self, pacs, client):
        _serve(pacs, [], [])
        pid = patient_ids.encode("SHARED^01", "HOSP-A")
        client.get(f"/fhir/R4/ImagingStudy?patient=Patient/{pid}")
        (query,) = _paths(pacs)
        assert "PatientID=SHARED^01&" in query  # raw ^: Orthanc does not percent-decode
        assert "IssuerOfPatientID=HOSP-A" in query

    def test_started_range_and_modality(self, pacs, client):
        _serve(pacs, [], [])
        client.get("/fhir/R4/ImagingStudy?started=ge2020-01-01&started=lt2021&modality=CT,MR")
        (query,) = _paths(pacs)
        assert "StudyDate=20191231-20210102" in query  # widened a day each side (zones), re-checked here
        assert "ModalitiesInStudy=CT,MR" in query

    def test_identifier_uid_and_accession(self, pacs, client):
        _serve(pacs, [], [])
        client.get("/fhir/R4/ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3")
        client.get("/fhir/R4/ImagingStudy?identifier=A%2CB%5C%2CC")  # value "A,B\,C": two tokens, one with a comma
        *uid_queries, acc_query = _paths(pacs)
        # A known Study UID: the study and its instances are asked for at the same time.
        assert sorted(q.split("?")[0] for q in uid_queries) == ["instances", "studies"]
        assert all("StudyInstanceUID=1.2.3&" in q for q in uid_queries)
        assert "AccessionNumber" not in acc_query  # a list with an inexpressible value is not sent upstream

    def test_wildcards_from_the_user_are_not_wildcards(self, pacs, client):
        _serve(pacs, [study_row("1.2.3.1", accession="AXB")], [])
        body = client.get("/fhir/R4/ImagingStudy?identifier=A*B").json()
        assert "entry" not in body  # "A*B" is a literal; Orthanc's "A?B" matched "AXB", the facade re-checked it
        (query,) = _paths(pacs)
        assert "AccessionNumber=A?B" in query

    def test_identifier_star_returns_nothing(self, pacs, client):
        _serve(pacs, [study_row("1.2.3.1", accession="X")], [])
        body = client.get("/fhir/R4/ImagingStudy?identifier=*").json()
        assert "entry" not in body

    def test_case_insensitive_pacs_is_rechecked(self, pacs, client):
        _serve(pacs, [study_row("1.2.3.1", patient_id="mrn0100"), study_row("1.2.3.2", patient_id="MRN0100")], [])
        body = client.get("/fhir/R4/ImagingStudy?patient.identifier=MRN0100").json()
        assert [e["resource"]["id"] for e in body["entry"]] == ["1.2.3.2"]

    def test_count_is_capped_not_rejected(self, pacs, make_client):
        _serve(pacs, [], [])
        client = make_client(max_count=50)
        r = client.get("/fhir/R4/ImagingStudy?_count=1000")
        assert r.status_code == 200
        assert "limit=51" in _paths(pacs)[0]
        assert "_count=50" in r.json()["link"][0]["url"]


class TestLinks:
    def test_links_use_the_host_the_client_used(self, pacs, client):
        _serve(pacs, [study_row(f"1.2.3.{i}") for i in range(3)], [])
        body = client.get(
            "/fhir/R4/ImagingStudy?_count=2&_offset=2", headers={"host": "emr-gw.example.org:8443"}
        ).json()
        for link in body["link"]:
            assert link["url"].startswith("http://emr-gw.example.org:8443/fhir/R4/ImagingStudy?")
        assert body["entry"][0]["fullUrl"].startswith("http://emr-gw.example.org:8443/fhir/R4/ImagingStudy/")

    def test_public_url_setting_wins(self, pacs, make_client):
        _serve(pacs, [study_row("1.2.3.1")], [])
        client = make_client(public_url="https://imaging.example.org/base")
        body = client.get("/fhir/R4/ImagingStudy").json()
        assert body["link"][0]["url"] == "https://imaging.example.org/base/fhir/R4/ImagingStudy?_count=20"
        assert body["entry"][0]["fullUrl"] == "https://imaging.example.org/base/fhir/R4/ImagingStudy/1.2.3.1"

    def test_unknown_parameters_are_left_out_of_self(self, pacs, client):
        _serve(pacs, [], [])
        body = client.get("/fhir/R4/ImagingStudy?foo=bar&modality=CT&_sort=_lastUpdated").json()
        assert body["link"][0]["url"] == "http://testserver/fhir/R4/ImagingStudy?modality=CT&_count=20"

    def test_include_endpoint(self, pacs, client):
        _serve(
            pacs, [study_row("1.2.3.1"), study_row("1.2.3.2")], [instance_row("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1")]
        )
        body = client.get("/fhir/R4/ImagingStudy?_include=ImagingStudy:endpoint").json()
        check(body)
        modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in body["entry"]]
        assert modes == [("ImagingStudy", "match"), ("ImagingStudy", "match"), ("Endpoint", "include")]
        endpoint = body["entry"][-1]["resource"]
        assert endpoint["address"] == "http://testserver/dicomweb"  # the gateway (wado_mode default), not the PACS
        assert body["entry"][0]["resource"]["endpoint"] == [{"reference": "Endpoint/wado-rs"}]


class TestPostSearch:
    def test_form_post_equals_get(self, pacs, client):
        _serve(pacs, [study_row("1.2.3.1")], [])
        got = client.get("/fhir/R4/ImagingStudy?modality=CT").json()
        posted = client.post("/fhir/R4/ImagingStudy/_search", data={"modality": "CT"}).json()
        assert posted == got

    def test_other_media_type_is_415(self, client):
        r = client.post("/fhir/R4/ImagingStudy/_search", json={"modality": "CT"})
        assert r.status_code == 415
        check(r.json())


class TestRead:
    def test_read_by_study_uid(self, pacs, client):
        _serve(pacs, [study_row("1.2.3.1", offset="+0200")], [instance_row("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1")])
        r = client.get("/fhir/R4/ImagingStudy/1.2.3.1")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
        study = r.json()
        check(study)
        assert study["started"] == "2020-01-02T10:15:00+02:00"
        assert study["series"][0]["instance"][0]["uid"] == "1.2.3.1.1.1"

    def test_unknown_study_is_404(self, pacs, client):
        _serve(pacs, [], [])
        r = client.get("/fhir/R4/ImagingStudy/1.2.3.9")
        assert r.status_code == 404
        check(r.json())

    def test_id_that_is_no_uid_is_404_without_asking_the_pacs(self, pacs, client):
        r = client.get("/fhir/R4/ImagingStudy/not-a-uid")
        assert r.status_code == 404 and not pacs.calls

    def test_endpoint_read(self, client):
        r = client.get("/fhir/R4/Endpoint/wado-rs")
        assert r.status_code == 200
        check(r.json())
        assert client.get("/fhir/R4/Endpoint/other").status_code == 404


class TestOddPacsData:
    def test_rows_that_cannot_be_fhir_are_dropped_or_trimmed(self, pacs, client):
        bad_uid = study_row("1.2.3.1")
        bad_uid["0020000D"]["Value"] = ["not/a uid"]
        negative = study_row("1.2.3.2", offset="+9999")
        negative["00201206"]["Value"] = [-1]
        _serve(pacs, [bad_uid, negative], [])
        body = client.get("/fhir/R4/ImagingStudy").json()
        check(body)
        (entry,) = body["entry"]
        study = entry["resource"]
        assert study["id"] == "1.2.3.2" and "numberOfSeries" not in study
        assert study["started"] == "2020-01-02"  # an impossible zone offset is ignored, leaving the date


class TestLimits:
    def test_uid_lists_are_split_into_batches(self, pacs, make_client):
        uids = [f"1.2.3.{i}" for i in range(5)]
        _serve(pacs, [study_row(u) for u in uids], [])
        client = make_client(uid_batch=2)
        body = client.get(f"/fhir/R4/ImagingStudy?_id={','.join(uids)}&_count=5").json()
        assert {e["resource"]["id"] for e in body["entry"]} == set(uids)
        lists = [q.split("StudyInstanceUID=")[1].split("&")[0] for q in _paths(pacs)]
        assert all(len(x.split(",")) <= 2 for x in lists)
        assert sorted(",".join(lists).split(",")) == sorted(uids * 2)  # each UID once in studies, once in instances

    def test_instance_rows_are_paged_past_instance_limit(self, pacs, make_client):
        rows = [instance_row("1.2.3.1", "1.2.3.1.1", f"1.2.3.1.1.{j}", number=j) for j in range(1, 6)]

        def instances(request):
            offset = int(request.url.params.get("offset", 0))
            return httpx.Response(200, json=rows[offset : offset + 2])

        pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[study_row("1.2.3.1")]))
        pacs.get(url__regex=rf"^{PACS}/instances").mock(side_effect=instances)
        client = make_client(instance_limit=2)
        study = client.get("/fhir/R4/ImagingStudy/1.2.3.1").json()
        assert [i["number"] for i in study["series"][0]["instance"]] == [1, 2, 3, 4, 5]

    def test_too_many_instances_is_too_costly(self, pacs, make_client):
        rows = [instance_row("1.2.3.1", "1.2.3.1.1", f"1.2.3.1.1.{j}") for j in range(2)]
        _serve(pacs, [study_row("1.2.3.1")], rows)  # every page full: the limit is never reached
        r = make_client(instance_limit=2).get("/fhir/R4/ImagingStudy/1.2.3.1")
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"

    def test_broad_series_level_criterion_is_too_costly(self, pacs, make_client):
        series_rows = [instance_row(f"1.2.3.{i}", f"1.2.3.{i}.1", f"1.2.3.{i}.1.1") for i in range(4)]
        pacs.get(url__regex=rf"^{PACS}/series").mock(return_value=httpx.Response(200, json=series_rows))
        r = make_client(prequery_limit=3).get("/fhir/R4/ImagingStudy?bodysite=CHEST")
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"

    def test_head_and_fhir_version_on_search(self, pacs, client):
        _serve(pacs, [], [])
        assert client.head("/fhir/R4/ImagingStudy?modality=CT").status_code == 200
        r = client.get("/fhir/R4/ImagingStudy", headers={"accept": "application/fhir+json; fhirVersion=4.0"})
        assert r.status_code == 200


def _orthanc_1_10(studies):
    """A /studies handler with Debian Orthanc 1.10's paging: with ModalitiesInStudy as a key it takes ``limit``
    matches and then skips ``offset`` of them (shared/docs/orthanc-qido.md TL;DR 3); other keys page correctly."""

    def handler(request):
        params = request.url.params
        limit, offset = int(params.get("limit", len(studies))), int(params.get("offset", 0))
        if "ModalitiesInStudy" in params:
            wanted = set(params["ModalitiesInStudy"].split(","))
            matches = [s for s in studies if wanted & set(s["00080061"]["Value"])]
            return httpx.Response(200, json=matches[:limit][offset:])
        return httpx.Response(200, json=studies[offset : offset + limit])

    return handler


class TestModalityPaging:
    def _pages(self, client, url):
        seen = []
        while url:
            body = client.get(url).json()
            seen += [e["resource"]["id"] for e in body.get("entry", [])]
            url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        return seen

    def test_a_modality_search_reaches_the_last_page_on_orthanc_1_10(self, pacs, client):
        studies = [study_row(f"1.2.3.{i}", modalities=("CT", "KO") if i % 2 else ("MR",)) for i in range(1, 16)]
        pacs.get(url__regex=rf"^{PACS}/studies").mock(side_effect=_orthanc_1_10(studies))
        pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[]))
        seen = self._pages(client, "/fhir/R4/ImagingStudy?modality=KO&_count=2")
        assert seen == [f"1.2.3.{i}" for i in range(1, 16, 2)]  # all 8, in PACS order, once each
        # Each page is asked for from offset 0, one row past its end; other keys keep QIDO's offset.
        studies_calls = [q for q in _paths(pacs) if q.startswith("studies?")]
        assert all("offset=" not in q for q in studies_calls)
        assert [int(q.split("limit=")[1].split("&")[0]) for q in studies_calls] == [3, 5, 7, 9]
        before = len(pacs.calls)
        assert len(self._pages(client, "/fhir/R4/ImagingStudy?started=ge2000&_count=4")) == 15
        assert "offset=4" in [q for q in _paths(pacs)[before:] if q.startswith("studies?")][1]

    def test_a_deep_modality_page_is_too_costly_past_prequery_limit(self, pacs, make_client):
        studies = [study_row(f"1.2.3.{i}") for i in range(1, 10)]
        pacs.get(url__regex=rf"^{PACS}/studies").mock(side_effect=_orthanc_1_10(studies))
        pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[]))
        client = make_client(prequery_limit=5)
        assert client.get("/fhir/R4/ImagingStudy?modality=CT&_count=2&_offset=3").status_code == 200  # 6 rows read
        r = client.get("/fhir/R4/ImagingStudy?modality=CT&_count=2&_offset=4")
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"
        assert client.get("/fhir/R4/ImagingStudy?started=ge2000&_count=2&_offset=6").status_code == 200


class TestCountZero:
    """search.html#count: ``_count=0`` is ``_summary=count``, an exact total and no entries (fhirpy's count())."""

    @pytest.mark.parametrize("version", ["R4", "R5"])
    def test_imaging_study(self, pacs, client, version):
        _serve(pacs, [study_row(f"1.2.3.{i}") for i in range(3)], [])
        body = client.get(f"/fhir/{version}/ImagingStudy?patient.identifier=MRN1&_count=0").json()
        assert body["total"] == 3 and "entry" not in body
        assert [link["relation"] for link in body["link"]] == ["self"]
        assert body["link"][0]["url"].endswith("ImagingStudy?patient.identifier=MRN1&_summary=count&_count=0")
        assert all(q.startswith("studies?") for q in _paths(pacs))  # no instance rows are read to count

    @pytest.mark.parametrize("version", ["R4", "R5"])
    def test_patient(self, pacs, client, version):
        rows = [
            study_row("1.2.3.1", patient_id="A"),
            study_row("1.2.3.2", patient_id="B"),
            study_row("1.2.3.3", patient_id="A"),
        ]
        _serve(pacs, rows, [])
        body = client.get(f"/fhir/{version}/Patient?_count=0").json()
        assert body["total"] == 2 and "entry" not in body
        assert [link["relation"] for link in body["link"]] == ["self"]  # no endless next link of empty pages

    def test_imaging_selection(self, pacs, client):
        images = make_study(8, "count0", patient_id="MRN1", patient_name="Doe^Jane", series_sizes=(1, 1, 1))
        kos = make_kos(images, title=FOR_TEACHING, seed=8)  # three series: three ImagingSelections
        study, series = str(kos.StudyInstanceUID), str(kos.SeriesInstanceUID)
        row = instance_row(study, series, str(kos.SOPInstanceUID), modality="KO")
        row["00080016"] = {"vr": "UI", "Value": [KOS_SOP_CLASS_UID]}
        pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[row]))
        pacs.get(url__regex=rf"^{PACS}/studies/{study}/series/{series}/metadata").mock(
            return_value=httpx.Response(200, json=[kos_json(kos)])
        )
        pacs.get(url__regex=rf"^{PACS}/series").mock(return_value=httpx.Response(200, json=[]))
        body = client.get("/fhir/R5/ImagingSelection?patient.identifier=MRN1&_count=0").json()
        assert body["total"] == 3 and "entry" not in body
        assert [link["relation"] for link in body["link"]] == ["self"]

    def test_count_zero_wins_over_another_summary(self, pacs, client):
        _serve(pacs, [study_row("1.2.3.1")], [])
        body = client.get("/fhir/R4/ImagingStudy?_summary=true&_count=0").json()
        assert body["total"] == 1 and "entry" not in body
