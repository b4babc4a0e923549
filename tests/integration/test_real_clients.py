"""Two third-party FHIR client libraries (fhirpy, fhirclient) drive the facade, served by uvicorn, over a real
Orthanc: what an EMR developer would do with them must just work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.fhir import patient_ids
from tests.support.dataset import Manifest
from tests.support.facade import FacadeProcess

fhirpy = pytest.importorskip("fhirpy")
fhirclient_client = pytest.importorskip("fhirclient.client")
from fhirclient.models.imagingstudy import ImagingStudy  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(orthanc) -> Iterator[str]:
    with FacadeProcess(orthanc.dicomweb_url) as facade:
        yield facade.base


def _ids(resources) -> set[str]:
    return {r.id for r in resources}


class TestFhirpy:
    def test_clinician_scenario(self, base, orthanc):
        manifest: Manifest = orthanc.manifest
        client = fhirpy.SyncFHIRClient(base)
        studies = client.resources("ImagingStudy")
        mueller = patient_ids.encode("MRN0001", None)
        want = {s.study_uid for s in manifest.studies_of("MRN0001")}
        # The EMR opens the patient: all her imaging, then CT since 2018, then one study and its endpoint.
        assert {s.id for s in studies.search(patient=f"Patient/{mueller}").fetch_all()} == want
        assert {s.id for s in studies.search(**{"patient.identifier": "MRN0001"}).fetch_all()} == want
        ct = {s.study_uid for s in manifest.studies_of("MRN0001") if "CT" in s.modalities and s.study_date >= "2018"}
        found = studies.search(patient=f"Patient/{mueller}", modality="CT", started__ge="2018-01-01").fetch_all()
        assert {s.id for s in found} == ct
        uid = sorted(ct)[0]
        study = client.reference("ImagingStudy", uid).to_resource()
        assert study["identifier"][0]["value"] == f"urn:oid:{uid}"
        bundle = studies.search(_id=uid).include("ImagingStudy", "endpoint").fetch_raw()
        endpoint = next(e.resource for e in bundle.entry if e.resource.resourceType == "Endpoint")
        assert endpoint["address"] == base.removesuffix("/fhir/R4") + "/dicomweb"  # the gateway, not the PACS
        patient = client.reference("Patient", mueller).to_resource()
        assert patient["name"][0]["family"] == "Müller"

    def test_paging_follows_next_links_to_the_end(self, base, orthanc):
        client = fhirpy.SyncFHIRClient(base)
        seen = [s.id for s in client.resources("ImagingStudy").limit(2).fetch_all()]
        assert sorted(seen) == sorted(s.study_uid for s in orthanc.manifest.studies)

    def test_count_reads_an_exact_total(self, base, orthanc):
        """fhirpy's count() sends _count=0 and reads Bundle.total (search.html#count: _count=0 is _summary=count)."""
        manifest: Manifest = orthanc.manifest
        client = fhirpy.SyncFHIRClient(base)
        for pid, issuer in manifest.patients:
            patient = f"Patient/{patient_ids.encode(pid, issuer)}"
            assert client.resources("ImagingStudy").search(patient=patient).count() == len(
                manifest.studies_of(pid, issuer)
            )
        assert client.resources("ImagingStudy").count() == len(manifest.studies)
        ct = client.resources("ImagingStudy").search(modality="CT", started__ge="2020-01-01")
        assert ct.count() == len([s for s in manifest.studies if "CT" in s.modalities and s.study_date >= "2020"])
        assert client.resources("Patient").count() == len(manifest.patients)
        female = {(s.patient_id, s.issuer) for s in manifest.studies if s.sex == "F"}
        assert client.resources("Patient").search(gender="female").count() == len(female)
        r5 = fhirpy.SyncFHIRClient(base.removesuffix("/R4") + "/R5")
        assert r5.resources("ImagingStudy").search(modality="MR").count() == len(
            [s for s in manifest.studies if "MR" in s.modalities]
        )
        assert r5.resources("Patient").count() == len(manifest.patients)
        assert r5.resources("ImagingSelection").count() == 0  # the session's data set holds no KOS

    def test_dates_identifier_and_accession(self, base, orthanc):
        manifest: Manifest = orthanc.manifest
        studies = fhirpy.SyncFHIRClient(base).resources("ImagingStudy")
        in_range = {s.study_uid for s in manifest.studies if "20200101" <= (s.study_date or "") <= "20211231"}
        got = studies.search(started__ge="2020-01-01", started__lt="2022-01-01").limit(100).fetch_all()
        assert {s.id for s in got} == in_range
        study = manifest.studies[0]
        assert {s.id for s in studies.search(identifier=f"urn:dicom:uid|urn:oid:{study.study_uid}").fetch()} == {
            study.study_uid
        }
        assert {s.id for s in studies.search(identifier=study.accession).fetch()} == {study.study_uid}


class TestFhirclient:
    def _server(self, base):
        smart = fhirclient_client.FHIRClient(settings={"app_id": "facade-tests", "api_base": base})
        smart.prepare()  # reads and parses the CapabilityStatement with fhirclient's R4 models
        return smart.server

    def test_capability_statement_parses(self, base):
        server = self._server(base)
        names = {
            p.name
            for r in server.capabilityStatement.rest[0].resource
            if r.type == "ImagingStudy"
            for p in r.searchParam
        }
        assert {"patient", "started", "modality", "identifier"} <= names

    def test_search_read_and_paging_with_strict_models(self, base, orthanc):
        manifest: Manifest = orthanc.manifest
        server = self._server(base)
        pid = patient_ids.encode("SHARED01", "HOSP-A")
        found = list(ImagingStudy.where(struct={"patient": f"Patient/{pid}"}).perform_resources_iter(server))
        assert _ids(found) == {s.study_uid for s in manifest.studies_of("SHARED01", "HOSP-A")}
        every = list(ImagingStudy.where(struct={"_count": "2"}).perform_resources_iter(server))
        assert sorted(s.id for s in every) == sorted(s.study_uid for s in manifest.studies)
        read = ImagingStudy.read(found[0].id, server)
        assert read.series and read.series[0].instance and read.endpoint[0].reference == "Endpoint/wado-rs"
        by_modality = list(ImagingStudy.where(struct={"modality": "MR"}).perform_resources_iter(server))
        assert _ids(by_modality) == {s.study_uid for s in manifest.studies if "MR" in s.modalities}
