"""Several archives behind one base (issue 21), against three live Orthancs (tests/support/federation.py).

The oracle for searches is a fourth Orthanc holding the union of the three, every row with its patient domain
written out (IssuerOfPatientID), behind a one-PACS facade: what the three-archive facade answers, followed page by
page to the end, must be what the one-PACS facade answers over the union in one page, resource for resource, and
the study UIDs what the data's ground truth says.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.settings import Settings
from app.source_settings import SourceSettings
from tests.support.facade import FacadeProcess
from tests.support.fault_proxy import FaultProxy
from tests.support.federation import (
    COLLIDE_ID,
    PAGE_PATIENT,
    SHARED_PATIENT,
    SPLIT_STUDY,
    XREF_NORTH,
    XREF_SOUTH,
    Federation,
)
from tests.support.fhir_check import checking_client
from tests.support.orthanc import OrthancServer, store
from tests.support.pixm import PixmServer

pytestmark = pytest.mark.integration
R4 = "/fhir/R4"
SCT = "http://snomed.info/sct"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _settings(federation: Federation, urls: dict[str, str] | None = None, **overrides: Any) -> Settings:
    sources = tuple(SourceSettings(**entry) for entry in federation.settings(urls))
    base: dict[str, Any] = {
        "sources": sources,
        "auth_mode": "open",
        "issuer_systems": federation.manifest.issuer_systems,
        "cache_ttl": 60.0,
        "upstream_retries": 0,
    }
    return Settings(**(base | overrides))


@pytest.fixture(scope="module")
def union(federation: Federation) -> Iterator[OrthancServer]:
    """The oracle: every archive's instances in one Orthanc, each row's domain written out."""
    with OrthancServer() as server:
        datasets: list[Dataset] = []
        for source in federation.sources:
            for ds in source.datasets:
                ds = copy.deepcopy(ds)
                if not getattr(ds, "IssuerOfPatientID", None):
                    ds.IssuerOfPatientID = source.issuer
                datasets.append(ds)
        store(server.dicomweb_url, datasets)
        yield server


@pytest.fixture(scope="module")
def client(federation: Federation) -> Iterator[TestClient]:
    with checking_client(create_app(_settings(federation))) as c:
        yield c


@pytest.fixture(scope="module")
def oracle(federation: Federation, union: OrthancServer) -> Iterator[TestClient]:
    settings = Settings(
        dicomweb_url=union.dicomweb_url, auth_mode="open", issuer_systems=federation.manifest.issuer_systems
    )
    with checking_client(create_app(settings)) as c:
        yield c


def _pid(federation: Federation, patient_id: str, domain: str) -> str:
    return patient_ids.encode(patient_id, domain)


def _walk(client: TestClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Every match of every page, following ``next`` to the end; and the number of pages."""
    found: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        r = client.get(next_url)
        assert r.status_code == 200, f"{next_url}: {r.status_code} {r.text[:300]}"
        bundle = r.json()
        assert not [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"], next_url
        found += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        next_url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
        assert pages < 100, url
    return found, pages


def _cases(federation: Federation) -> list[tuple[str, str, frozenset[str]]]:
    """(parameter, query, the study UIDs the data says match): every ImagingStudy search parameter."""
    m = federation.manifest
    studies = m.studies()
    every = frozenset(s.study_uid for s in studies)

    def where(test: Any) -> frozenset[str]:
        return frozenset(s.study_uid for s in studies if test(s))

    page = m.studies_of(PAGE_PATIENT, "NORTH")
    page_uids = frozenset(s.study_uid for s in page)
    split = m.study(m.uid_of(SPLIT_STUDY))
    shared_series = sorted(split.series_in("north") & split.series_in("south"))[0]
    an_instance = sorted(m.study(page[0].study_uid).instance_uids)[0]
    north_page = _pid(federation, PAGE_PATIENT, "NORTH")
    north_collide = _pid(federation, COLLIDE_ID, "NORTH")
    system = m.system_of("NORTH")
    accessions = ("N4001", "S4001", "E4002")
    before_2021 = frozenset(s.study_uid for s in page if (s.study_date or "9") < "20210101")
    ct_or_mr = frozenset(s.study_uid for s in page if {"CT", "MR"} & set(s.modalities))
    referred = where(lambda s: (s.truth.referrer or "").split("^")[0] in ("Grey", "Suzuki"))
    return [
        ("_id", "_id=" + ",".join(sorted(page_uids)), page_uids),
        ("identifier", "identifier=" + ",".join(accessions), where(lambda s: s.truth.accession in accessions)),
        ("patient", f"patient={north_page}", page_uids),
        ("patient", f"patient={north_collide}", frozenset(s.study_uid for s in m.studies_of(COLLIDE_ID, "NORTH"))),
        ("patient", f"patient.identifier={system}|{PAGE_PATIENT}", page_uids),
        ("subject", f"subject=Patient/{north_page}", page_uids),
        ("started", "started=ge2019-01-01", where(lambda s: (s.study_date or "") >= "20190101")),
        ("started", f"started=lt2021-01-01&patient={north_page}", before_2021),
        ("modality", "modality=CR", where(lambda s: "CR" in s.modalities)),
        ("modality", f"modality=CT,MR&patient={north_page}", ct_or_mr),
        ("series", f"series={shared_series}", frozenset({split.study_uid})),
        ("instance", f"instance={an_instance}", frozenset({page[0].study_uid})),
        ("dicom-class", f"dicom-class={CT_IMAGE_STORAGE}", where(lambda s: "CT" in s.modalities)),
        ("bodysite", "bodysite=KNEE", where(lambda s: any(se.body_part == "KNEE" for se in s.series))),
        ("referrer", "referrer.name=Grey,Suzuki", referred),
        ("endpoint", "endpoint=Endpoint/wado-rs", every),
        ("status", "status=available", every),
    ]  # fmt: skip


def test_every_search_parameter_has_a_case(federation, client):
    listed = {
        p["name"]
        for r in client.get(f"{R4}/metadata").json()["rest"][0]["resource"]
        if r["type"] == "ImagingStudy"
        for p in r.get("searchParam", [])
    }
    assert listed <= {name for name, _, _ in _cases(federation)}


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_criterion_followed_to_its_last_page_across_archives(federation, client, oracle, count):
    for name, query, truth in _cases(federation):
        paged, _ = _walk(client, f"{R4}/ImagingStudy?{query}&_count={count}")
        ids = [r["id"] for r in paged]
        assert len(ids) == len(set(ids)), f"{name} {query}: a study twice"
        assert set(ids) == truth, f"{name} {query} _count={count}"
        whole, _ = _walk(oracle, f"{R4}/ImagingStudy?{query}&_count=100")
        by_id = {r["id"]: r for r in whole}
        assert by_id.keys() == set(ids), f"{name} {query}: the union archive says otherwise"
        for resource in paged:
            assert resource == by_id[resource["id"]], f"{name} {query}: {resource['id']} differs from the union"


def test_totals_sorting_counts_includes_and_summaries_as_with_one_archive(federation, client, oracle):
    import json

    page = _pid(federation, PAGE_PATIENT, "NORTH")
    for query in (
        f"patient={page}&_total=accurate",
        f"patient={page}&_sort=-started",
        "_sort=started&_count=4&_offset=4",
        "_summary=count",
        f"patient={page}&_include=ImagingStudy:patient&_include=ImagingStudy:endpoint",
        f"patient={page}&_summary=true",
        "modality=MR&_elements=started,modality",
    ):
        mine, theirs = client.get(f"{R4}/ImagingStudy?{query}").json(), oracle.get(f"{R4}/ImagingStudy?{query}").json()
        assert mine.get("total") == theirs.get("total"), query
        if "_sort" in query:  # an order of its own: the same
            assert [e["fullUrl"] for e in mine["entry"]] == [e["fullUrl"] for e in theirs["entry"]], query
        entries = [sorted(json.dumps(e, sort_keys=True) for e in b.get("entry", [])) for b in (mine, theirs)]
        assert entries[0] == entries[1], query


def test_a_study_in_two_archives_is_one_with_the_union_of_series(federation, client):
    m = federation.manifest
    split = m.study(m.uid_of(SPLIT_STUDY))
    study = client.get(f"{R4}/ImagingStudy/{split.study_uid}").json()
    assert {s["uid"] for s in study["series"]} == split.series_uids
    assert {i["uid"] for s in study["series"] for i in s["instance"]} == split.instance_uids
    assert study["numberOfSeries"] == split.n_series and study["numberOfInstances"] == split.n_instances


def test_two_people_sharing_a_patient_id_stay_two(federation, client):
    north = client.get(f"{R4}/Patient/{_pid(federation, COLLIDE_ID, 'NORTH')}").json()
    east = client.get(f"{R4}/Patient/{_pid(federation, COLLIDE_ID, 'EAST')}").json()
    assert north["name"][0]["family"] != east["name"][0]["family"]
    people = client.get(f"{R4}/Patient", params={"identifier": COLLIDE_ID}).json()
    assert people["total"] == 2


def test_a_study_sent_from_north_to_south_is_norths_patients(federation, client):
    shared = _pid(federation, SHARED_PATIENT, "NORTH")
    found, _ = _walk(client, f"{R4}/ImagingStudy?patient={shared}")
    expected = {s.study_uid for s in federation.manifest.studies_of(SHARED_PATIENT, "NORTH")}
    assert {r["id"] for r in found} == expected and len(expected) == 3


def test_pixm_brings_the_persons_studies_from_the_other_domain(federation):
    m = federation.manifest
    with (
        PixmServer(m.pix_persons()) as pixm,
        checking_client(create_app(_settings(federation, pixm_url=pixm.base))) as c,
    ):
        north = _pid(federation, XREF_NORTH, "NORTH")
        found, _ = _walk(c, f"{R4}/ImagingStudy?patient={north}")
        expected = {s.study_uid for s in m.studies_of(XREF_NORTH, "NORTH") + m.studies_of(XREF_SOUTH, "SOUTH")}
        assert {r["id"] for r in found} == expected and len(expected) == 2
        assert {r["subject"]["reference"] for r in found} == {f"Patient/{north}"}
        by_south, _ = _walk(c, f"{R4}/ImagingStudy?patient.identifier={m.system_of('SOUTH')}|{XREF_SOUTH}")
        assert {r["id"] for r in by_south} == expected
        asked = pixm.requests
        _walk(c, f"{R4}/ImagingStudy?patient={north}&_count=1")
        assert pixm.requests == asked  # cached
        pixm.set_mode("error")
        kept = c.get(f"{R4}/ImagingStudy", params={"patient": north, "_count": 2})
        assert kept.status_code == 200  # a cross-reference made before is kept for cache_ttl
        for params, headers in (
            ({"patient": north}, {"Cache-Control": "no-cache"}),  # no-cache asks the manager again
            ({"patient.identifier": f"{m.system_of('NORTH')}|{PAGE_PATIENT}"}, {}),  # not asked before
        ):
            r = c.get(f"{R4}/ImagingStudy", params=params, headers=headers)
            assert r.status_code == 502 and "127.0.0.1" not in r.text and "cross-reference" in r.text


@pytest.mark.parametrize("mode", ["refuse", "hang", "garbage"])
def test_a_failing_archive_costs_its_budget_and_is_named(federation, mode):
    south = federation.source("south")
    with FaultProxy(south.dicomweb_url) as proxy:
        settings = _settings(federation, {"south": proxy.dicomweb_url})
        budget = 1.5
        sources = tuple(
            s if s.name != "south" else SourceSettings(**{**s.__dict__, "upstream_budget": budget})
            for s in settings.sources
        )
        settings = Settings(**{**settings.__dict__, "sources": sources})
        with checking_client(create_app(settings)) as c:
            shared = _pid(federation, SHARED_PATIENT, "NORTH")
            everything = {s.study_uid for s in federation.manifest.studies_of(SHARED_PATIENT, "NORTH")}
            assert {r["id"] for r in _walk(c, f"{R4}/ImagingStudy?patient={shared}")[0]} == everything
            proxy.set_mode(mode)
            started = time.monotonic()
            r = c.get(f"{R4}/ImagingStudy", params={"patient": shared}, headers={"Cache-Control": "no-cache"})
            elapsed = time.monotonic() - started
            assert r.status_code == 200
            bundle = r.json()
            held_elsewhere = {
                s.study_uid for s in federation.manifest.studies_of(SHARED_PATIENT, "NORTH") if "north" in s.sources
            }
            assert {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"} == held_elsewhere
            (outcome,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
            assert outcome["issue"][0]["code"] == "incomplete" and "'south'" in outcome["issue"][0]["diagnostics"]
            assert str(proxy.port) not in r.text
            assert elapsed < budget + 1.0  # the hung archive costs its budget, not more
            strict = c.get(
                f"{R4}/ImagingStudy",
                params={"patient": shared},
                headers={"Cache-Control": "no-cache", "Prefer": "handling=strict"},
            )
            assert strict.status_code in (503, 504)
            only_south = federation.manifest.studies_of(SHARED_PATIENT, "NORTH")
            south_only = next(s.study_uid for s in only_south if s.sources == ("south",))
            read = c.get(f"{R4}/ImagingStudy/{south_only}", headers={"Cache-Control": "no-cache"})
            assert read.status_code == 503 and read.headers["Retry-After"]
            proxy.set_mode("pass")
            time.sleep(0.1)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:  # the breaker lets a probe through within its reset time
                r = c.get(f"{R4}/ImagingStudy", params={"patient": shared}, headers={"Cache-Control": "no-cache"})
                if not [e for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]:
                    break
                time.sleep(0.5)
            assert {e["resource"]["id"] for e in r.json()["entry"]} == everything


def test_clients_over_http_dicomweb_client_and_fhirpy(federation, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    from fhirpy import SyncFHIRClient

    m = federation.manifest
    env = {"FACADE_DICOMWEB_URL": "", "FACADE_SOURCES": _sources_json(federation)}
    env["FACADE_ISSUER_SYSTEMS"] = _json(m.issuer_systems)
    with FacadeProcess("", env=env, log=tmp_path / "facade.log") as facade:
        fhir = SyncFHIRClient(facade.base)
        page = _pid(federation, PAGE_PATIENT, "NORTH")
        seen = []
        search = fhir.resources("ImagingStudy").search(patient=page).limit(2)
        for study in search:  # fhirpy follows every next link
            seen.append(study["id"])
        assert sorted(seen) == sorted(s.study_uid for s in m.studies_of(PAGE_PATIENT, "NORTH"))
        split = m.study(m.uid_of(SPLIT_STUDY))
        study = fhir.reference("ImagingStudy", split.study_uid).to_resource()
        endpoint = fhir.reference("Endpoint", "wado-rs").to_resource()
        assert study["id"] == split.study_uid
        wado = DICOMwebClient(url=endpoint["address"])
        retrieved = wado.retrieve_study(split.study_uid)
        stored = {
            ds.SOPInstanceUID: ds
            for source in federation.sources
            for ds in source.datasets
            if ds.StudyInstanceUID == split.study_uid
        }
        assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(stored)
        for ds in retrieved:
            assert ds.PixelData == stored[ds.SOPInstanceUID].PixelData
        metadata = wado.retrieve_study_metadata(split.study_uid)
        assert sorted(d["00080018"]["Value"][0] for d in metadata) == sorted(stored)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _sources_json(federation: Federation) -> str:
    return _json(federation.settings())


def test_a_manifest_is_stored_where_its_study_is(federation):
    m = federation.manifest
    page_s = next(s for s in m.studies_of(PAGE_PATIENT, "NORTH") if s.sources == ("south",))
    series = sorted(page_s.series_uids)[0]
    with checking_client(create_app(_settings(federation))) as c:
        study = c.get(f"{R4}/ImagingStudy/{page_s.study_uid}").json()
        instance = next(s for s in study["series"] if s["uid"] == series)["instance"][0]["uid"]
        body = {
            "resourceType": "ImagingSelection",
            "status": "available",
            "subject": {"reference": study["subject"]["reference"]},
            "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "113000"}]},
            "studyUid": page_s.study_uid,
            "seriesUid": series,
            "instance": [{"uid": instance}],
        }
        created = c.post("/fhir/R5/ImagingSelection", json=body, headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201, created.text
        for source in federation.sources:
            rows = httpx.get(f"{source.dicomweb_url}/studies/{page_s.study_uid}/series", params={"Modality": "KO"})
            held = rows.status_code == 200 and bool(rows.content.strip()) and rows.json()
            assert bool(held) == (source.name == "south"), source.name
        found = c.get("/fhir/R5/ImagingSelection", params={"patient": study["subject"]["reference"]}).json()
        assert any(e["resource"]["studyUid"] == page_s.study_uid for e in found.get("entry", []))


def test_the_ehr_link_asks_every_domain_the_ehr_patient_has_an_identifier_in(federation):
    from tests.support.ehr import MR, EhrProcess

    m = federation.manifest
    person = {
        "resourceType": "Patient",
        "id": "ehr-7",
        "identifier": [
            {"type": MR, "system": m.system_of("NORTH"), "value": XREF_NORTH},  # the MRN
            {"system": m.system_of("SOUTH"), "value": XREF_SOUTH},  # the same person in the south's domain
            {"system": "http://ehr.example.org/national-id", "value": "N-7"},  # no archive's domain: not asked
        ],
    }
    with (
        EhrProcess({"ehr-7": person}, token="t") as ehr,
        checking_client(create_app(_settings(federation, ehr_fhir_url=ehr.base, ehr_token="t"))) as c,
    ):
        found, _ = _walk(c, f"{R4}/ImagingStudy?patient=ehr-7")
        expected = {s.study_uid for s in m.studies_of(XREF_NORTH, "NORTH") + m.studies_of(XREF_SOUTH, "SOUTH")}
        assert {r["id"] for r in found} == expected and len(expected) == 2
        assert {r["subject"]["reference"] for r in found} == {"Patient/ehr-7"}


def test_manifests_and_rejection_notes_of_every_archive(federation):
    """A KOS stored in the east archive selects an instance of a study held by north; an IOCM rejection note stored
    in south rejects another instance north holds: both are seen through one base (the notes carry north's issuer,
    as documents made at north and sent elsewhere do)."""
    from tests.support.kos import FOR_TEACHING, REJECTIONS, make_kos

    m = federation.manifest
    split = m.study(m.uid_of(SPLIT_STUDY))
    north = {ds.SOPInstanceUID: ds for ds in federation.source("north").datasets}
    only_north = sorted(
        sop
        for sop, ds in north.items()
        if ds.StudyInstanceUID == split.study_uid and ds.SeriesInstanceUID not in split.series_in("south")
    )
    chosen, rejected = north[only_north[0]], north[only_north[1]]
    kos = make_kos([chosen], title=FOR_TEACHING, seed=21)
    note = make_kos([rejected], title=REJECTIONS[0], seed=22)
    for ds in (kos, note):
        ds.IssuerOfPatientID = "NORTH"
    store(federation.source("east").dicomweb_url, [kos])
    store(federation.source("south").dicomweb_url, [note])
    patient = _pid(federation, split.patient_id, "NORTH")
    fresh = {"Cache-Control": "no-cache"}
    try:
        with checking_client(create_app(_settings(federation))) as c:
            selections = c.get("/fhir/R5/ImagingSelection", params={"patient": patient}, headers=fresh).json()
            selected = {i["uid"] for e in selections.get("entry", []) for i in e["resource"].get("instance", [])}
            assert chosen.SOPInstanceUID in selected
            documents = c.get(f"{R4}/DocumentReference", params={"patient": patient}, headers=fresh).json()
            assert documents.get("entry"), "the KOS in east as a MADO DocumentReference"
            study = c.get(f"{R4}/ImagingStudy/{split.study_uid}", headers=fresh).json()
            shown = {i["uid"] for s in study["series"] for i in s.get("instance", [])}
            assert rejected.SOPInstanceUID not in shown and chosen.SOPInstanceUID in shown
    finally:
        for name, ds in (("east", kos), ("south", note)):
            url = federation.source(name).url
            for found in httpx.post(f"{url}/tools/lookup", content=ds.SOPInstanceUID).json():
                httpx.delete(f"{url}/instances/{found['ID']}")


@pytest.mark.parametrize(
    "query",
    ["name=Haddad", "family=Dvo", "birthdate=ge1960-01-01", f"identifier={COLLIDE_ID}", "gender=female", ""],
)
def test_patient_searches_across_archives_equal_the_union(federation, client, oracle, query):
    """Patients are the distinct (PatientID, domain) pairs of every archive's study rows, each once."""
    paged, _ = _walk(client, f"{R4}/Patient?{query}&_count=1")
    whole, _ = _walk(oracle, f"{R4}/Patient?{query}&_count=100")
    ids = [r["id"] for r in paged]
    assert len(ids) == len(set(ids)) and ids
    assert sorted(ids) == sorted(r["id"] for r in whole)
    by_id = {r["id"]: r for r in whole}
    for resource in paged:
        assert resource == by_id[resource["id"]], query
