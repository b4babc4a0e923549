"""QIDO-RS through the WADO-RS gateway (issue 20) on a real Orthanc, in token, capability and open modes.

    patient QIDO0001 (no issuer): study A  CT, series 1: a0 (rejected by an IOCM note), a1; series 2: a2, a3;
                                           series 999: the note (KO)
                                  study A2 MR, series 1: one instance
    patient QIDO0002:             study B  CT, series 1: b0, b1
    patient QIDO0001 of issuer OTHER (another person, same PatientID; Orthanc keys patients by PatientID alone):
                                  study C  CT, series 1: c0
    patient QIDO0003:             study D  CT series: d0; MR series: its only instance rejected by a note in D
                                           (so D is no longer an MR study: counts and ModalitiesInStudy follow)

What is compared: the gateway's answer (dicomweb-client, or a request whose query is spelled as a client would)
and Orthanc's own answer to the same query sent raw, filtered to the caller's scope and without the rejected
instance; RetrieveURLs differ by their base only. The cross-patient battery asks every route every trick in every
mode and checks that no row outside the caller's scope ever comes back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
from dicomtrolley.core import Query, QueryLevels, StudyReference
from dicomtrolley.qido_rs import QidoRS
from dicomtrolley.storage import StorageDir
from dicomtrolley.trolley import Trolley
from dicomtrolley.wado_rs import WadoRS
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from requests import HTTPError

from app.dicom.qido_rs import parse_qido
from app.fhir import patient_ids
from app.settings import Settings
from app.usecases.gateway_search import FUZZY, TRUNCATED
from tests.integration.test_wado_gateway import KEYS, Served, parts
from tests.support.facade import free_port
from tests.support.kos import REJECTED_FOR_QUALITY, make_kos, make_study
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store
from tests.support.tokens import AUDIENCE, ISSUER

pytestmark = pytest.mark.integration
CAP_KEYS = ("q" * 40,)
P1 = patient_ids.encode("QIDO0001", None)
P2 = patient_ids.encode("QIDO0002", None)
READ = "patient/ImagingStudy.rs"
USER = "user/ImagingStudy.rs"
JSON = "application/dicom+json"
STUDY, SERIES, SOP, PID, ISSUER_TAG = "0020000D", "0020000E", "00080018", "00100020", "00100021"
MODALITIES = "00080061"


@dataclass
class Pacs:
    server: OrthancServer
    a: list[Dataset]
    a2: list[Dataset]
    note: Dataset
    b: list[Dataset]
    c: list[Dataset]
    d: list[Dataset]

    def uid(self, name: str) -> str:
        return str(getattr(self, name)[0].StudyInstanceUID)

    @property
    def rejected(self) -> frozenset[str]:
        return frozenset({str(self.a[0].SOPInstanceUID), str(self.d[1].SOPInstanceUID)})

    @property
    def everything(self) -> set[str]:
        return {self.uid(s) for s in ("a", "a2", "b", "c", "d")}

    @property
    def mine(self) -> set[str]:
        return {self.uid("a"), self.uid("a2")}

    def raw(self, path: str) -> list[dict[str, Any]]:
        """Orthanc's own answer, the query sent raw (shared/docs/orthanc-qido.md TL;DR 1)."""
        r = httpx.get(f"{self.server.dicomweb_url}/{path}", headers={"Accept": JSON})
        assert r.status_code == 200, (path, r.text)
        rows: list[dict[str, Any]] = r.json()
        return rows


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    a = make_study(20, "a", patient_id="QIDO0001", patient_name="Qido^Anna", series_sizes=(2, 2), accession="ACC-A")
    a2 = make_study(20, "a2", patient_id="QIDO0001", patient_name="Qido^Anna", modality="MR", study_date="20240301")[:1]
    note = make_kos([a[0]], title=REJECTED_FOR_QUALITY, seed=20)
    b = make_study(20, "b", patient_id="QIDO0002", patient_name="Qido^Bert", series_sizes=(2,), accession="ACC-B")
    c = make_study(20, "c", patient_id="QIDO0001", patient_name="Other^Carl", issuer="OTHER", series_sizes=(1,))
    d = make_study(20, "d", patient_id="QIDO0003", patient_name="Mixed^Dora", series_sizes=(1,))
    mr = make_study(20, "d-mr", patient_id="QIDO0003", patient_name="Mixed^Dora", modality="MR", series_sizes=(1,))
    for ds in mr:  # one more series of study D
        ds.StudyInstanceUID, ds.AccessionNumber, ds.SeriesNumber = d[0].StudyInstanceUID, d[0].AccessionNumber, 2
    note_d = make_kos([mr[0]], title=REJECTED_FOR_QUALITY, seed=21)
    with OrthancServer() as server:
        store(server.dicomweb_url, [*a, *a2, note, *b, *c, *d, *mr, note_d])
        yield Pacs(server, a, a2, note, b, c, [*d, *mr])


def _settings(pacs: Pacs, tmp: pytest.TempPathFactory, port: int, **extra: Any) -> Settings:
    common: dict[str, Any] = {"dicomweb_url": pacs.server.dicomweb_url, "public_url": f"http://127.0.0.1:{port}"}
    if extra.pop("open", False):
        return Settings(**common, auth_mode="open", **extra)
    jwks = KEYS.write_jwks(tmp.mktemp("keys"))
    return Settings(**common, jwks_file=str(jwks), token_issuer=ISSUER, token_audience=AUDIENCE, **extra)


@pytest.fixture(scope="module")
def token_mode(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    with Served(_settings(pacs, tmp_path_factory, port), port) as served:
        yield served


@pytest.fixture(scope="module")
def capability_mode(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    settings = _settings(pacs, tmp_path_factory, port, wado_access="capability", capability_keys=CAP_KEYS)
    with Served(settings, port) as served:
        yield served


@pytest.fixture(scope="module")
def open_mode(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    with Served(_settings(pacs, tmp_path_factory, port, open=True), port) as served:
        yield served


def capability_root(served: Served, pacs: Pacs, study: str, patient: str) -> str:
    """Endpoint.address of ``study`` as the facade's FHIR answer gives it in capability mode."""
    r = httpx.get(f"{served.root}/fhir/R4/ImagingStudy?_id={study}", headers=KEYS.headers(READ, patient))
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entry"]
    (endpoint,) = [c for c in entry["resource"]["contained"] if c["resourceType"] == "Endpoint"]
    address: str = endpoint["address"]
    assert "/dicomweb/c/" in address
    return address


def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A GET whose query goes exactly as written (escapes included)."""
    with httpx.Client() as client:
        request = client.build_request("GET", url, headers={"Accept": JSON, **(headers or {})})
        path, _, query = url.partition("://")[2].partition("/")[2].partition("?")
        request.url = request.url.copy_with(raw_path=f"/{path}{'?' + query if query else ''}".encode())
        return client.send(request)


def norm(rows: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """Rows with the URL base replaced and IssuerOfPatientID left out (the gateway asks for it to check rows)."""
    text = json.dumps(rows).replace(base, "BASE")
    return [{k: v for k, v in row.items() if k != ISSUER_TAG} for row in json.loads(text)]


def theirs(pacs: Pacs, path: str, keep: Any = None) -> list[dict[str, Any]]:
    """Orthanc's own answer as IOCM leaves it (the rejected instances' rows out, the counts and modalities of their
    series and studies lowered, D's MR series out; a ModalitiesInStudy search asked again), without rows ``keep``
    refuses."""
    rows = [iocm(pacs, r) for r in pacs.raw(path) if r.get(SOP, {}).get("Value", [None])[0] not in pacs.rejected]
    wanted = path.partition("ModalitiesInStudy=")[2].partition("&")[0]
    rows = [r for r in rows if r and (not wanted or wanted in r.get(MODALITIES, {}).get("Value", []))]
    rows = [r for r in rows if keep is None or keep(r)]
    return norm(rows, f"http://127.0.0.1:{pacs.server.port}/dicom-web")


def iocm(pacs: Pacs, row: dict[str, Any]) -> dict[str, Any]:
    """What the gateway answers for this row of Orthanc's (module docstring; {} for a row it leaves out)."""
    row = json.loads(json.dumps(row))
    study, series = row[STUDY]["Value"][0], row.get(SERIES, {}).get("Value", [None])[0]
    if SOP not in row and series == str(pacs.d[1].SeriesInstanceUID):
        return {}  # D's MR series: its only instance is rejected
    lowered = {str(pacs.a[0].SeriesInstanceUID)}
    if SOP not in row and series in lowered and "00201209" in row:
        row["00201209"]["Value"][0] -= 1
    if series is None and study in (pacs.uid("a"), pacs.uid("d")):
        row["00201208"]["Value"][0] -= 1
        if study == pacs.uid("d"):
            row["00201206"]["Value"][0] -= 1
            row[MODALITIES]["Value"].remove("MR")
    return row


def studies_of(rows: list[dict[str, Any]]) -> set[str]:
    return {r[STUDY]["Value"][0] for r in rows}


# Queries as a client spells them (left) and as Orthanc can read them raw (right): every level, keyword and tag
# forms, lists, ranges, wildcards, includefield forms, paging.
def cases(p: Pacs) -> list[tuple[str, str]]:
    a, b, a2 = p.uid("a"), p.uid("b"), p.uid("a2")
    se = str(p.a[2].SeriesInstanceUID)
    a1 = str(p.a[1].SOPInstanceUID)
    return [
        ("studies", "studies"),
        ("studies?PatientID=QIDO0001", "studies?PatientID=QIDO0001"),
        ("studies?00100020=QIDO0002", "studies?00100020=QIDO0002"),
        ("studies?PatientName=Qido%2A", "studies?PatientName=Qido*"),
        ("studies?PatientName=qido%5Eanna", "studies?PatientName=qido^anna"),
        ("studies?StudyDate=20240101-20240131", "studies?StudyDate=20240101-20240131"),
        ("studies?StudyDate=20240201-", "studies?StudyDate=20240201-"),
        ("studies?ModalitiesInStudy=MR", "studies?ModalitiesInStudy=MR"),
        ("studies?AccessionNumber=ACC-B", "studies?AccessionNumber=ACC-B"),
        (f"studies?StudyInstanceUID={a}%2C{b}", f"studies?StudyInstanceUID={a},{b}"),
        (f"studies?StudyInstanceUID={a}&StudyInstanceUID={a2}", f"studies?StudyInstanceUID={a},{a2}"),
        ("studies?includefield=00081030&includefield=StudyDescription", "studies?includefield=00081030"),
        ("studies?includefield=00081030%2C00080060", "studies?includefield=00081030,00080060"),
        ("studies?limit=2&offset=1", "studies?limit=2&offset=1"),
        ("studies?PatientID=&limit=1", "studies?limit=1"),
        ("series", "series"),
        ("series?Modality=MR", "series?Modality=MR"),
        (f"series?SeriesInstanceUID={se}", f"series?SeriesInstanceUID={se}"),
        (f"series?StudyInstanceUID={a}&includefield=00080021", f"series?StudyInstanceUID={a}&includefield=00080021"),
        # In-study searches are asked as the level's search with the study's UID (the module docstring of
        # app.usecases.gateway_search): Orthanc's answer to that form, with the study and patient attributes.
        (f"studies/{a}/series", f"series?StudyInstanceUID={a}"),
        (f"studies/{a}/series?SeriesNumber=2", f"series?StudyInstanceUID={a}&SeriesNumber=2"),
        ("instances?PatientID=QIDO0002", "instances?PatientID=QIDO0002"),
        (f"instances?SOPInstanceUID={a1}", f"instances?SOPInstanceUID={a1}"),
        (f"studies/{a}/instances", f"instances?StudyInstanceUID={a}"),
        (f"studies/{a}/instances?limit=2&offset=1", f"instances?StudyInstanceUID={a}"),  # cut below
        (
            f"studies/{a}/series/{p.a[0].SeriesInstanceUID}/instances",
            f"instances?SeriesInstanceUID={p.a[0].SeriesInstanceUID}&StudyInstanceUID={a}",
        ),
        ("instances?Modality=KO", "instances?Modality=KO"),
    ]


@pytest.mark.parametrize("n", range(27))
def test_every_level_and_parameter_form_equals_orthancs_answer(open_mode: Served, pacs: Pacs, n: int) -> None:
    ours_q, raw_q = cases(pacs)[n]
    base = f"{open_mode.root}/dicomweb"
    r = get(f"{base}/{ours_q}")
    assert r.status_code == 200 and r.headers["content-type"] == JSON, (ours_q, r.text[:300])
    expected = theirs(pacs, raw_q)
    if ours_q.endswith("instances?limit=2&offset=1"):
        expected = expected[1:3]  # paged after the rejected instance is left out
    assert norm(r.json(), base) == expected, ours_q
    assert "warning" not in r.headers


def test_dicomweb_client_at_every_level(token_mode: Served, pacs: Pacs) -> None:
    base = f"{token_mode.root}/dicomweb"
    client = DICOMwebClient(url=base, headers=KEYS.headers(USER))
    a = pacs.uid("a")
    for ours, raw in [
        (client.search_for_studies(search_filters={"PatientName": "Qido*"}), "studies?PatientName=Qido*"),
        (
            client.search_for_studies(search_filters={"PatientID": "QIDO0001"}, fields=["StudyDescription"]),
            "studies?PatientID=QIDO0001&includefield=00081030",
        ),
        (client.search_for_studies(limit=1, offset=2), "studies?limit=1&offset=2"),
        (client.search_for_studies(get_remaining=True, limit=1), "studies"),
        (client.search_for_series(search_filters={"Modality": "CT"}), "series?Modality=CT"),
        (client.search_for_series(a), f"series?StudyInstanceUID={a}"),
        (client.search_for_instances(a), f"instances?StudyInstanceUID={a}"),
        (
            client.search_for_instances(a, str(pacs.a[0].SeriesInstanceUID)),
            f"instances?StudyInstanceUID={a}&SeriesInstanceUID={pacs.a[0].SeriesInstanceUID}",
        ),
        (client.search_for_instances(search_filters={"PatientID": "QIDO0002"}), "instances?PatientID=QIDO0002"),
    ]:
        assert norm(ours, base) == theirs(pacs, raw, None), raw


def test_exact_paging_with_the_modalities_quirk(open_mode: Served, pacs: Pacs) -> None:
    base = f"{open_mode.root}/dicomweb"
    for modality, n in (("CT", 4), ("MR", 1)):  # D is no longer an MR study (its MR series is rejected)
        everything = theirs(pacs, f"studies?ModalitiesInStudy={modality}")
        assert len(everything) == n
        pages = [get(f"{base}/studies?ModalitiesInStudy={modality}&limit=1&offset={i}").json() for i in range(n + 1)]
        assert [norm(p, base) for p in pages] == [[row] for row in everything] + [[]]


def test_fuzzymatching_and_truncation_say_so(open_mode: Served, pacs: Pacs) -> None:
    base = f"{open_mode.root}/dicomweb"
    r = get(f"{base}/studies?fuzzymatching=true&PatientName=Qido%2A")
    assert r.status_code == 200 and r.headers["warning"] == f'299 127.0.0.1:{open_mode.port} "{FUZZY}"'
    assert len(r.json()) == 3
    assert "warning" not in get(f"{base}/studies?limit=2").headers  # the client's own limit
    assert get(f"{base}/studies?limit=4").headers.get("warning") is None


def test_truncation_beyond_the_bound(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    with Served(_settings(pacs, tmp_path_factory, port, open=True, instance_limit=3), port) as served:
        clean = f"instances?Modality=CT&StudyInstanceUID={pacs.uid('b')},{pacs.uid('c')},{pacs.uid('d')}"  # 4 rows
        r = get(f"{served.root}/dicomweb/{clean}")
        assert r.status_code == 200 and len(r.json()) == 3 and TRUNCATED in r.headers["warning"]
        assert "warning" not in get(f"{served.root}/dicomweb/{clean}&limit=3").headers
        # The first rows hold a rejected instance: the first page is what is left of them, said to be truncated;
        # a later page that would reach past the rows that can be checked is refused rather than skip rows.
        r = get(f"{served.root}/dicomweb/instances")
        assert r.status_code == 200 and len(r.json()) == 2 and TRUNCATED in r.headers["warning"]
        assert len(get(f"{served.root}/dicomweb/instances?limit=1&offset=1").json()) == 1
        r = get(f"{served.root}/dicomweb/instances?offset=2")
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"


def test_widened_values_are_rechecked(open_mode: Served, pacs: Pacs) -> None:
    base = f"{open_mode.root}/dicomweb"
    # A space cannot travel raw to Orthanc: it goes as "?" and the rows are checked against the real value.
    assert get(f"{base}/studies?PatientName=Qido%5EAnna%20X").json() == []
    found = get(f"{base}/studies?AccessionNumber=ACC-%2A,nothing").json()
    assert studies_of(found) == pacs.everything
    assert studies_of(get(f"{base}/studies?AccessionNumber=acc-b,ACC-A").json()) == {pacs.uid("a"), pacs.uid("b")}


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("studies?Foo=bar", 400),
        ("studies?InstitutionName=X", 400),
        ("studies?Modality=CT", 400),
        ("studies?StudyInstanceUID=1.2.%2A", 400),
        ("studies?StudyDate=2024-01-01", 400),
        ("studies?limit=-1", 400),
        ("studies?fuzzymatching=yes", 400),
        ("studies?PatientID=A%5CB", 400),
        ("studies?includefield=Nope", 400),
    ],
)
def test_what_cannot_be_passed_on_is_400(open_mode: Served, query: str, status: int) -> None:
    r = get(f"{open_mode.root}/dicomweb/{query}")
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome", r.text


def test_accept(open_mode: Served, pacs: Pacs) -> None:
    for accept in ("*/*", "application/json", JSON, "application/dicom+json, */*;q=0.1"):
        assert get(f"{open_mode.root}/dicomweb/studies", {"Accept": accept}).status_code == 200, accept
    r = get(f"{open_mode.root}/dicomweb/studies", {"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status_code == 406
    metadata = f"{open_mode.root}/dicomweb/studies/{pacs.uid('b')}/metadata"
    for accept in ("*/*", "application/json", JSON):
        assert get(metadata, {"Accept": accept}).status_code == 200, accept
    assert get(metadata, {"Accept": 'multipart/related; type="application/dicom+xml"'}).status_code == 406


# ------------------------------------------------------------------------------------ cross-patient battery


def tricks(p: Pacs) -> list[str]:
    a, b, c = p.uid("a"), p.uid("b"), p.uid("c")
    b_se, b_sop = str(p.b[0].SeriesInstanceUID), str(p.b[0].SOPInstanceUID)
    return [
        "",
        "PatientID=%2A",
        "PatientID=*",
        "PatientID=QIDO000?",
        "PatientID=",
        "00100020=%2A",
        "00100020=QIDO0002",
        "PatientID=QIDO0002",
        "PatientID=qido0002",
        "PatientID=QIDO0001,QIDO0002",
        "PatientID=QIDO0001&PatientID=QIDO0002",
        "PatientID=QIDO0001&IssuerOfPatientID=OTHER",
        "IssuerOfPatientID=OTHER",
        "IssuerOfPatientID=",
        "PatientID=QIDO0002%20",
        "PatientID=QIDO0002%26PatientID%3DQIDO0002",
        "PatientName=%2A",
        "PatientName=Qido%5EBert",
        f"StudyInstanceUID={a},{b},{c}",
        f"StudyInstanceUID={b}",
        f"0020000D={b}&0020000D={a}",
        f"StudyInstanceUID={b}%2C{c}",
        f"SeriesInstanceUID={b_se}",
        f"SOPInstanceUID={b_sop}",
        "limit=100&offset=0&fuzzymatching=true&includefield=all",
    ]


def routes(p: Pacs, *, study: str) -> list[tuple[str, str]]:
    se = str({"a": p.a, "b": p.b, "c": p.c}[study][0].SeriesInstanceUID)
    s = p.uid(study)
    return [
        ("studies", "studies"),
        ("series", "series"),
        ("instances", "instances"),
        (f"studies/{s}/series", "series"),
        (f"studies/{s}/instances", "instances"),
        (f"studies/{s}/series/{se}/instances", "instances"),
    ]


def levels_ok(level: str, trick: str) -> bool:
    return not ((level != "instances" and "SOPInstanceUID" in trick) or (level == "studies" and "Series" in trick))


def battery(url: str, pacs: Pacs, headers: dict[str, str], allowed: set[str], study: str) -> int:
    """Every trick on every route: 200 with rows of ``allowed`` studies only (of the path's study, on the routes
    within one), or 400 where a level refuses the attribute; the number of rows seen."""
    seen = 0
    for path, level in routes(pacs, study=study):
        here = allowed & {pacs.uid(study)} if path.startswith("studies/") else allowed
        for trick in tricks(pacs):
            r = get(f"{url}/{path}?{trick}" if trick else f"{url}/{path}", headers)
            if not levels_ok(level, trick):
                assert r.status_code in (200, 400), (path, trick, r.text)
                if r.status_code == 400:
                    continue
            assert r.status_code == 200, (path, trick, r.text)
            rows = r.json()
            assert studies_of(rows) <= here, (path, trick, studies_of(rows))
            assert not [sop for sop in pacs.rejected if sop in r.text]
            seen += len(rows)
    return seen


def test_battery_patient_token(token_mode: Served, pacs: Pacs) -> None:
    url = f"{token_mode.root}/dicomweb"
    for study in ("a", "b", "c"):  # the path's study: the patient's own, another patient's, another issuer's
        assert battery(url, pacs, KEYS.headers(READ, P1), pacs.mine, study) > 0
    # Another patient's token, the other way round.
    assert battery(url, pacs, KEYS.headers(READ, P2), {pacs.uid("b")}, "b") > 0


def test_battery_capability(capability_mode: Served, pacs: Pacs) -> None:
    root = capability_root(capability_mode, pacs, pacs.uid("a"), P1)
    assert battery(root, pacs, {}, {pacs.uid("a")}, "a") > 0
    # A path naming another study than the capability's is refused, like every other route under it.
    for path, _ in routes(pacs, study="b"):
        if path.startswith("studies/"):
            r = get(f"{root}/{path}")
            assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    # The token route of the same server, with a patient token: confined as in token mode.
    assert battery(f"{capability_mode.root}/dicomweb", pacs, KEYS.headers(READ, P1), pacs.mine, "a") > 0


def test_battery_open_and_user_token(open_mode: Served, token_mode: Served, pacs: Pacs) -> None:
    assert battery(f"{open_mode.root}/dicomweb", pacs, {}, pacs.everything, "b") > 0
    assert battery(f"{token_mode.root}/dicomweb", pacs, KEYS.headers(USER), pacs.everything, "c") > 0


def test_patient_token_finds_exactly_its_own(token_mode: Served, pacs: Pacs) -> None:
    base = f"{token_mode.root}/dicomweb"
    h = KEYS.headers(READ, P1)

    def mine(row: dict[str, Any]) -> bool:
        return row[PID]["Value"] == ["QIDO0001"] and not row.get(ISSUER_TAG, {}).get("Value")

    assert norm(get(f"{base}/studies", h).json(), base) == theirs(pacs, "studies?includefield=00100021", mine)
    assert norm(get(f"{base}/instances", h).json(), base) == theirs(pacs, "instances?includefield=00100021", mine)
    pages = [get(f"{base}/studies?limit=1&offset={i}", h).json() for i in range(3)]
    assert [len(p) for p in pages] == [1, 1, 0] and studies_of(pages[0] + pages[1]) == pacs.mine
    client = DICOMwebClient(url=base, headers=h)
    assert studies_of(client.search_for_studies(search_filters={"PatientID": "QIDO0002"})) == set()
    assert client.search_for_series(pacs.uid("b")) == []


def test_refusals(token_mode: Served, pacs: Pacs) -> None:
    url = f"{token_mode.root}/dicomweb/studies"
    assert get(url).status_code == 401
    assert get(url, KEYS.headers("patient/Patient.rs", P1)).status_code == 403
    r = get(url, {"Origin": "https://viewer.example", **KEYS.headers("patient/Patient.rs", P1)})
    assert r.json()["resourceType"] == "OperationOutcome"
    with pytest.raises(HTTPError):
        DICOMwebClient(url=f"{token_mode.root}/dicomweb").search_for_studies()


def test_quoted_query_value_reaches_orthanc_rebuilt(open_mode: Served, pacs: Pacs) -> None:
    # dicomweb-client percent-encodes "*" and "^" (Orthanc alone finds nothing then, orthanc-qido.md TL;DR 1).
    client = DICOMwebClient(url=f"{open_mode.root}/dicomweb")
    direct = DICOMwebClient(url=pacs.server.dicomweb_url)
    assert direct.search_for_studies(search_filters={"PatientName": "Qido^*"}) == []
    found = client.search_for_studies(search_filters={"PatientName": "Qido^*"})
    assert len(found) == 3 and quote("^") == "%5E"


# ------------------------------------------------------------------ Accept defaults, thumbnail, rendered parameters


def test_no_preference_on_retrieve_gets_the_standard_default(token_mode: Served, pacs: Pacs) -> None:
    b0 = pacs.b[0]
    h = KEYS.headers(READ, P2)
    for path in (
        f"studies/{pacs.uid('b')}",
        f"studies/{pacs.uid('b')}/series/{b0.SeriesInstanceUID}",
        f"studies/{pacs.uid('b')}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}",
    ):
        want = httpx.get(
            f"{pacs.server.dicomweb_url}/{path}", headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        for accept in ({"Accept": "*/*"}, {}, {"Accept": "multipart/related"}):
            r = httpx.get(f"{token_mode.root}/dicomweb/{path}", headers={**h, **accept})
            assert r.status_code == 200, (path, accept, r.text[:200])
            assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
            assert parts(r) == parts(want), (path, accept)
    frames = f"studies/{pacs.uid('b')}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/frames/1"
    r = httpx.get(f"{token_mode.root}/dicomweb/{frames}", headers={**h, "Accept": 'multipart/related; type="*/*"'})
    assert r.status_code == 200 and "application/octet-stream" in r.headers["content-type"]


def test_thumbnails_at_every_level_and_rendered_parameters_rebuilt(token_mode: Served, pacs: Pacs) -> None:
    b0 = pacs.b[0]
    h = KEYS.headers(READ, P2)
    study = f"studies/{pacs.uid('b')}"
    series = f"{study}/series/{b0.SeriesInstanceUID}"
    instance = f"{series}/instances/{b0.SOPInstanceUID}"
    direct = pacs.server.dicomweb_url
    for path in (study, series, instance):
        for query, raw in (("", "viewport=128,128"), ("?viewport=256%2C256", "viewport=256,256")):
            r = httpx.get(f"{token_mode.root}/dicomweb/{path}/thumbnail{query}", headers={**h, "Accept": "image/jpeg"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", (path, r.text[:200])
            want = httpx.get(f"{direct}/{path}/rendered?{raw}", headers={"Accept": "image/jpeg"})
            assert r.content == want.content, (path, query)
    # Orthanc alone answers the encoded form with 400; through the gateway it is decoded and rebuilt.
    assert httpx.get(f"{direct}/{instance}/rendered?viewport=64%2C64").status_code == 400
    r = httpx.get(f"{token_mode.root}/dicomweb/{instance}/rendered?viewport=64%2C64&quality=80", headers=h)
    assert r.content == httpx.get(f"{direct}/{instance}/rendered?quality=80&viewport=64,64").content
    for bad in ("?viewport=64", "?annotation=patient", "?quality=80&quality=90", "?viewport=64,64%26x=1"):
        r = httpx.get(f"{token_mode.root}/dicomweb/{instance}/rendered{bad}", headers=h)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", bad
    assert httpx.get(f"{token_mode.root}/dicomweb/{instance}/thumbnail?quality=80", headers=h).status_code == 400
    # The accept query parameter stands for the Accept header (PS3.18 §8.3.3.1; OHIF's thumbnails).
    r = httpx.get(f"{token_mode.root}/dicomweb/{instance}/thumbnail?accept=image%2Fpng", headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    # Another patient's thumbnail: as every other retrieval, 404.
    assert httpx.get(f"{token_mode.root}/dicomweb/{study}/thumbnail", headers=KEYS.headers(READ, P1)).status_code == 404


# ------------------------------------------------------------------------------------------------ dicomtrolley


def trolley(root: str, token: dict[str, str], out: str) -> Trolley:
    """dicomtrolley as shared/docs/viewers.md shows it: one requests.Session carrying the bearer token."""
    session = requests.Session()
    session.headers.update(token)
    return Trolley(
        downloader=WadoRS(session=session, url=root),
        searcher=QidoRS(session=session, url=root),
        storage=StorageDir(out),
    )


def test_dicomtrolley_downloads_a_study_and_searches_instances(token_mode: Served, pacs: Pacs, tmp_path: Any) -> None:
    root = f"{token_mode.root}/dicomweb"
    t = trolley(root, KEYS.headers(READ, P1), str(tmp_path))
    a = pacs.uid("a")
    t.download(StudyReference(study_uid=a), output_dir=str(tmp_path))  # studies/{s}/series, then each series, */*
    got = {str(dcmread(f).SOPInstanceUID) for f in tmp_path.rglob("*") if f.is_file()}
    kept = {str(ds.SOPInstanceUID) for ds in [*pacs.a, pacs.note]} - pacs.rejected
    assert got == kept
    (study,) = t.find_studies(Query(StudyInstanceUID=a, query_level=QueryLevels.INSTANCE))  # studies/{s}/instances
    found = {i.uid for s in study.series for i in s.instances}
    assert found == kept
    # Another patient's study: found nowhere, downloaded never.
    assert t.find_studies(Query(StudyInstanceUID=pacs.uid("b"), query_level=QueryLevels.INSTANCE)) == []
    assert t.find_studies(Query(PatientID="QIDO0002")) == []
    assert {s.uid for s in t.find_studies(Query(PatientID="*"))} == pacs.mine


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_includefield_all_asks_for_every_attribute_the_pacs_can_name(open_mode: Served, pacs: Pacs, level: str) -> None:
    # Orthanc ignores includefield=all (orthanc-qido.md TL;DR 6): the gateway spells it out.
    fields = ",".join(parse_qido(level, [("includefield", "all")]).wanted_fields)
    base = f"{open_mode.root}/dicomweb"
    r = get(f"{base}/{level}?includefield=all&PatientID=QIDO0002")
    assert norm(r.json(), base) == theirs(pacs, f"{level}?PatientID=QIDO0002&includefield={fields}")
    if level == "studies":
        assert all("00081030" in row for row in r.json())  # StudyDescription, which Orthanc leaves out by default
