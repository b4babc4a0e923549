"""Caches never overrule the client, with a real Orthanc that stops answering (issue 19, defect 1).

A client that sends ``Cache-Control: no-cache`` asks for an answer the PACS has just given (RFC 9111 §5.2.1.4): with
the PACS gone it gets the 502/503/504 OperationOutcome, never the stale-if-error answer the facade keeps for
clients that did not say so. It may still ask for a stale answer explicitly (``stale-if-error=<s>``, RFC 5861 §4).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from app.fhir import patient_ids
from tests.support.dataset import build_dataset
from tests.support.facade import FacadeProcess
from tests.support.orthanc import OrthancServer, store

pytestmark = pytest.mark.integration

TTL = 1.0


@pytest.fixture(scope="module")
def gone() -> Iterator[tuple[FacadeProcess, str, str]]:
    """A facade whose Orthanc answered once and then stopped: (facade, study read URL, patient search URL)."""
    datasets, manifest = build_dataset()
    study = manifest.studies[0]
    env = {
        "FACADE_CACHE_TTL": str(TTL),
        "FACADE_CACHE_STALE_TTL": "300",
        "FACADE_UPSTREAM_RETRIES": "0",
        "FACADE_BREAKER_FAILURES": "0",  # every request goes to the (stopped) PACS, none is refused by a breaker
    }
    with OrthancServer() as pacs:
        store(pacs.dicomweb_url, datasets)
        with FacadeProcess(pacs.dicomweb_url, env=env) as facade:
            read = f"{facade.base}/ImagingStudy/{study.study_uid}"
            search = f"{facade.base}/ImagingStudy?patient={patient_ids.encode(study.patient_id, study.issuer)}"
            for url in (read, search):
                assert httpx.get(url).status_code == 200
            pacs.stop()
            time.sleep(TTL + 0.2)  # past freshness: what is kept is stale now
            yield facade, read, search


@pytest.mark.parametrize("kind", ["read", "search"])
@pytest.mark.parametrize(
    "headers",
    [{"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"}],
    ids=["no-cache", "max-age=0", "pragma"],
)
def test_no_cache_with_the_pacs_gone_is_the_error(gone, kind, headers):
    _, read, search = gone
    r = httpx.get(read if kind == "read" else search, headers=headers)
    assert r.status_code in (502, 503, 504), r.text
    assert r.json()["resourceType"] == "OperationOutcome" and "warning" not in r.headers
    assert "127.0.0.1" not in r.text  # no PACS address reaches the client


def test_without_the_directive_the_kept_answer_is_served_marked_stale(gone):
    _, read, search = gone
    r = httpx.get(read)
    assert r.status_code == 200 and r.headers["warning"].startswith("110")
    bundle = httpx.get(search).json()
    assert bundle["entry"][-1]["search"]["mode"] == "outcome"  # says it may be out of date


def test_stale_if_error_is_the_clients_to_ask_for(gone):
    _, read, _ = gone
    r = httpx.get(read, headers={"Cache-Control": "no-cache, stale-if-error=600"})
    assert r.status_code == 200 and r.headers["warning"].startswith("110")
    assert httpx.get(read, headers={"Cache-Control": "stale-if-error=0"}).status_code in (502, 503, 504)
