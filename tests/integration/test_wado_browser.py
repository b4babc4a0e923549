"""CORS in a real browser: a page on another origin fetches FHIR, then a study's metadata and a frame through the
WADO-RS gateway, with a bearer token (headless Debian Chromium; the page's script writes what it saw into the DOM).

The Fetch standard sends a preflight for these requests (an Authorization header, a non-simple Accept), so this
proves that the preflight answer names `authorization` and `accept`, that the answers carry
Access-Control-Allow-Origin (a 401 too, or the script would see a network error instead), and that the headers a
viewer reads are exposed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.test_landing_browser import dump_dom
from tests.support.facade import FacadeProcess, free_port
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

pytestmark = pytest.mark.integration

SCRIPT = """
const out = {};
async function run() {
  const auth = {"Authorization": "Bearer " + TOKEN};
  const search = await fetch(BASE + "/ImagingStudy?modality=CT&_count=1&_include=ImagingStudy:endpoint",
                             {headers: {...auth, "Accept": "application/fhir+json"}});
  out.search = search.status;
  const bundle = await search.json();
  const study = bundle.entry.find(e => e.resource.resourceType === "ImagingStudy").resource;
  const endpoint = bundle.entry.find(e => e.resource.resourceType === "Endpoint").resource;
  const series = study.series.find(s => s.modality.code !== "KO");
  const base = endpoint.address + "/studies/" + study.identifier[0].value.replace("urn:oid:", "") +
               "/series/" + series.uid;
  out.address = endpoint.address;
  const meta = await fetch(base + "/metadata", {headers: {...auth, "Accept": "application/dicom+json"}});
  out.metadata = meta.status;
  out.metadataInstances = (await meta.json()).length;
  out.metadataType = meta.headers.get("content-type");
  const frame = await fetch(base + "/instances/" + series.instance[0].uid + "/frames/1",
      {headers: {...auth, "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}});
  out.frame = frame.status;
  out.frameType = frame.headers.get("content-type");
  out.frameBytes = (await frame.arrayBuffer()).byteLength;
  const anonymous = await fetch(base + "/metadata", {headers: {"Accept": "application/dicom+json"}});
  out.anonymous = anonymous.status;
  out.challenge = anonymous.headers.get("www-authenticate");
}
run().catch(e => { out.error = String(e); }).finally(() => {
  document.getElementById("out").textContent = JSON.stringify(out);
});
"""


class _Out(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside = ("id", "out") in attrs

    def handle_endtag(self, tag: str) -> None:
        self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data


def _page_server(html: bytes, port: int) -> ThreadingHTTPServer:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def setup(orthanc, tmp_path_factory) -> Iterator[tuple[FacadeProcess, TokenIssuer, int]]:
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(tmp_path_factory.mktemp("browser-jwks"))
    page_port = free_port()
    env = {
        "FACADE_AUTH_MODE": "smart",
        "FACADE_JWKS_FILE": str(jwks),
        "FACADE_TOKEN_ISSUER": ISSUER,
        "FACADE_TOKEN_AUDIENCE": AUDIENCE,
        "FACADE_CORS_ORIGINS": f"http://127.0.0.1:{page_port}",
    }
    with FacadeProcess(orthanc.dicomweb_url, env=env) as facade:
        yield facade, issuer, page_port


def test_a_page_on_another_origin_fetches_metadata_and_a_frame_with_a_token(setup):
    facade, issuer, page_port = setup
    token = issuer.token("user/*.read", lifetime=600)
    html = (
        "<!DOCTYPE html><html><body><pre id='out'>pending</pre><script>"
        f"const BASE = {json.dumps(facade.base)}; const TOKEN = {json.dumps(token)};{SCRIPT}"
        "</script></body></html>"
    ).encode()
    server = _page_server(html, page_port)  # the origin the facade allows
    try:
        reader = _Out()
        # Virtual time lets the page's fetches finish before the DOM is read back.
        reader.feed(dump_dom(f"http://127.0.0.1:{page_port}/", "--virtual-time-budget=20000"))
    finally:
        server.shutdown()
        server.server_close()
    seen = json.loads(reader.text)
    assert "error" not in seen, seen
    assert seen["search"] == 200 and seen["address"] == facade.base.removesuffix("/fhir/R4") + "/dicomweb"
    assert seen["metadata"] == 200 and seen["metadataInstances"] >= 1
    assert seen["metadataType"].startswith("application/dicom+json")
    assert seen["frame"] == 200 and seen["frameBytes"] > 0 and seen["frameType"].startswith("multipart/related")
    # The error answer is readable by the page (CORS headers on a 401 too), challenge header exposed.
    assert seen["anonymous"] == 401 and seen["challenge"].startswith("Bearer")
