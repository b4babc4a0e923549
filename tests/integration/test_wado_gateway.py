"""The WADO-RS gateway (issue 12) on a real Orthanc, served by uvicorn, driven by dicomweb-client through the
Endpoint.address the facade's own FHIR answer gives (shared/docs/wado-gateway.md §6 for the media types).

    patient P1: study A  series 1: a0 (rejected by an IOCM note), a1     series 2: a2, a3
                         series 50: a multi-frame image (3 frames)       series 999: the rejection note (KO)
    patient P2: study B  series 1: b0, b1

Bytes through the gateway equal Orthanc's own answer to the same request (parts compared, the boundary differs);
no answer (headers or body, errors included) names the PACS's host and port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from requests import HTTPError

from app.dicom import multipart as mp
from app.dicom.media_type import boundary_of
from app.fhir import patient_ids
from app.main import create_app
from app.security import capability
from app.settings import Settings
from tests.support.facade import free_port
from tests.support.kos import REJECTED_FOR_QUALITY, make_kos, make_multiframe, make_study
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

pytestmark = pytest.mark.integration
KEYS = TokenIssuer()
CAP_KEYS = ("k" * 40, "second-key-" + "x" * 30)
P1 = patient_ids.encode("WADO0001", None)
P2 = patient_ids.encode("WADO0002", None)
READ = "patient/ImagingStudy.rs"  # with a patient context: confined to that patient
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass
class Pacs:
    server: OrthancServer
    a: list[Dataset]
    multiframe: Dataset
    note: Dataset
    b: list[Dataset]

    @property
    def study_a(self) -> str:
        return str(self.a[0].StudyInstanceUID)

    @property
    def study_b(self) -> str:
        return str(self.b[0].StudyInstanceUID)

    @property
    def host(self) -> bytes:
        return f"127.0.0.1:{self.server.port}".encode()


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    a = make_study(12, "a", patient_id="WADO0001", patient_name="Wado^Anna", series_sizes=(2, 2))
    multiframe = make_multiframe(a[0], frames=3, seed=12)
    note = make_kos([a[0]], title=REJECTED_FOR_QUALITY, seed=12)
    b = make_study(12, "b", patient_id="WADO0002", patient_name="Wado^Bert", series_sizes=(2,))
    with OrthancServer() as server:
        store(server.dicomweb_url, [*a, multiframe, note, *b])
        yield Pacs(server, a, multiframe, note, b)


class Served:
    """The app on a uvicorn thread (127.0.0.1, a free port): ``root`` is its origin."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.port = port
        self.root = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _settings(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory, port: int, **extra: Any) -> Settings:
    """smart mode; public_url set, as a deployment would: dicomweb-client sends Host without the port (§6)."""
    jwks = KEYS.write_jwks(tmp_path_factory.mktemp("keys"))
    return Settings(
        dicomweb_url=pacs.server.dicomweb_url,
        public_url=f"http://127.0.0.1:{port}",
        auth_mode="smart",
        jwks_file=str(jwks),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
        **extra,
    )


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


def parts(r: httpx.Response) -> list[bytes]:
    """The data of every part of a multipart answer (the boundary and part headers aside)."""
    boundary = boundary_of(r.headers["content-type"])
    assert boundary is not None, r.headers["content-type"]
    parser = mp.MultipartParser(boundary)
    out: list[bytes] = []
    for event in parser.feed(r.content):
        if isinstance(event, mp.PartStart):
            out.append(b"")
        elif isinstance(event, mp.PartData):
            out[-1] += event.data
    parser.close()
    return out


def no_leak(r: httpx.Response, pacs: Pacs) -> None:
    """Nothing in the answer names the PACS (its host:port, its plugin root)."""
    for name, value in r.headers.items():
        assert pacs.host.decode() not in value and "dicom-web" not in value, (name, value)
    assert pacs.host not in r.content
    if "json" in r.headers.get("content-type", ""):
        assert b"dicom-web" not in r.content, r.text[:300]


def address_of(served: Served, study: str, headers: dict[str, str]) -> str:
    """Endpoint.address as the facade's own FHIR answer gives it for this study (shared or contained Endpoint)."""
    r = httpx.get(f"{served.root}/fhir/R4/ImagingStudy?_id={study}&_include=ImagingStudy:endpoint", headers=headers)
    assert r.status_code == 200, r.text
    resources = [e["resource"] for e in r.json()["entry"]]
    endpoints = [res for res in resources if res["resourceType"] == "Endpoint"]
    endpoints += [c for res in resources for c in res.get("contained", []) if c["resourceType"] == "Endpoint"]
    (endpoint,) = endpoints
    address: str = endpoint["address"]
    assert address.startswith(f"{served.root}/dicomweb")
    return address


# -------------------------------------------------------------------------------------------- token mode


def test_dicomweb_client_retrieves_everything_through_the_gateway(token_mode: Served, pacs: Pacs) -> None:
    headers = KEYS.headers(READ, P2)
    address = address_of(token_mode, pacs.study_b, headers)
    assert address == f"{token_mode.root}/dicomweb"
    client = DICOMwebClient(url=address, headers=headers)
    direct = DICOMwebClient(url=pacs.server.dicomweb_url)
    b0 = pacs.b[0]
    study = client.retrieve_study(pacs.study_b, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(ds.SOPInstanceUID for ds in pacs.b)
    assert {ds.SOPInstanceUID for ds in client.retrieve_series(pacs.study_b, b0.SeriesInstanceUID)} == {
        ds.SOPInstanceUID for ds in pacs.b
    }
    instance = client.retrieve_instance(pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID)
    assert instance.PixelData == b0.PixelData
    streamed = list(client.iter_study(pacs.study_b, media_types=(("application/dicom", "*"),)))
    assert len(streamed) == len(pacs.b)
    metadata = client.retrieve_study_metadata(pacs.study_b)
    assert len(metadata) == len(pacs.b) == len(direct.retrieve_study_metadata(pacs.study_b))
    frames = client.retrieve_instance_frames(
        pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID, [1], media_types=(("application/octet-stream", "*"),)
    )
    assert frames == direct.retrieve_instance_frames(
        pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID, [1], media_types=(("application/octet-stream", "*"),)
    )
    png = client.retrieve_instance_rendered(
        pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID, media_types=("image/png",)
    )
    assert png == direct.retrieve_instance_rendered(
        pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID, media_types=("image/png",)
    )
    # Every BulkDataURI points at the gateway and resolves through it to the PACS's bytes.
    uris = [e["BulkDataURI"] for ds in metadata for e in ds.values() if isinstance(e, dict) and "BulkDataURI" in e]
    assert uris and all(u.startswith(f"{address}/studies/{pacs.study_b}/") for u in uris)
    for uri in uris:
        data = client.retrieve_bulkdata(uri, media_types=("application/octet-stream",))
        direct_uri = pacs.server.dicomweb_url + uri.removeprefix(address)
        assert data == direct.retrieve_bulkdata(direct_uri, media_types=("application/octet-stream",))
    series = client.search_for_series(pacs.study_b)
    assert [s["0020000E"]["Value"] for s in series] == [[b0.SeriesInstanceUID]]
    retrieve_urls = [s["00081190"]["Value"][0] for s in series if "00081190" in s]
    assert retrieve_urls and all(u.startswith(f"{address}/studies/") for u in retrieve_urls)


ROUTES = [
    ("", ANY_TS),
    ("", 'multipart/related; type="application/dicom"'),  # transcoded to Explicit VR LE by Orthanc
    ("/metadata", "application/dicom+json"),
    ("/series/{se}", ANY_TS),
    ("/series/{se}/metadata", "application/dicom+json"),
    ("/series/{se}/instances/{i}", ANY_TS),
    ("/series/{se}/instances/{i}/metadata", "application/dicom+json"),
    ("/series/{se}/instances/{i}/frames/1", FRAMES),
    ("/series/{se}/instances/{i}/frames/1", "multipart/related; type=application/octet-stream"),
    ("/series/{se}/instances/{i}/rendered", "image/png"),
    ("/series/{se}/instances/{i}/frames/1/rendered", "image/jpeg"),
    ("/series/{se}/instances/{i}/bulk/7fe00010", "multipart/related; type=application/octet-stream"),
    ("/series/{se}/rendered", "image/jpeg"),
    ("/rendered", "image/jpeg"),
]  # searches (QIDO-RS) are compared with Orthanc's answers in tests/integration/test_gateway_qido.py


@pytest.mark.parametrize(("route", "accept"), ROUTES)
def test_bytes_equal_orthancs_own_answer(token_mode: Served, pacs: Pacs, route: str, accept: str) -> None:
    b0 = pacs.b[0]
    path = f"/studies/{pacs.study_b}" + route.format(se=b0.SeriesInstanceUID, i=b0.SOPInstanceUID)
    ours = httpx.get(f"{token_mode.root}/dicomweb{path}", headers={"Accept": accept, **KEYS.headers(READ, P2)})
    theirs = httpx.get(pacs.server.dicomweb_url + path, headers={"Accept": accept, "Accept-Encoding": "identity"})
    assert ours.status_code == theirs.status_code == 200, ours.text[:300]
    no_leak(ours, pacs)
    assert "content-encoding" not in ours.headers
    if ours.headers["content-type"].startswith("multipart/"):
        assert "content-length" not in ours.headers  # re-wrapped: no stale length
        assert parts(ours) == parts(theirs)
    elif "json" in ours.headers["content-type"]:
        # The same datasets; URLs differ by their base only (ours: the gateway's; Orthanc's: its own idea of its host).
        here = f"{token_mode.root}/dicomweb"
        assert json.loads(ours.text.replace(here, "BASE")) == json.loads(
            theirs.text.replace(f"http://{pacs.host.decode()}/dicom-web", "BASE")
        )
    else:
        assert ours.content == theirs.content and ours.headers["content-length"] == str(len(theirs.content))


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        ("image/png, image/jpeg;q=0.8", "image/png"),
        ("image/jpeg;q=0.5, image/png", "image/png"),
        # Chromium's <img> Accept (the capability URL's plain <img src>, wado-gateway.md §4 thumbnailDirect)
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "image/jpeg"),
    ],
)
def test_rendered_takes_an_accept_list_orthanc_refuses(token_mode: Served, pacs: Pacs, accept: str, want: str) -> None:
    """RFC 9110 §12.5.1 lists with q-values are legal; Orthanc 1.10 answers them with 400, the gateway asks for the
    client's preferred image type."""
    b0 = pacs.b[0]
    path = f"/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/rendered"
    assert httpx.get(pacs.server.dicomweb_url + path, headers={"Accept": accept}).status_code == 400
    ours = httpx.get(f"{token_mode.root}/dicomweb{path}", headers={"Accept": accept, **KEYS.headers(READ, P2)})
    assert ours.status_code == 200 and ours.headers["content-type"] == want, ours.text[:300]
    assert ours.content == httpx.get(pacs.server.dicomweb_url + path, headers={"Accept": want}).content


def test_rejected_instance_is_never_served(token_mode: Served, pacs: Pacs) -> None:
    a0, a1 = pacs.a[0], pacs.a[1]
    h = KEYS.headers(READ, P1)
    base = f"{token_mode.root}/dicomweb/studies/{pacs.study_a}/series/{a0.SeriesInstanceUID}"
    for tail, accept in [
        ("", ANY_TS),
        ("/metadata", "application/dicom+json"),
        ("/frames/1", FRAMES),
        ("/rendered", "image/png"),
        ("/bulk/7fe00010", "multipart/related; type=application/octet-stream"),
    ]:
        r = httpx.get(f"{base}/instances/{a0.SOPInstanceUID}{tail}", headers={"Accept": accept, **h})
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome", (tail, r.text)
        no_leak(r, pacs)
    kept = {a1.SOPInstanceUID, *(ds.SOPInstanceUID for ds in pacs.a[2:]), pacs.multiframe.SOPInstanceUID}
    kept.add(pacs.note.SOPInstanceUID)  # the note is a document of the study, not hidden content
    client = DICOMwebClient(url=f"{token_mode.root}/dicomweb", headers=h)
    study = client.retrieve_study(pacs.study_a, media_types=(("application/dicom", "*"),))
    assert {ds.SOPInstanceUID for ds in study} == kept
    series = client.retrieve_series(pacs.study_a, a0.SeriesInstanceUID, media_types=(("application/dicom", "*"),))
    assert [ds.SOPInstanceUID for ds in series] == [a1.SOPInstanceUID]
    metadata = client.retrieve_study_metadata(pacs.study_a)
    assert {ds["00080018"]["Value"][0] for ds in metadata} == kept
    rows = client.search_for_instances(pacs.study_a, a0.SeriesInstanceUID)
    assert [r["00080018"]["Value"][0] for r in rows] == [a1.SOPInstanceUID]
    # Rendering the series renders an instance that is kept (here the only one).
    r = httpx.get(f"{base}/rendered", headers={"Accept": "image/png", **h})
    direct = httpx.get(
        f"{pacs.server.dicomweb_url}/studies/{pacs.study_a}/series/{a0.SeriesInstanceUID}/instances/"
        f"{a1.SOPInstanceUID}/rendered",
        headers={"Accept": "image/png"},
    )
    assert r.status_code == 200 and r.content == direct.content


def test_tokens_that_do_not_cover_the_study_are_refused(token_mode: Served, pacs: Pacs) -> None:
    b0 = pacs.b[0]
    routes = [
        f"/studies/{pacs.study_b}",
        f"/studies/{pacs.study_b}/metadata",
        f"/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/frames/1",
        f"/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/rendered",
        f"/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/bulk/7fe00010",
    ]
    cases = [
        (KEYS.headers(READ, P1), 404),  # another patient's study: as the FHIR read, not even confirmed
        (KEYS.headers("patient/Patient.rs", P2), 403),  # no ImagingStudy scope
        ({"Authorization": f"Bearer {KEYS.token(READ, P2, lifetime=-600)}"}, 401),  # expired past the skew
        ({}, 401),
        ({"Authorization": "Bearer not-a-token"}, 401),
    ]
    for route in routes:
        for headers, status in cases:
            r = httpx.get(f"{token_mode.root}/dicomweb{route}", headers={"Accept": "*/*", **headers})
            assert r.status_code == status, (route, status, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
            no_leak(r, pacs)
    # A search inside another patient's study finds nothing, as one inside an unknown study (issue 20 rule 2;
    # tests/integration/test_gateway_qido.py has the rest); without ImagingStudy read it is refused alike.
    for headers, status in cases:
        r = httpx.get(f"{token_mode.root}/dicomweb/studies/{pacs.study_b}/series", headers=headers)
        assert r.status_code == (200 if status == 404 else status), r.text
        assert r.json() == [] if status == 404 else r.json()["resourceType"] == "OperationOutcome"
    # A series of study A is not reachable under study B, even with a token that may see both.
    a1 = pacs.a[1]
    for route in (
        f"/studies/{pacs.study_b}/series/{a1.SeriesInstanceUID}",
        f"/studies/{pacs.study_b}/series/{a1.SeriesInstanceUID}/instances/{a1.SOPInstanceUID}",
    ):
        r = httpx.get(f"{token_mode.root}/dicomweb{route}", headers=KEYS.headers("user/ImagingStudy.rs"))
        assert r.status_code == 404, r.text


def test_path_tricks_are_404(token_mode: Served, pacs: Pacs) -> None:
    h = KEYS.headers("user/ImagingStudy.rs")
    b0 = pacs.b[0]
    paths = [
        "/dicomweb/studies/not-a-uid/series",
        f"/dicomweb/studies/{pacs.study_b}/series/1.02/instances",
        f"/dicomweb/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/%2E%2E/%2E%2E/{pacs.study_a}",
        f"/dicomweb/studies/{pacs.study_b}%2Fseries%2F{b0.SeriesInstanceUID}",
        f"/dicomweb/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}%2F..%2F..",
        "/dicomweb/studies/not-a-uid",
        "/dicomweb/studies/1.02.3",
        f"/dicomweb/studies/{pacs.study_b}/series/x/instances/y",
        f"/dicomweb/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/frames/0",
        f"/dicomweb/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/frames/1;2",
        f"/dicomweb/studies/{pacs.study_b}/series/{b0.SeriesInstanceUID}/instances/{b0.SOPInstanceUID}/bulk/x/../y",
        f"/dicomweb/studies/{pacs.study_b}/thumbnails",
    ]
    with httpx.Client(base_url=token_mode.root) as client:
        for path in paths:
            # a raw request target, so neither httpx nor anything else normalises the dots
            request = client.build_request("GET", path, headers=h)
            request.url = request.url.copy_with(raw_path=path.encode())
            r = client.send(request)
            assert r.status_code == 404, (path, r.status_code, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
            no_leak(r, pacs)


def test_pacs_refusal_passes_through_without_its_body(token_mode: Served, pacs: Pacs) -> None:
    r = httpx.get(
        f"{token_mode.root}/dicomweb/studies/{pacs.study_b}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"', **KEYS.headers(READ, P2)},
    )
    direct = httpx.get(
        f"{pacs.server.dicomweb_url}/studies/{pacs.study_b}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert r.status_code == direct.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    no_leak(r, pacs)


# -------------------------------------------------------------------------------------------- capability mode


def test_capability_address_retrieves_without_a_token(capability_mode: Served, pacs: Pacs) -> None:
    address = address_of(capability_mode, pacs.study_b, KEYS.headers(READ, P2))
    assert address.startswith(f"{capability_mode.root}/dicomweb/c/")
    client = DICOMwebClient(url=address)  # no Authorization header: the address carries the permission
    study = client.retrieve_study(pacs.study_b, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(ds.SOPInstanceUID for ds in pacs.b)
    metadata = client.retrieve_study_metadata(pacs.study_b)
    uris = [e["BulkDataURI"] for ds in metadata for e in ds.values() if isinstance(e, dict) and "BulkDataURI" in e]
    assert uris and all(u.startswith(f"{address}/studies/{pacs.study_b}/") for u in uris)
    assert client.retrieve_bulkdata(uris[0], media_types=("application/octet-stream",))
    b0 = pacs.b[0]
    frames = client.retrieve_instance_frames(
        pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID, [1], media_types=(("application/octet-stream", "*"),)
    )
    assert frames
    assert client.retrieve_instance_rendered(
        pacs.study_b, b0.SeriesInstanceUID, b0.SOPInstanceUID, media_types=("image/png",)
    ).startswith(b"\x89PNG")


def test_capabilities_cannot_be_widened_edited_or_outlived(capability_mode: Served, pacs: Pacs) -> None:
    address = address_of(capability_mode, pacs.study_b, KEYS.headers(READ, P2))
    cap = address.rsplit("/c/", 1)[1]
    now = time.time()
    expired = capability.issue(pacs.study_b, keys=CAP_KEYS, ttl=10, not_after=None, now=now - 3600, patient=P2)
    foreign = capability.issue(pacs.study_b, keys=("z" * 40,), ttl=600, not_after=None, now=now, patient=P2)
    edited = cap[:-2] + ("AA" if not cap.endswith("AA") else "BB")
    root = f"{capability_mode.root}/dicomweb/c"
    for url in (
        f"{root}/{cap}/studies/{pacs.study_a}",  # another study under B's capability
        f"{root}/{cap}/studies/{pacs.study_a}/metadata",
        f"{root}/{edited}/studies/{pacs.study_b}",
        f"{root}/{expired}/studies/{pacs.study_b}",
        f"{root}/{foreign}/studies/{pacs.study_b}/metadata",
        f"{root}/{cap}x/studies/{pacs.study_b}",
    ):
        r = httpx.get(url, headers={"Accept": "*/*"})
        assert r.status_code in (401, 404), (url, r.status_code)
        assert r.json()["resourceType"] == "OperationOutcome"
        no_leak(r, pacs)
    # Signed by the second key of the list (rotation): accepted.
    rotated = capability.issue(pacs.study_b, keys=CAP_KEYS[1:], ttl=600, not_after=None, now=now, patient=P2)
    assert httpx.get(f"{root}/{rotated}/studies/{pacs.study_b}/metadata").status_code == 200
    # A genuine capability whose patient is not the study's (a forged grant is impossible, but the check holds).
    other = capability.issue(pacs.study_b, keys=CAP_KEYS, ttl=600, not_after=None, now=now, patient=P1)
    assert httpx.get(f"{root}/{other}/studies/{pacs.study_b}/metadata").status_code == 404
    with pytest.raises(HTTPError):
        DICOMwebClient(url=f"{root}/{cap}").retrieve_study_metadata(pacs.study_a)
