"""Upstream faults through the whole app: breaker → fast 503 + Retry-After, stale-if-error marked as such, PACS
credentials (bearer from settings, or the caller's token forwarded) and Prometheus series for upstream calls."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.errors import outcome
from app.main import create_app
from tests.api.conftest import PACS, instance_row, settings, study_row
from tests.support.fhir_check import check, checking_client
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer


def _ok(pacs):
    s = pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[study_row("1.2.3")]))
    i = pacs.get(url__regex=rf"^{PACS}/instances").mock(
        return_value=httpx.Response(200, json=[instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1")])
    )
    return s, i


def test_breaker_opens_and_then_answers_fast_without_calling_the_pacs(pacs, make_client):
    # A fixed 30 s period here (initial = reset); the adaptive one from 1 s is in tests/api/test_pacs_standin.py.
    client = make_client(
        breaker_failures=2, breaker_reset=30, breaker_initial_reset=30, upstream_retries=0, cache_stale_ttl=0
    )
    route = pacs.get(url__startswith=PACS).mock(side_effect=httpx.ConnectError("refused"))
    for _ in range(2):
        assert client.get("/fhir/R4/ImagingStudy?modality=CT").status_code == 503
    calls = route.call_count
    started = time.perf_counter()
    r = client.get("/fhir/R4/ImagingStudy?modality=MR")
    assert time.perf_counter() - started < 0.5
    assert r.status_code == 503 and 25 <= int(r.headers["retry-after"]) <= 30
    assert r.json()["resourceType"] == "OperationOutcome" and route.call_count == calls
    assert client.get("/readyz").status_code == 503
    assert "facade_upstream_breaker_state 2.0" in client.get("/metrics").text


def test_the_breaker_opens_for_breaker_initial_reset_first(pacs, make_client):
    client = make_client(breaker_failures=2, upstream_retries=0, cache_stale_ttl=0)
    pacs.get(url__startswith=PACS).mock(side_effect=httpx.ConnectError("refused"))
    for _ in range(2):
        assert client.get("/fhir/R4/ImagingStudy?modality=CT").status_code == 503
    r = client.get("/fhir/R4/ImagingStudy?modality=MR")
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "circuit breaker" in r.text


def test_a_hung_pacs_answers_504_within_the_budget():
    calls = 0

    async def hung(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(30)  # a mock transport ignores timeouts: only the request's budget ends this
        raise AssertionError("unreachable")

    options = {"upstream_budget": 0.5, "upstream_retries": 1, "upstream_retry_timeouts": True, "cache_stale_ttl": 0}
    app = create_app(settings(**options), transport=httpx.MockTransport(hung))
    check(outcome("timeout", "warm-up"))  # the checking client's first use imports its models: not the facade's time
    with checking_client(app, raise_server_exceptions=False) as client:
        started = time.perf_counter()
        r = client.get("/fhir/R4/ImagingStudy?modality=CT")
        elapsed = time.perf_counter() - started
    assert r.status_code == 504 and r.json()["issue"][0]["code"] == "timeout"
    assert elapsed < 1.0 and calls == 1  # no retry fits into what is left


def test_retries_only_idempotent_gets(pacs, make_client):
    client = make_client(upstream_retries=2, upstream_backoff=0.001, breaker_failures=0, cache_stale_ttl=0)
    route = pacs.get(url__startswith=PACS).mock(
        side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200, json=[])]
    )
    assert client.get("/fhir/R4/ImagingStudy?modality=CT").status_code == 200
    assert route.call_count == 3


def test_stale_if_error_serves_the_last_answer_and_says_so(pacs, make_client):
    client = make_client(cache_ttl=0.05, cache_stale_ttl=60, upstream_retries=0, breaker_failures=0)
    studies, instances = _ok(pacs)
    fresh = client.get("/fhir/R4/ImagingStudy?modality=CT").json()
    assert client.get("/fhir/R4/ImagingStudy/1.2.3").status_code == 200
    time.sleep(0.1)
    studies.mock(side_effect=httpx.ConnectError("down"))
    instances.mock(side_effect=httpx.ConnectError("down"))
    stale = client.get("/fhir/R4/ImagingStudy?modality=CT").json()  # validated by the checking client
    outcome = stale["entry"][-1]
    assert outcome["search"]["mode"] == "outcome" and outcome["resource"]["issue"][0]["severity"] == "warning"
    assert stale["entry"][:-1] == fresh["entry"]
    read = client.get("/fhir/R4/ImagingStudy/1.2.3")
    assert read.status_code == 200 and read.headers["warning"].startswith("110")
    assert client.get("/fhir/R4/ImagingStudy?modality=MR").status_code == 503  # never seen: no stale answer


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache-Control": "no-cache"},
        {"Cache-Control": "max-age=0"},
        {"Pragma": "no-cache"},
        {"Cache-Control": "stale-if-error=0"},
        {"Cache-Control": "no-cache, stale-if-error=0"},
    ],
)
def test_a_client_that_asks_for_a_validated_answer_gets_the_error_not_a_stale_one(pacs, make_client, headers):
    # RFC 9111 §5.2.1.4: no-cache asks for an answer the PACS has just given; a stale one is not that.
    client = make_client(cache_ttl=0.05, cache_stale_ttl=60, upstream_retries=0, breaker_failures=0)
    studies, instances = _ok(pacs)
    assert client.get("/fhir/R4/ImagingStudy?modality=CT").status_code == 200
    assert client.get("/fhir/R4/ImagingStudy/1.2.3").status_code == 200
    time.sleep(0.1)
    studies.mock(side_effect=httpx.ConnectError("down"))
    instances.mock(side_effect=httpx.ConnectError("down"))
    for url in ("/fhir/R4/ImagingStudy?modality=CT", "/fhir/R4/ImagingStudy/1.2.3"):
        r = client.get(url, headers=headers)
        assert r.status_code == 503 and "warning" not in r.headers, (url, r.status_code)
        assert r.json()["resourceType"] == "OperationOutcome"
    # the same requests without the directive still take the kept answer, marked stale
    assert client.get("/fhir/R4/ImagingStudy/1.2.3").headers["warning"].startswith("110")


def test_stale_if_error_may_be_asked_for_with_no_cache_within_its_limit(pacs, make_client):
    # RFC 5861 §4: the client says how stale an answer it takes when the PACS fails; never more than is kept.
    client = make_client(cache_ttl=0.05, cache_stale_ttl=60, upstream_retries=0, breaker_failures=0)
    studies, instances = _ok(pacs)
    fresh = client.get("/fhir/R4/ImagingStudy/1.2.3").json()
    time.sleep(1.2)  # past the ttl by more than one second
    studies.mock(side_effect=httpx.ConnectError("down"))
    instances.mock(side_effect=httpx.ConnectError("down"))
    r = client.get("/fhir/R4/ImagingStudy/1.2.3", headers={"Cache-Control": "no-cache, stale-if-error=600"})
    assert r.status_code == 200 and r.headers["warning"].startswith("110") and r.json() == fresh
    r = client.get("/fhir/R4/ImagingStudy/1.2.3", headers={"Cache-Control": "stale-if-error=1"})
    assert r.status_code == 503  # 1.2 s past freshness: staler than this client takes


def test_pacs_bearer_from_settings_and_never_in_outcomes(pacs, make_client):
    client = make_client(pacs_token="pacs-secret", upstream_retries=0)
    route = pacs.get(url__startswith=PACS).mock(return_value=httpx.Response(500, text="pacs-secret boom"))
    r = client.get("/fhir/R4/ImagingStudy?modality=CT")
    assert route.calls[0].request.headers["authorization"] == "Bearer pacs-secret"
    assert r.status_code == 502 and "pacs-secret" not in r.text


def test_forward_mode_sends_the_callers_token_to_the_pacs(pacs, make_client, tmp_path):
    keys = TokenIssuer()
    client = make_client(
        auth_mode="smart",
        jwks_file=str(keys.write_jwks(tmp_path)),
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
        pacs_auth="forward",
        pacs_token="ignored-when-forwarding",
    )
    studies, _ = _ok(pacs)
    token = keys.token("user/ImagingStudy.rs")
    assert (
        client.get("/fhir/R4/ImagingStudy?modality=CT", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    assert studies.calls[-1].request.headers["authorization"] == f"Bearer {token}"


def test_upstream_calls_are_counted_in_metrics(pacs, client):
    _ok(pacs)
    client.get("/fhir/R4/ImagingStudy/1.2.3")
    text = client.get("/metrics").text
    assert 'facade_upstream_requests_total{kind="qido",outcome="ok"} 2.0' in text
    assert 'facade_upstream_request_seconds_count{kind="qido"} 2.0' in text
