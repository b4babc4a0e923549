"""Several archives behind one base (issue 21), through the app with in-memory archives on a mock transport.

The real-Orthanc tests (tests/integration/test_federation_orthanc.py) show the same on three live archives; these
show what a live archive cannot easily do on demand: refusing, timing out and answering garbage, each alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.source_settings import SourceSettings
from tests.api.conftest import instance_row, study_row
from tests.support.fhir_check import checking_client

R4 = "/fhir/R4"


class Archive:
    """QIDO-RS over lists of rows: PatientID, IssuerOfPatientID, StudyInstanceUID (lists), limit and offset."""

    def __init__(self, studies: list[dict[str, Any]], instances: list[dict[str, Any]]) -> None:
        self.studies = studies
        self.instances = instances
        self.mode = "up"
        self.asked: list[tuple[str, dict[str, str]]] = []
        self.stored: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = urlsplit(str(request.url)).path.split("/dicom-web/", 1)[1]
        level = path.rsplit("/", 1)[-1]
        params = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        self.asked.append((path if "/" in path else level, params))
        if self.mode == "down":
            raise httpx.ConnectError("refused", request=request)
        if self.mode == "hang":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.mode == "garbage":
            return httpx.Response(200, content=b"<html>not json", headers={"content-type": "application/dicom+json"})
        if request.method == "POST":  # STOW-RS: kept, each part acknowledged as stored
            self.stored.append(request.content)
            return httpx.Response(200, json={"00081199": {"vr": "SQ", "Value": []}})
        if "/" in path:
            return self._wado(path)
        rows = [r for r in (self.studies if level == "studies" else self.instances) if _matches(r, params)]
        offset = int(params.get("offset", 0))
        limit = int(params["limit"]) if "limit" in params else None
        rows = rows[offset : None if limit is None else offset + limit]
        return httpx.Response(200, json=rows, headers={"content-type": "application/dicom+json"})

    def _wado(self, path: str) -> httpx.Response:
        """WADO-RS: one part per instance held (its SOP Instance UID as the body), or their metadata."""
        parts = path.split("/")
        uids = dict(zip(parts[0::2], parts[1::2], strict=False))
        held = [
            r for r in self.instances if all(r[tag]["Value"][0] == uids[key] for key, tag in _PATH_TAGS if key in uids)
        ]
        if not held:
            return httpx.Response(404)
        if parts[-1] == "metadata":
            return httpx.Response(200, json=held, headers={"content-type": "application/dicom+json"})
        body = b"".join(
            b"--B\r\nContent-Type: application/dicom\r\n\r\n" + r["00080018"]["Value"][0].encode() + b"\r\n"
            for r in held
        )
        return httpx.Response(
            200,
            content=body + b"--B--\r\n",
            headers={"content-type": 'multipart/related; type="application/dicom"; boundary=B'},
        )


_PATH_TAGS = (("studies", "0020000D"), ("series", "0020000E"), ("instances", "00080018"))


def _matches(row: dict[str, Any], params: dict[str, str]) -> bool:
    if "StudyDate" in params:
        low, _, high = params["StudyDate"].partition("-") if "-" in params["StudyDate"] else (params["StudyDate"],) * 3
        day = (row.get("00080020", {}).get("Value") or [""])[0]
        if not day or (low and day < low) or (high and day > high):
            return False
    keys = (
        ("PatientID", "00100020"),
        ("IssuerOfPatientID", "00100021"),
        ("StudyInstanceUID", "0020000D"),
        ("SOPInstanceUID", "00080018"),
    )
    for key, tag in keys:
        if key in params:
            value = (row.get(tag, {}).get("Value") or [None])[0]
            if value not in params[key].split(","):
                return False
    return True


def _north() -> Archive:
    # P1 (domain NORTH, no issuer stored): studies 1.1 and the shared 1.9; MRN-X of NORTH: study 1.5
    return Archive(
        [
            study_row("1.1", patient_id="P1", date="20200101"),
            study_row("1.9", patient_id="P1", date="20210101"),
            study_row("1.5", patient_id="MRN-X", name="North^Person"),
        ],
        [
            instance_row("1.1", "1.1.1", "1.1.1.1"),
            instance_row("1.9", "1.9.1", "1.9.1.1"),
            instance_row("1.9", "1.9.2", "1.9.2.1", series_number=2),
            instance_row("1.5", "1.5.1", "1.5.1.1"),
        ],
    )


def _south() -> Archive:
    # P1's study 2.1 sent from north (issuer NORTH kept), the shared 1.9 with another series; MRN-X of SOUTH: 2.5
    return Archive(
        [
            study_row("2.1", patient_id="P1", issuer="NORTH", date="20220101", modalities=("MR",)),
            study_row("1.9", patient_id="P1", issuer="NORTH", date="20210101", modalities=("MR",)),
            study_row("2.5", patient_id="MRN-X", name="South^Person"),
            study_row("2.7", patient_id="S-200", date="20230101"),  # P1 of NORTH, as south knows them (PIXm)
        ],
        [
            instance_row("2.1", "2.1.1", "2.1.1.1", modality="MR"),
            instance_row("1.9", "1.9.2", "1.9.2.1", series_number=2),
            instance_row("1.9", "1.9.3", "1.9.3.1", modality="MR", series_number=3),
            instance_row("2.5", "2.5.1", "2.5.1.1"),
            instance_row("2.7", "2.7.1", "2.7.1.1"),
        ],
    )


@pytest.fixture
def archives() -> dict[str, Archive]:
    return {"north": _north(), "south": _south()}


ISSUER = "urn:x-imaging-facade:issuer:"
PERSONS = [[(ISSUER + "NORTH", "P1"), (ISSUER + "SOUTH", "S-200"), ("urn:oid:1.2.3.99", "elsewhere")]]


class Pixm:
    """ITI-83 over PERSONS: the other identifiers of the person the source identifier names, else 404."""

    def __init__(self) -> None:
        self.mode = "up"
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        source = request.url.params["sourceIdentifier"]
        self.asked.append(source)
        if self.mode == "down":
            raise httpx.ConnectError("refused", request=request)
        system, _, value = source.partition("|")
        for person in PERSONS:
            if (system, value) in person:
                others = [{"name": "targetIdentifier", "valueIdentifier": {"system": s, "value": v}} for s, v in person]
                return httpx.Response(200, json={"resourceType": "Parameters", "parameter": others})
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})


@pytest.fixture
def pixm() -> Pixm:
    return Pixm()


@pytest.fixture
def make_client(archives: dict[str, Archive], pixm: Pixm) -> Iterator[Any]:
    clients: list[TestClient] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "pixm.test":
            return pixm(request)
        return archives[request.url.host.split(".")[0]](request)

    def make(**overrides: Any) -> TestClient:
        sources = tuple(
            SourceSettings(name=name, dicomweb_url=f"http://{name}.test:8042/dicom-web", issuer=name.upper())
            for name in archives
        )
        base = {"sources": sources, "auth_mode": "open", "cache_ttl": 60.0, "upstream_retries": 0}
        app = create_app(Settings(**(base | overrides)), transport=httpx.MockTransport(handler))
        client = checking_client(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Any) -> TestClient:
    return make_client()  # type: ignore[no-any-return]


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _outcomes(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]


def _patient(client: TestClient, pid: str, issuer: str) -> str:
    found = client.get(f"{R4}/Patient", params={"identifier": f"urn:x-imaging-facade:issuer:{issuer}|{pid}"}).json()
    (entry,) = found["entry"]
    return str(entry["resource"]["id"])


def test_a_patients_studies_come_from_every_archive_once_each(client):
    patient = _patient(client, "P1", "NORTH")
    bundle = client.get(f"{R4}/ImagingStudy", params={"patient": patient}).json()
    assert sorted(_ids(bundle)) == ["1.1", "1.9", "2.1"]
    assert not _outcomes(bundle)
    (shared,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "1.9"]
    # the union of the two copies by Series UID: 1.9.2 is in both, once here
    assert sorted(s["uid"] for s in shared["series"]) == ["1.9.1", "1.9.2", "1.9.3"]
    assert shared["numberOfSeries"] == 3 and shared["numberOfInstances"] == 3


def test_pixm_finds_the_person_in_the_other_domains_under_the_patient_asked_for(make_client, pixm):
    client = make_client(pixm_url="http://pixm.test/fhir")
    patient = _patient(client, "P1", "NORTH")
    bundle = client.get(f"{R4}/ImagingStudy", params={"patient": patient}).json()
    assert sorted(_ids(bundle)) == ["1.1", "1.9", "2.1", "2.7"]
    assert {e["resource"]["subject"]["reference"] for e in bundle["entry"]} == {f"Patient/{patient}"}
    by_identifier = client.get(f"{R4}/ImagingStudy", params={"patient.identifier": f"{ISSUER}SOUTH|S-200"}).json()
    assert sorted(_ids(by_identifier)) == ["1.1", "1.9", "2.1", "2.7"]
    asked = len(pixm.asked)
    client.get(f"{R4}/ImagingStudy", params={"patient": patient, "_count": 1})
    assert len(pixm.asked) == asked  # cross-references are cached
    unknown = client.get(f"{R4}/ImagingStudy", params={"patient.identifier": f"{ISSUER}SOUTH|MRN-X"}).json()
    assert _ids(unknown) == ["2.5"]  # 404 from PIXm: no other identifiers


def test_a_pixm_fault_is_an_error_that_names_no_host(make_client, pixm):
    client = make_client(pixm_url="http://pixm.test/fhir")
    pixm.mode = "down"
    response = client.get(f"{R4}/ImagingStudy", params={"patient.identifier": f"{ISSUER}NORTH|P1"})
    assert response.status_code == 503
    assert "pixm.test" not in response.text and "cross-reference" in response.text


def test_two_people_sharing_a_patient_id_in_two_domains_are_never_mixed(client):
    north = _patient(client, "MRN-X", "NORTH")
    south = _patient(client, "MRN-X", "SOUTH")
    assert north != south
    assert _ids(client.get(f"{R4}/ImagingStudy", params={"patient": north}).json()) == ["1.5"]
    assert _ids(client.get(f"{R4}/ImagingStudy", params={"patient": south}).json()) == ["2.5"]


def test_an_archive_is_asked_without_the_issuer_its_own_rows_do_not_carry(client, archives):
    patient = _patient(client, "P1", "NORTH")
    client.get(f"{R4}/ImagingStudy", params={"patient": patient}, headers={"Cache-Control": "no-cache"})
    north = [p for level, p in archives["north"].asked if level == "studies" and p.get("PatientID") == "P1"]
    south = [p for level, p in archives["south"].asked if level == "studies" and p.get("PatientID") == "P1"]
    assert north and all("IssuerOfPatientID" not in p for p in north)
    assert south and all(p.get("IssuerOfPatientID") == "NORTH" for p in south)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_following_next_links_gives_every_study_exactly_once(client, count):
    seen: list[str] = []
    url: str | None = f"{R4}/ImagingStudy?_count={count}"
    pages = 0
    while url:
        bundle = client.get(url).json()
        seen += _ids(bundle)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
        assert pages < 20
    assert sorted(seen) == ["1.1", "1.5", "1.9", "2.1", "2.5", "2.7"]


@pytest.mark.parametrize("mode", ["down", "hang", "garbage"])
def test_a_failing_archive_leaves_the_others_answer_with_an_outcome_naming_it(client, archives, mode):
    patient = _patient(client, "P1", "NORTH")
    archives["south"].mode = mode
    response = client.get(f"{R4}/ImagingStudy", params={"patient": patient}, headers={"Cache-Control": "no-cache"})
    assert response.status_code == 200
    bundle = response.json()
    assert sorted(_ids(bundle)) == ["1.1", "1.9"]
    (outcome,) = _outcomes(bundle)
    (issue,) = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("warning", "incomplete")
    assert "'south'" in issue["diagnostics"] and "south.test" not in response.text and "8042" not in response.text


def test_an_incomplete_answer_is_not_kept(client, archives):
    patient = _patient(client, "P1", "NORTH")
    archives["south"].mode = "down"
    assert _outcomes(client.get(f"{R4}/ImagingStudy", params={"patient": patient}).json())
    archives["south"].mode = "up"
    bundle = client.get(f"{R4}/ImagingStudy", params={"patient": patient}).json()
    assert sorted(_ids(bundle)) == ["1.1", "1.9", "2.1"] and not _outcomes(bundle)


def test_strict_handling_turns_a_failing_archive_into_an_error(client, archives):
    patient = _patient(client, "P1", "NORTH")
    archives["south"].mode = "down"
    strict = {"Prefer": "handling=strict", "Cache-Control": "no-cache"}
    response = client.get(f"{R4}/ImagingStudy", params={"patient": patient}, headers=strict)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "'south'" in response.json()["issue"][0]["diagnostics"]
    archives["south"].mode = "hang"
    assert client.get(f"{R4}/ImagingStudy", params={"patient": patient}, headers=strict).status_code == 504


def test_every_archive_failing_is_an_error_as_with_one(client, archives):
    for archive in archives.values():
        archive.mode = "down"
    response = client.get(f"{R4}/ImagingStudy", params={"_count": 5})
    assert response.status_code == 503 and response.json()["resourceType"] == "OperationOutcome"


def test_a_read_is_404_only_when_every_archive_said_so(client, archives):
    assert client.get(f"{R4}/ImagingStudy/9.9").status_code == 404
    archives["south"].mode = "down"
    nowhere = client.get(f"{R4}/ImagingStudy/9.9", headers={"Cache-Control": "no-cache"})
    assert nowhere.status_code == 503 and nowhere.headers["Retry-After"]
    assert "'south'" in nowhere.json()["issue"][0]["diagnostics"]
    held = client.get(f"{R4}/ImagingStudy/1.9", headers={"Cache-Control": "no-cache"})
    assert held.status_code == 200 and "south" in held.headers["Warning"]
    assert sorted(s["uid"] for s in held.json()["series"]) == ["1.9.1", "1.9.2"]


def test_readyz_is_ready_while_one_archive_is(client, archives):
    assert client.get("/readyz").status_code == 200
    archives["south"].mode = "down"
    response = client.get("/readyz")
    assert response.status_code == 200
    assert [i["severity"] for i in response.json()["issue"]] == ["information", "warning"]
    archives["north"].mode = "down"
    assert client.get("/readyz").status_code == 503


def test_metrics_carry_the_archive(client, archives):
    client.get(f"{R4}/ImagingStudy")
    text = client.get("/metrics").text
    assert 'facade_upstream_requests_total{kind="qido",outcome="ok",source="north"}' in text
    assert 'facade_upstream_requests_total{kind="qido",outcome="ok",source="south"}' in text
    assert 'facade_upstream_breaker_state{source="south"} 0.0' in text


def _parts(response: httpx.Response) -> list[str]:
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    chunks = response.content.split(f"--{boundary}".encode())[1:-1]
    return sorted(c.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n").decode() for c in chunks)


def test_a_study_split_over_two_archives_is_retrieved_whole(client, archives):
    response = client.get("/dicomweb/studies/1.9", headers={"Accept": "multipart/related; type=application/dicom"})
    assert response.status_code == 200
    assert _parts(response) == ["1.9.1.1", "1.9.2.1", "1.9.3.1"]  # 1.9.2.1 is in both: once
    asked = [p for a in archives.values() for p, _ in a.asked if p.startswith("studies/1.9")]
    assert "studies/1.9" not in asked  # neither archive holds it whole: series by series
    metadata = client.get("/dicomweb/studies/1.9/metadata").json()
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == ["1.9.1.1", "1.9.2.1", "1.9.3.1"]


def test_a_series_comes_from_the_first_archive_that_holds_it(client, archives):
    response = client.get(
        "/dicomweb/studies/1.9/series/1.9.3", headers={"Accept": "multipart/related; type=application/dicom"}
    )
    assert _parts(response) == ["1.9.3.1"]
    shared = client.get(
        "/dicomweb/studies/1.9/series/1.9.2/instances/1.9.2.1",
        headers={"Accept": "multipart/related; type=application/dicom"},
    )
    assert _parts(shared) == ["1.9.2.1"]
    asked = {name: [p for p, _ in a.asked if p.startswith("studies/1.9/series/1.9.2")] for name, a in archives.items()}
    assert asked == {"north": ["studies/1.9/series/1.9.2/instances/1.9.2.1"], "south": []}


def test_the_gateway_search_merges_the_archives(client):
    rows = client.get("/dicomweb/studies", params={"PatientID": "P1"}).json()
    assert sorted(r["0020000D"]["Value"][0] for r in rows) == ["1.1", "1.9", "2.1"]
    instances = client.get("/dicomweb/studies/1.9/instances").json()
    assert sorted(r["00080018"]["Value"][0] for r in instances) == ["1.9.1.1", "1.9.2.1", "1.9.3.1"]


def test_an_archive_that_gave_all_it_holds_is_not_asked_again_for_later_pages(client, archives):
    seen: list[str] = []
    url: str | None = f"{R4}/ImagingStudy?_count=1"
    while url:
        bundle = client.get(url).json()
        seen += _ids(bundle)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == ["1.1", "1.5", "1.9", "2.1", "2.5", "2.7"]
    limits = {name: [int(p["limit"]) for level, p in a.asked if level == "studies"] for name, a in archives.items()}
    # north holds 3 studies: once a page asked it for 4 rows and got 3, the later pages (5, 6, 7 rows) reuse that;
    # south holds 4 (one of them north's too): complete at 5
    assert limits["north"] == [2, 3, 4]
    assert limits["south"] == [2, 3, 4, 5]


def test_an_archive_in_a_zone_of_its_own_is_read_in_it(make_client, archives):
    """south keeps local time in Tokyo (pacs_timezone for it alone): its study of 2022-01-01 01:00 is
    2021-12-31T16:00Z, found by a search for that UTC day although its StudyDate is the next day."""
    archives["south"].studies.append(study_row("2.9", patient_id="TZ1", date="20220101", time="010000"))
    archives["south"].instances.append(instance_row("2.9", "2.9.1", "2.9.1.1"))
    sources = tuple(
        SourceSettings(
            name=name,
            dicomweb_url=f"http://{name}.test:8042/dicom-web",
            issuer=name.upper(),
            pacs_timezone="Asia/Tokyo" if name == "south" else None,
        )
        for name in archives
    )
    client = make_client(sources=sources, pacs_timezone="UTC")
    study = client.get(f"{R4}/ImagingStudy/2.9").json()
    assert study["started"] == "2022-01-01T01:00:00+09:00"
    found = client.get(f"{R4}/ImagingStudy", params={"started": "2021-12-31"}).json()
    assert _ids(found) == ["2.9"]
    assert "2.9" not in _ids(client.get(f"{R4}/ImagingStudy", params={"started": "2022-01-01"}).json())


def test_a_page_deeper_than_the_archives_are_read_for_is_refused(make_client):
    client = make_client(prequery_limit=10)
    assert client.get(f"{R4}/ImagingStudy", params={"_count": 5, "_offset": 4}).status_code == 200
    deep = client.get(f"{R4}/ImagingStudy", params={"_count": 5, "_offset": 5})
    assert deep.status_code == 400 and deep.json()["issue"][0]["code"] == "too-costly"


def test_a_pages_instance_rows_are_asked_only_of_the_archives_that_hold_its_studies(client, archives):
    patient = _patient(client, "MRN-X", "SOUTH")
    for archive in archives.values():
        archive.asked.clear()
    bundle = client.get(f"{R4}/ImagingStudy", params={"patient": patient}, headers={"Cache-Control": "no-cache"})
    assert _ids(bundle.json()) == ["2.5"]
    levels = {name: [level for level, _ in a.asked] for name, a in archives.items()}
    assert levels == {"north": ["studies"], "south": ["studies", "instances"]}
    # the shared study 1.9: its instance rows from both copies
    for archive in archives.values():
        archive.asked.clear()
    north = _patient(client, "P1", "NORTH")
    client.get(f"{R4}/ImagingStudy", params={"patient": north}, headers={"Cache-Control": "no-cache"})
    asked = {
        name: [p["StudyInstanceUID"] for level, p in a.asked if level == "instances"] for name, a in archives.items()
    }
    assert asked == {"north": ["1.1,1.9"], "south": ["1.9,2.1"]}


def test_a_manifest_is_stored_in_the_archive_of_its_study_and_refused_where_that_one_takes_none(make_client, archives):
    sources = tuple(
        SourceSettings(
            name=name,
            dicomweb_url=f"http://{name}.test:8042/dicom-web",
            issuer=name.upper(),
            manifests_writable=name != "north",
        )
        for name in archives
    )
    client = make_client(sources=sources)

    def post(study: str, series: str, sop: str) -> httpx.Response:
        body = {
            "resourceType": "ImagingSelection",
            "status": "available",
            "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "113000"}]},
            "studyUid": study,
            "seriesUid": series,
            "instance": [{"uid": sop}],
        }
        return client.post("/fhir/R5/ImagingSelection", json=body, headers={"Content-Type": "application/fhir+json"})

    refused = post("1.1", "1.1.1", "1.1.1.1")
    assert refused.status_code == 422 and "'north'" in refused.json()["issue"][0]["diagnostics"]
    created = post("2.5", "2.5.1", "2.5.1.1")
    assert created.status_code == 201, created.text
    assert [len(a.stored) for a in archives.values()] == [0, 1]
