"""The facade against a real Orthanc loaded with generated DICOM: answers compared with the generator's truth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from app.dicom.terminology import BODY_PARTS, LATERALITY, NON_ACQUISITION_MODALITIES
from app.fhir import patient_ids
from app.main import create_app
from app.mapping.names import display
from app.settings import Settings
from tests.support.dataset import Manifest, StudyTruth
from tests.support.fhir_check import check, checking_client

pytestmark = pytest.mark.integration
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture(scope="module")
def facade(orthanc) -> Iterator[TestClient]:
    app = create_app(Settings(auth_mode="open", dicomweb_url=orthanc.dicomweb_url))
    with checking_client(app) as client:
        yield client


def upstream_requests(client: TestClient) -> int:
    """Every request to the PACS: QIDO, and WADO-RS metadata of KOS (rejection notes)."""
    state = client.app.state  # type: ignore[attr-defined]
    return int(state.upstream.requests) + int(state.store.requests)


def search(client: TestClient, query: str, **headers: str) -> dict[str, Any]:
    r = client.get(f"/fhir/R4/ImagingStudy?{query}", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    check(body)
    return body


def uids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"}


def all_pages(client: TestClient, query: str) -> list[str]:
    """Follow next links to the end; returns study ids in page order."""
    seen: list[str] = []
    url: str | None = f"/fhir/R4/ImagingStudy?{query}"
    for _ in range(100):
        assert url is not None
        body = client.get(url).json()
        check(body)
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            return seen
        assert nxt[0].startswith("http://testserver/fhir/R4/ImagingStudy?")
        url = nxt[0]
    raise AssertionError("paging did not end")


def expected_started(study: StudyTruth) -> str | None:
    if not study.study_date:
        return None
    d = f"{study.study_date[:4]}-{study.study_date[4:6]}-{study.study_date[6:]}"
    if not study.study_time or not study.tz_offset:
        return d  # no zone known: the date alone (a time without zone is invalid FHIR)
    t = study.study_time
    clock = f"{t[:2]}:{t[2:4]}:{t[4:6]}" + (f".{t.split('.')[1].ljust(6, '0')}" if "." in t else "")
    return f"{d}T{clock}{study.tz_offset[:3]}:{study.tz_offset[3:]}"


class TestEveryStudy:
    def test_read_matches_the_generated_truth(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        for truth in manifest.studies:
            r = facade.get(f"/fhir/R4/ImagingStudy/{truth.study_uid}")
            assert r.status_code == 200, r.text
            study = r.json()
            check(study)
            assert study["id"] == truth.study_uid
            assert {"system": "urn:dicom:uid", "value": "urn:oid:" + truth.study_uid} in study["identifier"]
            accession = [i["value"] for i in study["identifier"] if i.get("type", {}).get("coding")]
            assert accession == ([truth.accession] if truth.accession else [])
            assert study["status"] == "available"
            acquisition = [m for m in truth.modalities if m not in NON_ACQUISITION_MODALITIES]
            assert sorted(c["code"] for c in study.get("modality", [])) == acquisition
            assert all(c["system"] == DCM for c in study.get("modality", []))
            assert study.get("started") == expected_started(truth)
            assert study["numberOfSeries"] == truth.n_series
            assert study["numberOfInstances"] == truth.n_instances
            assert study.get("description") == (truth.description or None)
            if truth.referrer:
                assert study["referrer"]["display"] == display({"Alphabetic": truth.referrer.split("=")[0]})
            subject = study["subject"]
            assert subject["reference"] == f"Patient/{patient_ids.encode(truth.patient_id, truth.issuer)}"
            assert subject["identifier"]["value"] == truth.patient_id
            assert subject["display"] == display({"Alphabetic": truth.patient_name.split("=")[0]})
            assert study["endpoint"] == [{"reference": "Endpoint/wado-rs"}]
            self._series(study, truth)

    @staticmethod
    def _series(study: dict[str, Any], truth: StudyTruth) -> None:
        got = {s["uid"]: s for s in study["series"]}
        assert set(got) == {s.uid for s in truth.series}
        numbers = [s.get("number") for s in study["series"]]
        assert numbers == sorted(numbers)
        for t in truth.series:
            s = got[t.uid]
            assert s["number"] == t.number
            assert s["modality"] == {"system": DCM, "code": t.modality}
            assert s.get("description") == t.description
            assert s["numberOfInstances"] == len(t.instances)
            if t.body_part:
                code, meaning = BODY_PARTS[t.body_part]
                assert s["bodySite"] == {"system": "http://snomed.info/sct", "code": code, "display": meaning}
            else:
                assert "bodySite" not in s
            if t.laterality:
                assert s["laterality"]["code"] == LATERALITY[t.laterality][0]
            if t.series_date and t.series_time and truth.tz_offset:
                assert s["started"].startswith(f"{t.series_date[:4]}-{t.series_date[4:6]}-{t.series_date[6:]}T")
            instances = [(i["uid"], i["sopClass"]["code"], i.get("number")) for i in s["instance"]]
            assert instances == [
                (i.uid, "urn:oid:" + i.sop_class_uid, i.number) for i in sorted(t.instances, key=lambda i: i.number)
            ]

    def test_paging_with_count_2_visits_every_study_once(self, facade, orthanc):
        seen = all_pages(facade, "_count=2")
        assert len(seen) == len(set(seen))
        assert set(seen) == {s.study_uid for s in orthanc.manifest.studies}

    @pytest.mark.parametrize("count", [1, 5, 13, 100])
    def test_a_page_costs_at_most_three_upstream_requests(self, facade, orthanc, count):
        """The study query, and the instance query in one request, or two at once (instance_query_split = 2)
        for a page of several studies; a page of one small study never splits."""
        before = upstream_requests(facade)
        body = search(facade, f"_count={count}", **{"cache-control": "no-cache"})
        assert len(body["entry"]) == min(count, len(orthanc.manifest.studies))
        assert all(e["resource"].get("series") for e in body["entry"])
        assert upstream_requests(facade) - before <= (2 if count == 1 else 3)

    def test_unknown_study_is_404(self, facade):
        r = facade.get("/fhir/R4/ImagingStudy/1.2.3.999999")
        assert r.status_code == 404
        check(r.json())


class TestPatientSearch:
    def test_each_patient_gets_exactly_their_studies(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        for pid, issuer in manifest.patients:
            fhir_id = patient_ids.encode(pid, issuer)
            want = {s.study_uid for s in manifest.studies_of(pid, issuer)}
            assert uids(search(facade, f"patient=Patient/{fhir_id}")) == want, (pid, issuer)
            assert uids(search(facade, f"subject={fhir_id}")) == want
            assert uids(search(facade, f"patient=http://testserver/fhir/R4/Patient/{fhir_id}")) == want

    def test_shared_patient_id_with_two_issuers(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        both = {s.study_uid for s in manifest.studies if s.patient_id == "SHARED01"}
        hosp_a = {s.study_uid for s in manifest.studies_of("SHARED01", "HOSP-A")}
        assert hosp_a and hosp_a != both
        assert uids(search(facade, "patient.identifier=SHARED01")) == both
        system = quote("urn:x-imaging-facade:issuer:HOSP-A", safe="")
        assert uids(search(facade, f"patient.identifier={system}%7CSHARED01")) == hosp_a
        assert uids(search(facade, f"patient:identifier={system}%7CSHARED01")) == hosp_a

    def test_patient_id_is_case_sensitive(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        upper = {s.study_uid for s in manifest.studies_of("MRN0100")}
        lower = {s.study_uid for s in manifest.studies_of("mrn0100")}
        assert upper and lower
        assert uids(search(facade, "patient.identifier=MRN0100")) == upper
        assert uids(search(facade, "patient.identifier=mrn0100")) == lower

    def test_foreign_patients_match_nothing(self, facade):
        assert not uids(search(facade, "patient=Patient/123"))
        assert not uids(search(facade, "patient=Device/x"))
        assert not uids(search(facade, "patient=http://other.example.org/fhir/Patient/123"))
        assert not uids(search(facade, "patient.identifier=http://unknown.example.org|MRN0100"))


class TestIdentifier:
    def test_study_uid_forms(self, facade, orthanc):
        uid = orthanc.manifest.studies[3].study_uid
        for q in (f"identifier=urn:dicom:uid%7Curn:oid:{uid}", f"identifier=urn:oid:{uid}", f"_id={uid}"):
            assert uids(search(facade, q)) == {uid}, q

    def test_accession_is_exact_and_case_sensitive(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        for acc in ("ACC2001", "acc2001", "ACC4002"):
            want = {s.study_uid for s in manifest.studies if s.accession == acc}
            assert len(want) == 1
            assert uids(search(facade, f"identifier={acc}")) == want

    @pytest.mark.parametrize("value", ["*", "ACC*", "ACC?001", "%2A", "ACC1001%5C", "A%2CB", "ACC%25", "ACC1001%20"])
    def test_metacharacters_never_widen(self, facade, value):
        assert not uids(search(facade, f"identifier={value}"))

    def test_patient_id_metacharacters_never_widen(self, facade, orthanc):
        for value in ("*", "MRN*", "MRN010?", "MRN0100%5C", "M%C3%BCller", "MRN0100%20", "%25", "MRN0100%26x=1"):
            body = search(facade, f"patient.identifier={value}")
            assert not uids(body), value
        # An OR list: the literal value matches, the metacharacter one matches nothing.
        shared = {s.study_uid for s in orthanc.manifest.studies if s.patient_id == "SHARED01"}
        assert uids(search(facade, "patient.identifier=SHARED01,MRN0100*")) == shared


class TestDates:
    def _want(self, manifest: Manifest, lo: str, hi: str) -> set[str]:
        return {s.study_uid for s in manifest.studies if s.study_date and lo <= s.study_date <= hi}

    @pytest.mark.parametrize(
        ("query", "lo", "hi"),
        [
            ("started=2018", "20180101", "20181231"),
            ("started=2021-09", "20210901", "20210930"),
            ("started=ge2020-01-01&started=lt2022-01-01", "20200101", "20211231"),
            ("started=gt2022-06-01", "20220602", "99991231"),
            ("started=le2019-07-08", "00000000", "20190708"),
            ("started=sa2023-01-01", "20230102", "99991231"),
            ("started=eb2019-01-01", "00000000", "20181231"),
        ],
    )
    def test_prefixes(self, facade, orthanc, query, lo, hi):
        assert uids(search(facade, query)) == self._want(orthanc.manifest, lo, hi)

    def test_ne(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        want = {s.study_uid for s in manifest.studies if not (s.study_date or "").startswith("2021")}
        assert uids(search(facade, "started=ne2021")) == want

    def test_exact_datetime_with_zone(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        study = next(s for s in manifest.studies if s.tz_offset == "-0500" and s.study_time == "090000")
        assert uids(search(facade, "started=2021-09-15T09:00:00-05:00")) == {study.study_uid}
        assert uids(search(facade, "started=2021-09-15T14:00:00Z")) == {study.study_uid}
        assert not uids(search(facade, "started=2021-09-15T09:00:00Z"))

    def test_pacs_timezone_gives_dst_correct_offsets(self, orthanc):
        app = create_app(Settings(auth_mode="open", dicomweb_url=orthanc.dicomweb_url, pacs_timezone="Europe/Berlin"))
        manifest: Manifest = orthanc.manifest
        with checking_client(app) as client:
            for truth in manifest.studies:
                if truth.tz_offset or not truth.study_time:
                    continue
                started = client.get(f"/fhir/R4/ImagingStudy/{truth.study_uid}").json()["started"]
                summer = "04" <= truth.study_date[4:6] <= "09"  # type: ignore[index]
                assert started.endswith("+02:00" if summer else "+01:00"), (truth.study_date, started)


class TestSeriesLevel:
    def test_modality(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        ct = {s.study_uid for s in manifest.studies if "CT" in s.modalities}
        mr = {s.study_uid for s in manifest.studies if "MR" in s.modalities}
        assert uids(search(facade, "modality=CT")) == ct
        assert uids(search(facade, f"modality={DCM}%7CMR")) == mr
        assert uids(search(facade, "modality=CT,MR")) == ct | mr
        assert uids(search(facade, "modality=CT&modality=US")) == ct & {
            s.study_uid for s in manifest.studies if "US" in s.modalities
        }
        assert not uids(search(facade, "modality=http://other%7CCT"))

    def test_series_instance_class_bodysite(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        study = manifest.studies[0]
        series = study.series[0]
        assert uids(search(facade, f"series={series.uid}")) == {study.study_uid}
        assert uids(search(facade, f"instance={series.instances[0].uid}")) == {study.study_uid}
        sr = {
            s.study_uid
            for s in manifest.studies
            if any(i.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.11" for i in s.instances)
        }
        assert uids(search(facade, "dicom-class=urn:oid:1.2.840.10008.5.1.4.1.1.88.11")) == sr
        knee = {s.study_uid for s in manifest.studies if any(se.body_part == "KNEE" for se in s.series)}
        assert uids(search(facade, "bodysite=http://snomed.info/sct%7C72696002")) == knee
        assert uids(search(facade, "bodysite=KNEE")) == knee

    def test_status(self, facade, orthanc):
        assert len(uids(search(facade, "status=available&_count=100"))) == len(orthanc.manifest.studies)
        assert not uids(search(facade, "status=cancelled"))


class TestEndpointAndPost:
    def test_include_endpoint_and_wado_rs_retrieve(self, facade, orthanc):
        truth = orthanc.manifest.studies[0]
        body = search(facade, f"_id={truth.study_uid}&_include=ImagingStudy:endpoint")
        endpoint = next(e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Endpoint")
        assert endpoint == facade.get("/fhir/R4/Endpoint/wado-rs").json()
        # The Endpoint really leads a viewer to the images: WADO-RS metadata and one instance, through the gateway
        # (wado_mode = gateway, the default: the address is the facade's own /dicomweb).
        assert endpoint["address"] == "http://testserver/dicomweb"
        series = truth.series[0]
        base = f"/dicomweb/studies/{truth.study_uid}/series/{series.uid}"
        meta = facade.get(f"{base}/metadata")
        assert meta.status_code == 200 and len(meta.json()) == len(series.instances)
        inst = facade.get(
            f"{base}/instances/{series.instances[0].uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert inst.status_code == 200 and b"DICM" in inst.content

    def test_post_search_equals_get(self, facade):
        got = search(facade, "modality=CT&started=ge2019")
        posted = facade.post("/fhir/R4/ImagingStudy/_search", data={"modality": "CT", "started": "ge2019"}).json()
        assert posted == got

    def test_metadata_is_valid(self, facade):
        r = facade.get("/fhir/R4/metadata")
        check(r.json())


class TestPatientRead:
    def test_every_patient_matches_the_truth(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        for pid, issuer in manifest.patients:
            truth = manifest.studies_of(pid, issuer)[0]
            r = facade.get(f"/fhir/R4/Patient/{patient_ids.encode(pid, issuer)}")
            assert r.status_code == 200, (pid, issuer)
            patient = r.json()
            assert patient["identifier"][0]["value"] == pid
            assert patient.get("gender") == {"M": "male", "F": "female", "O": "other"}.get(truth.sex or "")
            bd = truth.birth_date
            assert patient.get("birthDate") == (f"{bd[:4]}-{bd[4:6]}-{bd[6:]}" if bd else None)
            groups = [g for g in truth.patient_name.split("=") if g.strip("^")]
            assert len(patient["name"]) == len(groups)
            assert patient["name"][0]["family"] == groups[0].split("^")[0]

    def test_yamada_has_three_name_representations(self, facade, orthanc):
        r = facade.get(f"/fhir/R4/Patient/{patient_ids.encode('JP0002', None)}").json()
        assert [n["text"] for n in r["name"]] == ["Tarou Yamada", "山田 太郎", "やまだ たろう"]


class TestSummaryAndIncludes:
    def test_summary_true_has_series_but_no_instances(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        before = upstream_requests(facade)
        body = search(facade, "modality=CT&_summary=true", **{"cache-control": "no-cache"})
        assert upstream_requests(facade) - before == 2
        for entry in body["entry"]:
            study = entry["resource"]
            truth = manifest.study(study["id"])
            assert study["meta"]["tag"][0]["code"] == "SUBSETTED"
            assert {s["uid"] for s in study["series"]} == {s.uid for s in truth.series}
            assert all("instance" not in s for s in study["series"])
            assert sorted(s["numberOfInstances"] for s in study["series"]) == sorted(
                len(s.instances) for s in truth.series
            )
        assert "_summary=true" in body["link"][0]["url"]

    def test_summary_count_is_an_honest_total(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        for query, want in [
            ("modality=CT", sum("CT" in s.modalities for s in manifest.studies)),
            ("patient.identifier=SHARED01", sum(s.patient_id == "SHARED01" for s in manifest.studies)),
            ("bodysite=KNEE", sum(any(se.body_part == "KNEE" for se in s.series) for s in manifest.studies)),
            ("identifier=*", 0),
        ]:
            body = search(facade, f"{query}&_summary=count")
            assert body["total"] == want and "entry" not in body, query

    def test_include_patient(self, facade, orthanc):
        body = search(facade, "patient.identifier=SHARED01&_include=ImagingStudy:patient")
        patients = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "include"]
        assert sorted(p["id"] for p in patients) == sorted(
            patient_ids.encode("SHARED01", issuer) for issuer in ("HOSP-A", "HOSP-B")
        )
        studies = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "match"]
        assert {s["subject"]["reference"] for s in studies} == {f"Patient/{p['id']}" for p in patients}


class TestNarrative:
    def test_every_study_and_patient_has_a_generated_narrative(self, facade, orthanc):
        body = search(facade, "_count=100&_include=ImagingStudy:patient")
        for entry in body["entry"]:
            text = entry["resource"]["text"]
            assert text["status"] == "generated" and text["div"].startswith(
                '<div xmlns="http://www.w3.org/1999/xhtml">'
            )
        data = search(facade, "_count=100&_summary=data")
        assert all("text" not in e["resource"] for e in data["entry"])
        assert all(e["resource"]["meta"]["tag"][0]["code"] == "SUBSETTED" for e in data["entry"])


class TestSortAndTotal:
    def _started(self, body):
        return [e["resource"].get("started") for e in body.get("entry", [])]

    @pytest.mark.parametrize("descending", [False, True])
    def test_sort_by_started_across_pages(self, facade, orthanc, descending):
        manifest: Manifest = orthanc.manifest
        sort = "-started" if descending else "started"
        seen: list[str] = []
        url: str | None = f"/fhir/R4/ImagingStudy?_sort={sort}&_count=4"
        while url:
            body = facade.get(url).json()
            seen += [e["resource"]["id"] for e in body.get("entry", [])]
            url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        dates = [manifest.study(uid).study_date for uid in seen]
        assert len(seen) == len(manifest.studies) and dates == sorted(dates, reverse=descending)

    def test_total_accurate(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        body = search(facade, "modality=CT&_total=accurate&_count=1")
        assert body["total"] == sum("CT" in s.modalities for s in manifest.studies)
        assert len(body["entry"]) == 1
        assert "total" not in search(facade, "modality=CT&_count=1")


class TestElementsAndEndpointParam:
    def test_elements(self, facade, orthanc):
        body = search(facade, "_elements=started,modality&_count=3")
        for entry in body["entry"]:
            study = entry["resource"]
            assert set(study) == {"resourceType", "id", "meta", "status", "subject", "started", "modality"} - (
                set() if "modality" in study else {"modality"}
            )
            assert study["meta"]["tag"][0]["code"] == "SUBSETTED"

    def test_endpoint_parameter(self, facade, orthanc):
        every = {s.study_uid for s in orthanc.manifest.studies}
        assert uids(search(facade, "endpoint=Endpoint/wado-rs&_count=100")) == every
        assert not uids(search(facade, "endpoint=Endpoint/elsewhere"))


class TestModifiersAndReferrer:
    def test_modality_not(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        want = {s.study_uid for s in manifest.studies if "CT" not in s.modalities}
        assert uids(search(facade, "modality:not=CT&_count=100")) == want

    def test_missing(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        with_referrer = {s.study_uid for s in manifest.studies if s.referrer}
        assert with_referrer
        assert uids(search(facade, "referrer:missing=false&_count=100")) == with_referrer
        assert (
            uids(search(facade, "referrer:missing=true&_count=100"))
            == {s.study_uid for s in manifest.studies} - with_referrer
        )
        assert not uids(search(facade, "identifier:missing=true"))
        assert len(uids(search(facade, "started:missing=false&_count=100"))) == len(manifest.studies)

    def test_referrer_name_starts_with_any_part_ignoring_case_and_accents(self, facade, orthanc):
        manifest: Manifest = orthanc.manifest
        for study in manifest.studies:
            if not study.referrer:
                continue
            family = study.referrer.split("^")[0]
            want = {s.study_uid for s in manifest.studies if s.referrer and s.referrer.split("^")[0] == family}
            prefix = family[:3].lower()
            got = uids(search(facade, f"referrer.name={quote(prefix)}&_count=100"))
            assert want <= got, (family, prefix)
        assert not uids(search(facade, "referrer=Practitioner/123"))

    def test_referrer_name_accents_and_case(self, facade, orthanc):
        want = {s.study_uid for s in orthanc.manifest.studies if s.referrer == "Pérez^Luis"}
        assert want
        assert uids(search(facade, "referrer.name=perez&_count=100")) == want
        assert uids(search(facade, "referrer.name=LUIS&_count=100")) == want
        assert uids(search(facade, f"referrer.name:exact={quote('Pérez')}&_count=100")) == want
        assert not uids(search(facade, "referrer.name:exact=perez&_count=100"))
        assert uids(search(facade, "referrer.name:contains=EREZ&_count=100")) == want


def test_summary_text(facade):
    body = search(facade, "_summary=text&_count=3")
    for entry in body["entry"]:
        study = entry["resource"]
        assert set(study) == {"resourceType", "id", "meta", "status", "subject", "text"}
        assert study["meta"]["tag"][0]["code"] == "SUBSETTED"
