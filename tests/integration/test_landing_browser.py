"""The landing page (GET /) in a real browser: Debian's Chromium, headless, against a real facade process.

Chromium renders the page and its DOM is read back (``--dump-dom``): the title, the FHIR bases and every link;
then the browser itself opens the links, which must answer (open mode, the session's Orthanc behind).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest

from tests.support.facade import FacadeProcess

pytestmark = pytest.mark.integration

# The flags the machine notes give for a closed network (no background connections, no first-run work).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
            pytest.fail("Chromium is not installed (apt-get install chromium)", pytrace=False)
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def dump_dom(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, *extra, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.title = ""
        self._in_title = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        self.text.append(data)


@pytest.fixture(scope="module")
def facade(orthanc):
    with FacadeProcess(orthanc.dicomweb_url) as process:
        yield process


def test_the_landing_page_renders_in_chromium_and_its_links_answer(facade):
    root = facade.base.removesuffix("/fhir/R4")
    page = _Page()
    page.feed(dump_dom(root + "/"))
    text = " ".join(page.text)
    assert page.title == "Imaging FHIR facade"
    assert f"{root}/fhir/R4" in text and f"{root}/fhir/R5" in text
    assert "Open mode" in text
    assert {"/fhir/R4/metadata", "/fhir/R5/metadata", "/healthz", "/readyz"} <= set(page.links)
    searches = [link for link in page.links if "?" in link]
    assert len(searches) >= 4
    # The browser follows the links: FHIR JSON comes back (Chromium shows it as text in a <pre>).
    for link in ["/fhir/R4/metadata", *searches]:
        shown = dump_dom(urljoin(root + "/", link))
        assert '"resourceType"' in shown and "OperationOutcome" not in shown, (link, shown[:300])
        assert ("Bundle" if "?" in link else "CapabilityStatement") in shown, (link, shown[:300])
