"""Precise invalidation (issue 22, "invalidate precisely instead of guessing") against a real Orthanc, through
``python -m app --workers 2`` sharing a real Redis: a study growing for one patient clears that patient's answers
in every worker within 2 s (each worker follows the feed itself; rule 2 and rule 4), and the other patients'
cached answers stay (no new PACS call). Which worker answers is read from the kernel (tests.integration.
test_workers.one_per_worker)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from app.fhir import patient_ids
from tests.integration.test_workers import Worker, one_per_worker
from tests.support.change_feed import until
from tests.support.facade import FacadeProcess
from tests.support.kos import make_study
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store
from tests.support.redis import RedisServer, redis_binary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def studies() -> dict[str, list[Dataset]]:
    return {
        pid: make_study(70 + n, f"scope-{n}", patient_id=pid, patient_name=f"Scope^{n}", series_sizes=(2,))
        for n, pid in enumerate(("SCOPE-A", "SCOPE-B", "SCOPE-C"))
    }


@pytest.fixture(scope="module")
def pacs(studies) -> Iterator[OrthancServer]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    with OrthancServer() as server:
        for study in studies.values():
            store(server.dicomweb_url, study)
        yield server


@pytest.fixture(scope="module")
def facade(pacs: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FacadeProcess]:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    log = tmp_path_factory.mktemp("scopes") / "facade.log"
    with RedisServer() as redis:
        env = {
            "FACADE_CACHE_REDIS_URL": redis.url,
            "FACADE_PACS_KIND": "orthanc",
            "FACADE_CACHE_TTL": "3600",
            "FACADE_CHANGE_POLL_INTERVAL": "0.5",
        }
        with FacadeProcess(pacs.dicomweb_url, env=env, log=log, args=["--workers", "2"]) as server:
            yield server


def search(pid: str) -> str:
    return f"/fhir/R4/ImagingStudy?patient=Patient/{patient_ids.encode(pid, None)}"


def instances(worker: Worker, pid: str) -> int:
    bundle = worker.json(search(pid))
    return sum(e["resource"].get("numberOfInstances", 0) for e in bundle.get("entry", []))


def new_series(study: list[Dataset], count: int) -> list[Dataset]:
    series_uid = generate_uid()
    out = []
    for n in range(count):
        ds = copy.deepcopy(study[0])
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, generate_uid(), 9, n
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def test_a_growing_study_clears_its_patient_everywhere_and_no_other_patient(facade, pacs, studies):
    a, b = one_per_worker(facade)
    try:
        before = {pid: instances(a, pid) for pid in studies}
        assert before == {pid: 2 for pid in studies}
        for pid in studies:  # both workers warm for every patient (their own answer caches, the shared Redis)
            assert instances(b, pid) == 2
        calls = a.counters()["qido"], b.counters()["qido"]
        store(pacs.dicomweb_url, new_series(studies["SCOPE-A"], 3))
        waited = [until(lambda w=w: instances(w, "SCOPE-A") == 5, 2.0) for w in (a, b)]
        assert max(waited) < 2.0
        after = a.counters()["qido"], b.counters()["qido"]
        for pid in ("SCOPE-B", "SCOPE-C"):  # untouched: served from the cache, no PACS call in either worker
            assert instances(a, pid) == 2 and instances(b, pid) == 2
        assert (a.counters()["qido"], b.counters()["qido"]) == after
        assert after != calls  # SCOPE-A was asked again
    finally:
        a.close()
        b.close()


def test_a_new_study_for_one_patient_shows_in_both_workers_and_leaves_the_others_cached(facade, pacs, studies):
    a, b = one_per_worker(facade)
    try:
        for w in (a, b):
            for pid in studies:
                instances(w, pid)
        after_warm = a.counters()["qido"], b.counters()["qido"]
        other = make_study(79, "scope-new", patient_id="SCOPE-B", patient_name="Scope^1", series_sizes=(1,))
        store(pacs.dicomweb_url, other)
        for w in (a, b):
            until(lambda w=w: len(w.json(search("SCOPE-B")).get("entry", [])) == 2, 2.0)
        asked = a.counters()["qido"], b.counters()["qido"]
        assert asked != after_warm
        assert instances(a, "SCOPE-C") == 2 and instances(b, "SCOPE-C") == 2
        assert (a.counters()["qido"], b.counters()["qido"]) == asked
    finally:
        a.close()
        b.close()
