"""GET /: the landing page (its rendering in a real browser: tests/integration/test_landing_browser.py)."""

from __future__ import annotations


def test_open_mode_page_lists_the_bases_and_says_it_is_open(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://testserver/fhir/R4" in r.text and "http://testserver/fhir/R5" in r.text
    assert "Open mode" in r.text and 'href="/fhir/R4/metadata"' in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_smart_mode_page_says_a_token_is_needed_and_needs_none_itself(make_client, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}', encoding="utf-8")
    client = make_client(
        auth_mode="smart", jwks_file=str(jwks), token_issuer="https://auth", token_audience="https://fhir"
    )
    r = client.get("/")
    assert r.status_code == 200 and "bearer token" in r.text and "Open mode" not in r.text
    assert client.get("/fhir/R4/ImagingStudy").status_code == 401


def test_the_host_header_cannot_inject_markup(client):
    r = client.get("/", headers={"host": 'evil"><script>x</script>'})
    assert "<script>" not in r.text
