"""The demo viewer (GET /viewer) in headless Debian Chromium against a real facade and the session's Orthanc.

The page runs a patient search from its query string, follows every next link, opens a study and fetches a rendered
thumbnail per image series through the WADO-RS gateway; its DOM is read back (``--dump-dom`` after virtual time).
Checked against the generated data's truth: exactly the patient's studies, on more than one page, and a decoded
image per image series. In smart mode: the token from the URL fragment is used for FHIR and WADO-RS alike, and
without one the page shows the OperationOutcome of the 401.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from app.fhir import patient_ids
from tests.integration.test_landing_browser import dump_dom
from tests.support.facade import FacadeProcess
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


def _read(url: str) -> _Dom:
    dom = _Dom()
    dom.feed(dump_dom(url, "--virtual-time-budget=30000"))
    assert dom.body.get("data-idle") == "1", "the page did not finish"
    return dom


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


@pytest.fixture(scope="module")
def smart_facade(orthanc, tmp_path_factory) -> Iterator[tuple[FacadeProcess, TokenIssuer]]:
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(tmp_path_factory.mktemp("viewer-jwks"))
    env = {
        "FACADE_AUTH_MODE": "smart",
        "FACADE_JWKS_FILE": str(jwks),
        "FACADE_TOKEN_ISSUER": ISSUER,
        "FACADE_TOKEN_AUDIENCE": AUDIENCE,
    }
    with FacadeProcess(orthanc.dicomweb_url, env=env) as facade:
        yield facade, issuer


def test_with_smart_the_token_in_the_fragment_opens_fhir_and_wado(orthanc, smart_facade):
    facade, issuer = smart_facade
    patient, studies = _patient(orthanc)
    root = facade.base.removesuffix("/fhir/R4")
    token = issuer.token("user/*.read", lifetime=600)
    dom = _read(f"{root}/viewer?patient={quote(patient)}&open=first#access_token={token}")
    assert dom.error == ""
    assert sorted(dom.rows) == sorted(s.study_uid for s in studies)
    loaded = [f for f in dom.figures if f.get("loaded")]
    assert loaded and all(int(f["loaded"] or 0) > 0 for f in loaded)


def test_with_smart_and_no_token_the_page_shows_the_401(orthanc, smart_facade):
    facade, _ = smart_facade
    patient, _ = _patient(orthanc)
    dom = _read(f"{facade.base.removesuffix('/fhir/R4')}/viewer?patient={quote(patient)}")
    assert dom.rows == [] and dom.error.startswith("HTTP 401: "), dom.error
