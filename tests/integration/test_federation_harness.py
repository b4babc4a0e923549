"""The multi-source harness itself: three Orthancs hold what the federation manifest says, the fault proxy's modes
behave, and the PIXm test server answers per ITI-83. Checked with plain QIDO-RS (httpx), no facade.

Query URLs are written as one string: Orthanc 1.10 does not percent-decode query values (see test_orthanc_harness).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.fault_proxy import GARBAGE_BODY, FaultProxy
from tests.support.federation import (
    COLLIDE_ID,
    NATIONAL_SYSTEM,
    PAGE_PATIENT,
    SHARED_PATIENT,
    SOURCES,
    SPLIT_PATIENT,
    SPLIT_STUDY,
    SYSTEMS,
    XREF_NORTH,
    XREF_SOUTH,
    FederationManifest,
    build_federation_data,
)
from tests.support.pixm import PixmServer

if TYPE_CHECKING:
    from tests.support.federation import Federation

pytestmark = pytest.mark.integration

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
PATIENT_ID = "00100020"
ISSUER = "00100021"
PATIENT_NAME = "00100010"
BIRTH_DATE = "00100030"
ACCESSION = "00080050"
STUDY_DESCRIPTION = "00081030"
N_STUDY_INSTANCES = "00201208"
MODALITIES = "00080061"


def qido(base: str, path_and_query: str) -> list[dict[str, Any]]:
    response = httpx.get(base + path_and_query, timeout=10)
    assert response.status_code in (200, 204), response.text
    rows: list[dict[str, Any]] = response.json() if response.content else []
    return rows


def value(row: dict[str, Any], tag: str) -> Any:
    found = row.get(tag, {}).get("Value", [])
    return found[0] if found else None


def uids(rows: list[dict[str, Any]], tag: str = STUDY_UID) -> set[str]:
    return {value(row, tag) for row in rows}


@pytest.fixture(scope="module")
def manifest() -> FederationManifest:
    return build_federation_data()[1]


class TestManifest:
    """The data has the cases the brief asks for (no Orthanc needed, but skipped with the others without one)."""

    def test_same_seed_same_data(self) -> None:
        first, m1 = build_federation_data()
        second, m2 = build_federation_data()
        assert m1 == m2
        assert {k: [ds.SOPInstanceUID for ds in v] for k, v in first.items()} == {
            k: [ds.SOPInstanceUID for ds in v] for k, v in second.items()
        }

    def test_sources_and_size(self, manifest: FederationManifest) -> None:
        assert tuple((s.name, s.issuer) for s in manifest.sources) == SOURCES
        assert manifest.issuer_systems == {issuer: SYSTEMS[issuer] for _, issuer in SOURCES}
        copies = manifest.copies()
        assert 10 <= len(copies) <= 20
        assert sum(c.study.n_instances for c in copies) <= 60
        for c in copies:
            assert 1 <= c.study.n_series <= 3
            assert all(1 <= len(se.instances) <= 4 for se in c.study.series)

    def test_most_rows_carry_no_issuer(self, manifest: FederationManifest) -> None:
        stored = Counter(c.study.issuer for c in manifest.copies())
        assert stored[None] > sum(n for issuer, n in stored.items() if issuer is not None)
        assert set(stored) == {None, "NORTH"}

    def test_a_shared_patient(self, manifest: FederationManifest) -> None:
        studies = manifest.studies_of(SHARED_PATIENT, "NORTH")
        assert [s.sources for s in studies].count(("north",)) == 2
        assert [s.sources for s in studies].count(("south",)) == 1
        south = manifest.source("south").studies_of(SHARED_PATIENT, "NORTH")
        assert [s.issuer for s in south] == ["NORTH"]
        assert all(s.issuer is None for s in manifest.source("north").studies_of(SHARED_PATIENT, "NORTH"))
        assert manifest.studies_of(SHARED_PATIENT, "SOUTH") == []

    def test_b_split_study(self, manifest: FederationManifest) -> None:
        split = manifest.study(manifest.uid_of(SPLIT_STUDY))
        assert split.sources == ("north", "south")
        assert (split.patient_id, split.domain) == (SPLIT_PATIENT, "NORTH")
        north, south = split.series_in("north"), split.series_in("south")
        assert north - south and south - north and north & south
        assert split.series_uids == north | south == manifest.series_union(split.study_uid)
        assert len(split.series_uids) == 3
        assert split.modalities == ["CR", "CT"]
        [shared_series] = north & south
        n_copy = manifest.source("north").study(split.study_uid)
        s_copy = manifest.source("south").study(split.study_uid)
        assert [se for se in n_copy.series if se.uid == shared_series] == [
            se for se in s_copy.series if se.uid == shared_series
        ]
        assert (n_copy.issuer, s_copy.issuer) == (None, "NORTH")
        assert split.n_instances == len(manifest.instance_union(split.study_uid)) == 6

    def test_c_collision(self, manifest: FederationManifest) -> None:
        [north] = manifest.studies_of(COLLIDE_ID, "NORTH")
        [east] = manifest.studies_of(COLLIDE_ID, "EAST")
        assert (north.sources, east.sources) == (("north",), ("east",))
        assert north.patient_name != east.patient_name
        assert north.truth.birth_date != east.truth.birth_date
        assert manifest.studies_of(COLLIDE_ID, "SOUTH") == []

    def test_d_paging_patient(self, manifest: FederationManifest) -> None:
        studies = manifest.studies_of(PAGE_PATIENT, "NORTH")
        assert Counter(s.sources for s in studies) == {("north",): 3, ("south",): 2, ("east",): 2}
        dates = [s.study_date or "" for s in studies]
        assert dates == sorted(dates, reverse=True) and len(set(dates)) == 7
        assert {m for s in studies for m in s.modalities} == {"CT", "MR", "US", "CR"}
        names = {s.patient_name for s in studies}
        assert names == {"Dvořák^Zoë^Marie"}
        assert any(s.truth.accession is None and s.truth.description == "" for s in studies)
        assert any(s.truth.description is None for s in studies)

    def test_e_cross_referenced_person(self, manifest: FederationManifest) -> None:
        assert [s.sources for s in manifest.studies_of(XREF_NORTH, "NORTH")] == [("north",)]
        assert [s.sources for s in manifest.studies_of(XREF_SOUTH, "SOUTH")] == [("south",)]
        person = next(p for p in manifest.pix_persons() if (SYSTEMS["NORTH"], XREF_NORTH) in p)
        assert (SYSTEMS["SOUTH"], XREF_SOUTH) in person


class TestSources:
    """Each Orthanc holds exactly its part."""

    @pytest.mark.parametrize("name", [name for name, _ in SOURCES])
    def test_studies_series_instances(self, federation: Federation, name: str) -> None:
        source = federation.source(name)
        truth = federation.manifest.source(name)
        rows = qido(source.dicomweb_url, f"/studies?includefield={N_STUDY_INSTANCES}")
        assert uids(rows) == truth.study_uids
        counts = {value(row, STUDY_UID): int(value(row, N_STUDY_INSTANCES)) for row in rows}
        assert counts == {s.study_uid: s.n_instances for s in truth.studies}
        for study in truth.studies:
            series = qido(source.dicomweb_url, f"/studies/{study.study_uid}/series")
            assert uids(series, SERIES_UID) == {se.uid for se in study.series}
            instances = qido(source.dicomweb_url, f"/studies/{study.study_uid}/instances")
            assert uids(instances, SOP_UID) == {i.uid for i in study.instances}

    @pytest.mark.parametrize("name", [name for name, _ in SOURCES])
    def test_issuer_explicit_where_stated(self, federation: Federation, name: str) -> None:
        source = federation.source(name)
        truth = federation.manifest.source(name)
        rows = qido(source.dicomweb_url, f"/studies?includefield={ISSUER}")
        stored = {value(row, STUDY_UID): value(row, ISSUER) for row in rows}
        assert stored == {s.study_uid: s.issuer for s in truth.studies}
        explicit = qido(source.dicomweb_url, "/studies?IssuerOfPatientID=NORTH")
        assert uids(explicit) == truth.explicit_issuer_uids

    def test_split_study_in_both(self, federation: Federation) -> None:
        split = federation.manifest.study(federation.manifest.uid_of(SPLIT_STUDY))
        seen: set[str] = set()
        for name in ("north", "south"):
            rows = qido(federation.source(name).dicomweb_url, f"/studies/{split.study_uid}/series")
            assert uids(rows, SERIES_UID) == split.series_in(name)
            seen |= uids(rows, SERIES_UID)
        assert seen == split.series_uids
        assert qido(federation.source("east").dicomweb_url, f"/studies?StudyInstanceUID={split.study_uid}") == []

    def test_collision_two_people(self, federation: Federation) -> None:
        query = f"/studies?PatientID={COLLIDE_ID}&includefield={BIRTH_DATE}"
        [north] = qido(federation.source("north").dicomweb_url, query)
        [east] = qido(federation.source("east").dicomweb_url, query)
        assert value(north, PATIENT_NAME) != value(east, PATIENT_NAME)
        assert value(north, BIRTH_DATE) != value(east, BIRTH_DATE)
        assert qido(federation.source("south").dicomweb_url, query) == []

    def test_paging_patient_attributes(self, federation: Federation) -> None:
        manifest = federation.manifest
        found: dict[str, dict[str, Any]] = {}
        for name, _ in SOURCES:
            query = f"/studies?PatientID={PAGE_PATIENT}&includefield={STUDY_DESCRIPTION}"
            found |= {value(row, STUDY_UID): row for row in qido(federation.source(name).dicomweb_url, query)}
        expected = manifest.studies_of(PAGE_PATIENT, "NORTH")
        assert set(found) == {s.study_uid for s in expected}
        for study in expected:
            row = found[study.study_uid]
            assert value(row, PATIENT_NAME) == {"Alphabetic": "Dvořák^Zoë^Marie"}
            assert set(row[MODALITIES]["Value"]) == set(study.modalities)
            assert value(row, ACCESSION) == study.truth.accession
            assert value(row, STUDY_DESCRIPTION) == (study.truth.description or None)

    def test_fixture_settings(self, federation: Federation) -> None:
        settings = federation.settings({"east": "http://127.0.0.1:9/dicom-web"})
        assert [(s["name"], s["issuer"]) for s in settings] == list(SOURCES)
        assert settings[0]["dicomweb_url"] == federation.source("north").dicomweb_url
        assert settings[2]["dicomweb_url"] == "http://127.0.0.1:9/dicom-web"
        assert federation.load_seconds < 60


class TestFaultProxy:
    def test_modes(self, federation: Federation) -> None:
        north = federation.source("north")
        expected = federation.manifest.source("north").study_uids
        with FaultProxy(north.dicomweb_url) as proxy, httpx.Client(timeout=5) as client:
            assert proxy.url == f"http://127.0.0.1:{proxy.port}"
            assert proxy.dicomweb_url == proxy.url + "/dicom-web"
            assert uids(client.get(proxy.dicomweb_url + "/studies").json()) == expected

            proxy.set_mode("refuse")
            with pytest.raises(httpx.ConnectError):
                client.get(proxy.dicomweb_url + "/studies")

            proxy.set_mode("pass")  # listening again, on the same port
            assert uids(client.get(proxy.dicomweb_url + "/studies").json()) == expected

            proxy.set_mode("hang")
            with pytest.raises(httpx.ReadTimeout):
                client.get(proxy.dicomweb_url + "/studies", timeout=httpx.Timeout(5, read=0.3))

            proxy.set_mode("garbage")
            response = client.get(proxy.dicomweb_url + "/studies")
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/dicom+json"
            assert response.content == GARBAGE_BODY
            with pytest.raises(ValueError):
                response.json()
            response = client.post(proxy.dicomweb_url + "/studies", content=b"x" * 1000)  # a body is read first
            assert response.content == GARBAGE_BODY

            proxy.set_mode("pass")
            assert uids(client.get(proxy.dicomweb_url + "/studies").json()) == expected
            assert proxy.accepted >= 5
            port = proxy.port
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/dicom-web/studies", timeout=2)
        proxy.stop()  # twice is fine

    def test_keepalive_connection_closed_on_switch(self, federation: Federation) -> None:
        with FaultProxy(federation.source("east").dicomweb_url) as proxy, httpx.Client(timeout=5) as client:
            assert client.get(proxy.dicomweb_url + "/studies").status_code == 200
            proxy.set_mode("garbage")
            assert client.get(proxy.dicomweb_url + "/studies").content == GARBAGE_BODY

    def test_large_answer_passes(self, federation: Federation) -> None:
        north = federation.source("north")
        study = federation.manifest.source("north").studies[0]
        with FaultProxy(north.dicomweb_url) as proxy:
            direct = httpx.get(f"{north.dicomweb_url}/studies/{study.study_uid}/metadata", timeout=10)
            proxied = httpx.get(f"{proxy.dicomweb_url}/studies/{study.study_uid}/metadata", timeout=10)
        assert proxied.status_code == direct.status_code == 200
        assert len(proxied.json()) == len(direct.json()) == study.n_instances

    def test_bad_arguments(self, federation: Federation) -> None:
        with pytest.raises(ValueError, match="port"):
            FaultProxy("http://127.0.0.1/dicom-web")
        with FaultProxy(federation.source("north").dicomweb_url) as proxy, pytest.raises(ValueError):
            proxy.set_mode("slow")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pix(manifest: FederationManifest) -> Iterator[PixmServer]:
    with PixmServer(manifest.pix_persons()) as server:
        yield server


class TestPixm:
    @staticmethod
    def query(pix: PixmServer, **params: str | list[str]) -> httpx.Response:
        return httpx.get(pix.base + "/Patient/$ihe-pix", params=params, timeout=5)

    def test_cross_reference(self, pix: PixmServer) -> None:
        response = self.query(pix, sourceIdentifier=f"{SYSTEMS['NORTH']}|{XREF_NORTH}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/fhir+json")
        body = response.json()
        assert body["resourceType"] == "Parameters"
        targets = [p["valueIdentifier"] for p in body["parameter"] if p["name"] == "targetIdentifier"]
        assert targets == [
            {"system": SYSTEMS["SOUTH"], "value": XREF_SOUTH},
            {"system": NATIONAL_SYSTEM, "value": "NAT-555-0100"},
        ]
        [target_id] = [p["valueReference"]["reference"] for p in body["parameter"] if p["name"] == "targetId"]
        assert target_id.startswith("Patient/")

    def test_target_system_filters(self, pix: PixmServer) -> None:
        response = self.query(pix, sourceIdentifier=f"{SYSTEMS['SOUTH']}|{XREF_SOUTH}", targetSystem=SYSTEMS["NORTH"])
        targets = [p["valueIdentifier"] for p in response.json()["parameter"] if p["name"] == "targetIdentifier"]
        assert targets == [{"system": SYSTEMS["NORTH"], "value": XREF_NORTH}]
        # Known person, no identifier in the wanted system: 200 and no parameter at all.
        response = self.query(pix, sourceIdentifier=f"{SYSTEMS['NORTH']}|{COLLIDE_ID}", targetSystem=SYSTEMS["EAST"])
        assert (response.status_code, response.json()) == (200, {"resourceType": "Parameters"})

    def test_collision_not_cross_referenced(self, pix: PixmServer) -> None:
        for domain in ("NORTH", "EAST"):
            response = self.query(pix, sourceIdentifier=f"{SYSTEMS[domain]}|{COLLIDE_ID}")
            assert (response.status_code, response.json()) == (200, {"resourceType": "Parameters"})

    @pytest.mark.parametrize(
        ("params", "status", "code"),
        [
            ({"sourceIdentifier": f"{SYSTEMS['NORTH']}|NOPE"}, 404, "not-found"),
            ({"sourceIdentifier": XREF_NORTH}, 400, "invalid"),
            ({"sourceIdentifier": f"urn:oid:1.2.3|{XREF_NORTH}"}, 400, "code-invalid"),
            ({}, 400, "required"),
            ({"sourceIdentifier": f"{SYSTEMS['NORTH']}|{XREF_NORTH}", "targetSystem": "urn:oid:1.2.3"}, 403, None),
        ],
    )
    def test_errors(self, pix: PixmServer, params: dict[str, str], status: int, code: str | None) -> None:
        response = self.query(pix, **params)
        assert response.status_code == status
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == (code or "code-invalid")

    def test_counts_and_modes(self, pix: PixmServer) -> None:
        pix.reset_counts()
        source = f"{SYSTEMS['NORTH']}|{XREF_NORTH}"
        self.query(pix, sourceIdentifier=source)
        self.query(pix, sourceIdentifier=source)
        assert pix.requests == 2 and pix.queries == [source, source]
        try:
            pix.set_mode("error")
            response = self.query(pix, sourceIdentifier=source)
            assert response.status_code == 500
            assert response.json()["resourceType"] == "OperationOutcome"
            pix.set_mode("hang")
            with pytest.raises(httpx.ReadTimeout):
                httpx.get(pix.base + "/Patient/$ihe-pix", params={"sourceIdentifier": source}, timeout=0.3)
        finally:
            pix.set_mode("ok")
        assert self.query(pix, sourceIdentifier=source).status_code == 200
        assert pix.requests == 5
