"""The demo viewer's page and script as served (app.http.viewer): what the browser is allowed to do, and that no
data can reach the DOM as HTML. Its behaviour in a browser: tests/integration/test_viewer_browser.py."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from app.http import viewer
from app.main import create_app
from app.settings import Settings


def _policy(headers: dict[str, str]) -> dict[str, str]:
    parts = (p.strip().split(" ", 1) for p in headers["Content-Security-Policy"].split(";"))
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


def test_the_policy_allows_only_the_own_script_the_fhir_and_wado_origins_and_blob_images():
    csp = _policy(viewer.headers(["https://fhir.example.org/base/fhir/R4", "https://pacs.example.org:8443/wado"]))
    assert csp["script-src"] == "'self'"  # no inline script, no eval
    assert csp["connect-src"] == "'self' https://fhir.example.org https://pacs.example.org:8443"
    assert (csp["default-src"], csp["img-src"], csp["form-action"]) == ("'none'", "blob:", "'none'")


def test_the_page_escapes_its_base_and_the_script_writes_text_only():
    html = viewer.page('https://x.example/"><script>alert(1)</script>', "/viewer.js")
    assert "<script>alert" not in html and "&quot;&gt;&lt;script&gt;" in html
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "document.write", "localStorage"):
        assert unsafe not in viewer.SCRIPT, unsafe


def test_nothing_is_loaded_from_elsewhere_and_no_address_is_hard_coded():
    html = viewer.page("https://img.example/fhir/R4", "/viewer.js")
    # The only absolute URL is the FHIR base handed to the script; the WADO-RS base comes from each Endpoint.
    assert re.findall(r"[a-z][a-z0-9+.-]*://[^\"'\s<>]*", html) == ["https://img.example/fhir/R4"]
    assert '<script src="/viewer.js"' in html and html.count("<script") == 1  # no inline script
    assert "://" not in re.sub(r'"http://fhir\.org/[^"]*"', "", viewer.SCRIPT)  # only the extension's URL


def test_routes_serve_the_page_and_the_script():
    settings = Settings(auth_mode="open", dicomweb_url="http://pacs.test/dicom-web", public_url="https://img.example")
    with TestClient(create_app(settings)) as client:
        page = client.get("/viewer")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'data-fhir="https://img.example/fhir/R4"' in page.text and "pacs.test" not in page.text
        assert "https://img.example" in page.headers["content-security-policy"]
        assert "pacs.test" not in page.headers["content-security-policy"]  # gateway mode: the PACS is not reached
        script = client.get("/viewer.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert script.headers["x-content-type-options"] == "nosniff"
