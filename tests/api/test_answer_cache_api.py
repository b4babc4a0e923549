"""The finished-answer cache (app.http.answers, issue 14): same bytes on a hit, and every rule of the QIDO cache."""

from __future__ import annotations

import httpx

from app.http.answers import Answer, AnswerCache
from app.pacs.cache import CachedQido
from tests.api.conftest import PACS, instance_row, study_row
from tests.api.test_auth_api import (
    KEYS,
    A,
    B,
    smart,  # noqa: F401  (fixture)
)
from tests.api.test_auth_api import _pacs as two_patients

SEARCH = "/fhir/R4/ImagingStudy?modality=CT"
READ = "/fhir/R4/ImagingStudy/1.2.3"


def _serve(pacs, accession="ACCOLD"):
    s = pacs.get(url__regex=rf"^{PACS}/studies").mock(
        return_value=httpx.Response(200, json=[study_row("1.2.3", accession=accession)])
    )
    i = pacs.get(url__regex=rf"^{PACS}/instances").mock(
        return_value=httpx.Response(200, json=[instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1")])
    )
    return s, i


def _calls(pacs):
    return len(pacs.calls)


def test_a_hit_returns_identical_bytes_without_the_pacs(pacs, client):
    _serve(pacs)
    for url in (SEARCH, READ, SEARCH + "&_pretty=true"):
        first = client.get(url)
        n = _calls(pacs)
        again = client.get(url)
        assert again.status_code == first.status_code == 200
        assert again.content == first.content and again.headers["content-type"] == first.headers["content-type"]
        assert _calls(pacs) == n
    assert client.get(SEARCH + "&_pretty=true").content != client.get(SEARCH).content  # _pretty is in the key
    assert client.app.state.answers.hits >= 3


def test_no_cache_goes_to_the_pacs_and_refreshes_the_answer(pacs, client):
    studies, _ = _serve(pacs, "ACCOLD")
    assert "ACCOLD" in client.get(SEARCH).text
    studies.mock(return_value=httpx.Response(200, json=[study_row("1.2.3", accession="ACCNEW")]))
    assert "ACCOLD" in client.get(SEARCH).text  # cached
    n = _calls(pacs)
    assert "ACCNEW" in client.get(SEARCH, headers={"Cache-Control": "no-cache"}).text
    assert _calls(pacs) > n
    assert "ACCNEW" in client.get(SEARCH).text  # the refreshed answer is the one kept


def test_a_stored_manifest_clears_the_answers(pacs, client):
    studies, _ = _serve(pacs, "ACCOLD")
    client.get(SEARCH)
    studies.mock(return_value=httpx.Response(200, json=[study_row("1.2.3", accession="ACCNEW")]))
    # ManifestWriter calls ``stored`` (= CachedQido.clear, app.usecases.service) after a STOW-RS of a new manifest.
    assert client.app.state.facade.writer._stored == client.app.state.facade.qido.invalidate
    client.app.state.facade.qido.clear()
    assert "ACCNEW" in client.get(SEARCH).text


def test_the_base_url_of_the_links_is_part_of_the_key(pacs, client):
    _serve(pacs)
    here = client.get(SEARCH).json()
    there = client.get(SEARCH, headers={"host": "other.example:8443"}).json()
    assert here["entry"][0]["fullUrl"].startswith("http://testserver/fhir/R4/")
    assert there["entry"][0]["fullUrl"].startswith("http://other.example:8443/fhir/R4/")


def test_errors_are_never_kept(pacs, client):
    route = pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(500))
    pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=[]))
    assert client.get(SEARCH).status_code == 502
    route.mock(return_value=httpx.Response(200, json=[study_row("1.2.3")]))
    assert client.get(SEARCH).status_code == 200


def test_stale_if_error_answers_are_never_kept(pacs, make_client):
    client = make_client(upstream_retries=0, breaker_failures=0, cache_stale_ttl=60)
    studies, instances = _serve(pacs)
    good = client.get(SEARCH).content
    studies.mock(side_effect=httpx.ConnectError("down"))
    instances.mock(side_effect=httpx.ConnectError("down"))
    # no-cache alone would get the error (RFC 9111 §5.2.1.4); with stale-if-error the client takes the kept answer
    stale = client.get(SEARCH, headers={"Cache-Control": "no-cache, stale-if-error=60"})
    assert stale.status_code == 200 and b"may be out of date" in stale.content
    assert client.get(SEARCH).content == good  # the kept answer, not the warning


def test_never_served_across_authorization_partitions(pacs, smart):  # noqa: F811
    two_patients(pacs)
    a, b = KEYS.headers("patient/ImagingStudy.rs", A), KEYS.headers("patient/ImagingStudy.rs", B)
    assert smart.get(READ, headers=a).status_code == 200
    assert smart.get(READ, headers=a).status_code == 200  # A's hit
    assert smart.get(READ, headers=b).status_code == 404  # not A's answer
    user = KEYS.headers("user/ImagingStudy.rs")
    wide = KEYS.headers("user/ImagingStudy.rs user/Patient.rs")
    smart.get("/fhir/R4/ImagingStudy", headers=user)
    n = _calls(pacs)
    smart.get("/fhir/R4/ImagingStudy", headers=KEYS.headers("user/ImagingStudy.read"))  # same grants: a hit
    assert _calls(pacs) == n
    smart.get("/fhir/R4/ImagingStudy", headers=wide)  # other grants: its own PACS calls
    assert _calls(pacs) > n


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_and_byte_budget():
    clock = _Clock()
    qido = CachedQido(None, ttl=60, max_bytes=1000)  # type: ignore[arg-type]
    cache = AnswerCache(qido, ttl=60, max_bytes=100, clock=clock)
    cache.put("k", Answer(b"x" * 10, {}))
    assert cache.get("k") is not None
    clock.now = 61
    assert cache.get("k") is None  # TTL
    cache.put("big", Answer(b"x" * 200, {}))
    assert cache.get("big") is None  # larger than the budget: not kept
    for i in range(20):
        cache.put(i, Answer(b"x" * 10, {}))
    assert cache.size_bytes <= 100  # LRU past the budget
    cache.put("k", Answer(b"x", {}))
    qido.clear()
    assert cache.get("k") is None  # follows the QIDO cache's clear


def test_differently_spelled_searches_share_an_answer_that_a_new_parse_would_give(pacs, client):
    _serve(pacs)
    client.get("/fhir/R4/ImagingStudy?modality=CT&_count=5")
    n = _calls(pacs)
    other = client.get("/fhir/R4/ImagingStudy?_count=5&modality=CT")
    assert _calls(pacs) == n  # the same canonical request: a hit
    assert other.content == client.get("/fhir/R4/ImagingStudy?_count=5&modality=CT").content  # now by its alias
    rebuilt = client.get("/fhir/R4/ImagingStudy?_count=5&modality=CT", headers={"Cache-Control": "no-cache"})
    assert rebuilt.content == other.content


def test_a_strict_search_is_not_answered_from_a_lenient_one(pacs, client):
    _serve(pacs)
    assert client.get(SEARCH + "&unknown-param=1").status_code == 200  # lenient: ignored
    r = client.get(SEARCH + "&unknown-param=1", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400


def test_an_alias_does_not_extend_the_answer_s_ttl():
    clock = _Clock()
    cache = AnswerCache(CachedQido(None, ttl=60, max_bytes=1000), ttl=60, max_bytes=100, clock=clock)  # type: ignore[arg-type]
    cache.put("k", Answer(b"x", {}), alias="q1")
    clock.now = 50
    cache.alias("q2", "k")
    assert cache.lookup("q2") is not None
    clock.now = 61
    assert cache.lookup("q2") is None and cache.lookup("q1") is None and cache.get("k") is None
