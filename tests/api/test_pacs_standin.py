"""The facade over real sockets against a stand-in PACS (tests.support.standin_pacs) that goes down, comes back or
hangs: what the client waits for, measured on the wall clock. The app runs in TestClient with its real pooled
transport, so connection refused and read timeouts are the operating system's, not a mock's; the last test runs
it as a server process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from app.errors import outcome
from app.main import create_app
from app.settings import Settings
from tests.support.facade import FacadeProcess
from tests.support.fhir_check import check, checking_client
from tests.support.standin_pacs import StandinPacs

SEARCH = "/fhir/R4/ImagingStudy?patient.identifier=MRN1"


@pytest.fixture
def pacs() -> Iterator[StandinPacs]:
    with StandinPacs() as server:
        yield server


@pytest.fixture
def facade(pacs: StandinPacs) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        # No cache, no stale answers: every search asks the PACS.
        options = {"dicomweb_url": pacs.dicomweb_url, "auth_mode": "open", "cache_ttl": 0.0, "cache_stale_ttl": 0.0}
        client = checking_client(create_app(Settings(**(options | overrides))), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        # Warm up: the checking client imports its FHIR models on first use, seconds that are not the facade's.
        assert client.get(SEARCH).status_code == 200
        check(outcome("timeout", "warm-up"))
        pacs.requests = 0
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def timed(client: TestClient, url: str = SEARCH) -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.get(url)
    return response, time.perf_counter() - started


def open_breaker(client: TestClient) -> None:
    """Searches against the dead PACS until the breaker refuses one (5 failed calls, 2 per search with a retry)."""
    for _ in range(10):
        r = client.get(SEARCH)
        assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
        if "circuit breaker" in r.json()["issue"][0]["diagnostics"]:
            return
    pytest.fail("the breaker never opened")


def first_success_after(client: TestClient, limit: float) -> float:
    """Seconds until a search answers 200, polling every 50 ms (a client retrying at once), at most ``limit``."""
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < limit:
        r = client.get(SEARCH)
        if r.status_code == 200:
            assert [e["resource"]["id"] for e in r.json()["entry"]] == ["2.25.4242"]
            return elapsed
        assert r.status_code == 503
        time.sleep(0.05)
    pytest.fail(f"still refused {limit} s after the PACS came back")


class TestOutage:
    """Item 5: the breaker's open period starts at breaker_initial_reset (1 s) and doubles per failed probe."""

    def test_service_is_back_within_2_s_of_the_pacs(self, pacs, facade):
        client = facade()
        pacs.down()
        open_breaker(client)
        r, elapsed = timed(client)  # a dead PACS still costs milliseconds
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and elapsed < 0.1
        pacs.up()
        assert first_success_after(client, limit=3.0) < 2.0

    def test_a_failed_probe_doubles_the_open_period_and_a_success_resets_it(self, pacs, facade):
        client = facade(upstream_retries=0)
        pacs.down()
        open_breaker(client)
        time.sleep(1.05)
        r = client.get(SEARCH)  # the probe, against the dead PACS
        assert r.status_code == 503 and "circuit breaker" not in r.text
        r, elapsed = timed(client)
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and elapsed < 0.1
        pacs.up()
        assert first_success_after(client, limit=3.0) < 2.1
        pacs.down()
        open_breaker(client)
        assert client.get(SEARCH).headers["retry-after"] == "1"  # back to the initial period


class TestHungPacs:
    """Item 6: one upstream time budget per FHIR request, and no retry after a read timeout by default."""

    def test_a_read_timeout_is_not_retried_by_default(self, pacs, facade):
        client = facade(upstream_read_timeout=2.0)
        pacs.hang()
        r, elapsed = timed(client)
        assert r.status_code == 504 and r.json()["issue"][0]["code"] == "timeout"
        assert 1.9 <= elapsed < 3.0
        assert pacs.requests == 1

    def test_every_retry_fits_into_the_budget(self, pacs, facade):
        client = facade(
            upstream_read_timeout=2.0, upstream_budget=3.0, upstream_retries=1, upstream_retry_timeouts=True
        )
        pacs.hang()
        r, elapsed = timed(client)
        assert r.status_code == 504 and r.json()["resourceType"] == "OperationOutcome"
        assert 2.8 <= elapsed < 3.4  # 2 s, then a retry cut to the 1 s left; not 2 x 2 s
        assert pacs.requests == 2

    def test_a_budget_shorter_than_the_read_timeout(self, pacs, facade):
        client = facade(upstream_read_timeout=10.0, upstream_budget=1.0)
        pacs.hang()
        r, elapsed = timed(client)
        assert r.status_code == 504
        assert 0.9 <= elapsed < 1.5
        assert pacs.requests == 1


class TestServerProcess:
    """Both, through ``python -m app`` configured from FACADE_* variables, as deployed."""

    def test_hung_then_dead_then_back(self, pacs):
        env = {"FACADE_CACHE_TTL": "0", "FACADE_CACHE_STALE_TTL": "0", "FACADE_UPSTREAM_READ_TIMEOUT": "2"}
        with FacadeProcess(pacs.dicomweb_url, env=env) as server:
            url = server.base + SEARCH.removeprefix("/fhir/R4")
            assert httpx.get(url).status_code == 200
            pacs.hang()
            pacs.requests = 0
            started = time.perf_counter()
            r = httpx.get(url, timeout=30)
            assert r.status_code == 504 and time.perf_counter() - started < 3.0 and pacs.requests == 1
            pacs.down()
            for _ in range(10):  # 4 more failed calls open it
                r = httpx.get(url)
                assert r.status_code == 503
                if "circuit breaker" in r.text:
                    break
            assert "circuit breaker" in r.text and r.headers["retry-after"] == "1"
            pacs.up()
            started = time.perf_counter()
            while httpx.get(url).status_code != 200:
                assert time.perf_counter() - started < 3.0
                time.sleep(0.05)
            assert time.perf_counter() - started < 2.0
