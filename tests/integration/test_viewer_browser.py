"""The demo viewer (GET /viewer) in headless Debian Chromium against a real facade and the session's Orthanc.

The page runs a patient search from its query string, follows every next link, opens a study and fetches a rendered
thumbnail per image series through the WADO-RS gateway; its DOM is read back (``--dump-dom`` after virtual time).
Checked against the generated data's truth: exactly the patient's studies, on more than one page, and a decoded
image per image series. In smart mode: the token from the URL fragment is used for FHIR and WADO-RS alike, and
without one (401), for another patient (403) or with the PACS down (503, Retry-After) the page shows the
OperationOutcome. In capability mode the page follows each study's contained Endpoint without the token. What the
browser really sent is read from Chromium's own network log (``--log-net-log``), not from the page.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest

from app.fhir import patient_ids
from tests.integration.test_landing_browser import dump_dom
from tests.support.facade import FacadeProcess, free_port
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

pytestmark = pytest.mark.integration
IMAGE_MODALITIES = {"CT", "MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "OT"}


class _Dom(HTMLParser):
    """The attributes of the elements the viewer marks: study rows, figures, images, status and error."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.figures: list[dict[str, str | None]] = []
        self.status: dict[str, str | None] = {}
        self.error = ""
        self.body: dict[str, str | None] = {}
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-study"):
            self.rows.append(a["data-study"] or "")
        elif tag == "figure":
            self.figures.append(dict(a))
        elif tag == "img" and self.figures:
            self.figures[-1]["loaded"] = a.get("data-loaded", "")
        elif tag == "p" and a.get("id") == "status":
            self.status = a
        elif tag == "body":
            self.body = a
        self._in_error = tag == "p" and a.get("id") == "error"

    def handle_endtag(self, tag: str) -> None:
        self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error:
            self.error += data


def _read(url: str, net_log: Path | None = None) -> _Dom:
    """The page's DOM once it is idle; ``net_log``: where Chromium writes what it sent (headers unredacted)."""
    log = (f"--log-net-log={net_log}", "--net-log-capture-mode=IncludeSensitive") if net_log else ()
    dom = _Dom()
    dom.feed(dump_dom(url, "--virtual-time-budget=30000", *log))
    assert dom.body.get("data-idle") == "1", "the page did not finish"
    return dom


def _sent(net_log: Path) -> list[tuple[str, dict[str, str]]]:
    """(request line, headers) of every HTTP request in a Chromium NetLog (a JSON file; an unfinished one lacks its
    closing brackets)."""
    text = net_log.read_text(encoding="utf-8").rstrip()
    log = json.loads(text if text.endswith("}") else text.rstrip(",") + "]}")
    kind = log["constants"]["logEventTypes"]["HTTP_TRANSACTION_SEND_REQUEST_HEADERS"]
    requests = []
    for event in log["events"]:
        if event["type"] == kind:
            params = event["params"]
            fields = (h.split(": ", 1) for h in params["headers"])
            requests.append((params["line"].strip(), {k.lower(): v for k, v in fields}))
    return requests


def _patient(orthanc) -> tuple[str, list]:
    """A patient with at least two studies (one per page makes two pages or more)."""
    by_patient = Counter((s.patient_id, s.issuer) for s in orthanc.manifest.studies)
    (pid, issuer), n = by_patient.most_common(1)[0]
    assert n >= 2, by_patient
    studies = [s for s in orthanc.manifest.studies if (s.patient_id, s.issuer) == (pid, issuer)]
    return patient_ids.encode(pid, issuer), studies


@pytest.fixture(scope="module")
def open_facade(orthanc) -> Iterator[FacadeProcess]:
    with FacadeProcess(orthanc.dicomweb_url) as facade:
        yield facade


def test_the_viewer_lists_every_study_of_the_patient_and_renders_each_series(orthanc, open_facade):
    patient, studies = _patient(orthanc)
    root = open_facade.base.removesuffix("/fhir/R4")
    chosen = max(studies, key=lambda s: len(s.series))
    dom = _read(f"{root}/viewer?patient={quote(patient)}&count=1&open={chosen.study_uid}")
    assert dom.error == ""
    assert sorted(dom.rows) == sorted(s.study_uid for s in studies)  # every page followed, none twice
    assert dom.status.get("data-pages") == str(len(studies))
    figures = {f["data-series"]: f for f in dom.figures}
    assert set(figures) == {s.uid for s in chosen.series}
    for series in chosen.series:
        figure = figures[series.uid]
        if series.modality in IMAGE_MODALITIES and series.instances:
            assert figure.get("data-error") is None, figure
            assert int(figure.get("loaded") or 0) > 0, figure  # decoded by the browser: a real image
        else:
            assert figure.get("loaded") is None, figure  # KO, SR…: named, not rendered


def test_an_unknown_patient_shows_no_studies_and_no_error(open_facade):
    root = open_facade.base.removesuffix("/fhir/R4")
    dom = _read(f"{root}/viewer?patient=nobody-here")
    assert (dom.rows, dom.error, dom.status.get("data-studies")) == ([], "", "0")


def _smart_facade(orthanc, tmp_path_factory, **more: str) -> Iterator[tuple[FacadeProcess, TokenIssuer]]:
    """A facade in smart mode whose tokens ``issuer`` signs; ``more``: further FACADE_* settings."""
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(tmp_path_factory.mktemp("viewer-jwks"))
    env = {
        "FACADE_AUTH_MODE": "smart",
        "FACADE_JWKS_FILE": str(jwks),
        "FACADE_TOKEN_ISSUER": ISSUER,
        "FACADE_TOKEN_AUDIENCE": AUDIENCE,
    } | more
    with FacadeProcess(orthanc.dicomweb_url, env=env) as facade:
        yield facade, issuer


@pytest.fixture(scope="module")
def smart_facade(orthanc, tmp_path_factory) -> Iterator[tuple[FacadeProcess, TokenIssuer]]:
    yield from _smart_facade(orthanc, tmp_path_factory)


def test_with_smart_the_token_in_the_fragment_opens_fhir_and_wado(orthanc, smart_facade, tmp_path):
    facade, issuer = smart_facade
    patient, studies = _patient(orthanc)
    root = facade.base.removesuffix("/fhir/R4")
    token = issuer.token("user/*.read", lifetime=600)
    dom = _read(f"{root}/viewer?patient={quote(patient)}&open=first#access_token={token}", tmp_path / "net.json")
    assert dom.error == ""
    assert sorted(dom.rows) == sorted(s.study_uid for s in studies)
    loaded = [f for f in dom.figures if f.get("loaded")]
    assert loaded and all(int(f["loaded"] or 0) > 0 for f in loaded)
    sent = _sent(tmp_path / "net.json")
    api = [(line, h) for line, h in sent if " /fhir/R4/" in line or " /dicomweb/" in line]
    assert any("/rendered " in line for line, _ in api)
    # The gateway's Endpoint says requires-access-token true: the token goes to FHIR and WADO-RS alike, as a header.
    assert api and all(h.get("authorization") == f"Bearer {token}" for _, h in api), api
    assert all(token not in line for line, _ in sent)  # never in a URL (the fragment is not sent)


def test_with_smart_and_no_token_the_page_shows_the_401(orthanc, smart_facade):
    facade, _ = smart_facade
    patient, _ = _patient(orthanc)
    dom = _read(f"{facade.base.removesuffix('/fhir/R4')}/viewer?patient={quote(patient)}")
    assert dom.rows == [] and dom.error.startswith("HTTP 401: "), dom.error


def test_with_smart_a_token_for_another_patient_shows_the_403(orthanc, smart_facade):
    facade, issuer = smart_facade
    patient, _ = _patient(orthanc)
    other = next(s for s in orthanc.manifest.studies if patient_ids.encode(s.patient_id, s.issuer) != patient)
    token = issuer.token("patient/*.read", patient=patient_ids.encode(other.patient_id, other.issuer))
    dom = _read(f"{facade.base.removesuffix('/fhir/R4')}/viewer?patient={quote(patient)}#access_token={token}")
    assert dom.rows == [] and dom.error.startswith("HTTP 403: "), dom.error


def test_with_the_pacs_down_the_page_shows_the_503_and_when_to_retry(orthanc):
    patient, _ = _patient(orthanc)  # a well-formed id, so the facade has to ask the PACS
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    with FacadeProcess(closed, env={"FACADE_UPSTREAM_RETRIES": "0"}) as facade:
        dom = _read(f"{facade.base.removesuffix('/fhir/R4')}/viewer?patient={quote(patient)}")
    assert dom.rows == [] and dom.error.startswith("HTTP 503: "), dom.error
    assert dom.error.endswith("(try again in 5 s)"), dom.error  # Retry-After, exposed by the facade


@pytest.fixture(scope="module")
def capability_facade(orthanc, tmp_path_factory) -> Iterator[tuple[FacadeProcess, TokenIssuer]]:
    yield from _smart_facade(
        orthanc,
        tmp_path_factory,
        FACADE_WADO_ACCESS="capability",
        FACADE_CAPABILITY_KEYS="viewer-test-capability-key-" + "k" * 20,
    )


def test_in_capability_mode_the_contained_endpoint_is_followed_without_the_token(orthanc, capability_facade, tmp_path):
    facade, issuer = capability_facade
    patient, studies = _patient(orthanc)
    token = issuer.token("user/*.read", lifetime=600)
    root = facade.base.removesuffix("/fhir/R4")
    dom = _read(f"{root}/viewer?patient={quote(patient)}&open=first#access_token={token}", tmp_path / "net.json")
    assert dom.error == ""
    assert sorted(dom.rows) == sorted(s.study_uid for s in studies)
    loaded = [f for f in dom.figures if f.get("loaded")]
    assert loaded and all(int(f["loaded"] or 0) > 0 for f in loaded), dom.figures
    sent = _sent(tmp_path / "net.json")
    fhir = [h for line, h in sent if " /fhir/R4/" in line]
    wado = [(line, h) for line, h in sent if " /dicomweb/" in line]
    assert fhir and all(h.get("authorization") == f"Bearer {token}" for h in fhir)
    # requires-access-token false: the capability in the address is the permission, the token stays home.
    assert wado and all(" /dicomweb/c/" in line and "authorization" not in h for line, h in wado), wado
