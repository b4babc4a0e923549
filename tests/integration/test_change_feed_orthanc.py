"""The facade follows Orthanc's change feed (issue 22): with ``cache_ttl = 3600`` a study, series or instance stored
into Orthanc directly (not through the facade) shows in the next answers within 2 s, a deletion within
``change_poll_interval`` + 5 s, and a feed that cannot be followed never leaves a stale answer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import Dataset

from app.fhir import patient_ids
from tests.support.change_feed import following_client, until
from tests.support.dataset import build_dataset
from tests.support.orthanc import OrthancServer, store

pytestmark = pytest.mark.integration
R4 = "/fhir/R4"


def _studies_by_patient(datasets: list[Dataset]) -> dict[tuple[str, str | None], dict[str, list[Dataset]]]:
    out: dict[tuple[str, str | None], dict[str, list[Dataset]]] = defaultdict(lambda: defaultdict(list))
    for ds in datasets:
        key = (str(ds.PatientID), getattr(ds, "IssuerOfPatientID", None) or None)
        out[key][str(ds.StudyInstanceUID)].append(ds)
    return out


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    datasets, _ = build_dataset()
    by_patient = _studies_by_patient(datasets)
    patient, studies = next((p, s) for p, s in by_patient.items() if len(s) >= 2)
    held_study, kept = sorted(studies)[-1], sorted(studies)[:-1]
    first = studies[kept[0]]
    series = sorted({str(ds.SeriesInstanceUID) for ds in first})
    held_instance = sorted(first, key=lambda ds: str(ds.SOPInstanceUID))[-1]
    initial = [
        ds
        for ds in datasets
        if str(ds.StudyInstanceUID) != held_study and ds.SOPInstanceUID != held_instance.SOPInstanceUID
    ]
    return {
        "patient": patient_ids.encode(*patient),
        "initial": initial,
        "held_study": studies[held_study],
        "held_study_uid": held_study,
        "held_instance": held_instance,
        "series": series,
        "first_study": kept[0],
    }


@pytest.fixture
def orthanc(data) -> Iterator[OrthancServer]:
    with OrthancServer() as server:
        store(server.dicomweb_url, data["initial"])
        yield server


def _ids(client, patient: str) -> set[str]:
    bundle = client.get(f"{R4}/ImagingStudy", params={"patient": patient}).json()
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def _instances(client, study: str) -> int:
    return int(client.get(f"{R4}/ImagingStudy/{study}").json()["numberOfInstances"])


def test_what_is_stored_directly_shows_within_2_s_whatever_the_ttl(orthanc, data):
    with following_client(orthanc) as client:
        patient = data["patient"]
        before = _ids(client, patient)
        assert data["held_study_uid"] not in before
        count = _instances(client, data["first_study"])
        time.sleep(1.2)  # the follower is past its start: what is stored now is a change
        store(orthanc.dicomweb_url, data["held_study"])  # a new study
        took = until(lambda: data["held_study_uid"] in _ids(client, patient), 2.0)
        store(orthanc.dicomweb_url, [data["held_instance"]])  # a new instance in an existing series
        took = max(took, until(lambda: _instances(client, data["first_study"]) == count + 1, 2.0))
        assert took <= 2.0
        polls = client.get("/metrics").text
        assert 'facade_change_feed_polls_total{outcome="change",source="pacs"}' in polls


def test_a_deletion_goes_within_the_interval_and_5_s(orthanc, data):
    with following_client(orthanc) as client:
        patient = data["patient"]
        assert data["first_study"] in _ids(client, patient)
        found = httpx.post(f"{orthanc.url}/tools/lookup", content=data["first_study"]).json()
        httpx.delete(f"{orthanc.url}/studies/{found[0]['ID']}").raise_for_status()
        assert until(lambda: data["first_study"] not in _ids(client, patient), 6.0) <= 6.0


def test_a_reset_or_unreadable_feed_never_leaves_a_stale_answer(orthanc, data):
    with following_client(orthanc) as client:
        patient = data["patient"]
        _ids(client, patient)
        httpx.delete(f"{orthanc.url}/changes").raise_for_status()  # the log cleared: Last goes backwards
        store(orthanc.dicomweb_url, data["held_study"])
        assert until(lambda: data["held_study_uid"] in _ids(client, patient), 2.5) <= 2.5
    with following_client(orthanc, orthanc_url=orthanc.url + "/no-such-api") as client:  # the feed cannot be read
        found = httpx.post(f"{orthanc.url}/tools/lookup", content=data["held_study_uid"]).json()
        assert data["held_study_uid"] in _ids(client, patient)
        httpx.delete(f"{orthanc.url}/studies/{found[0]['ID']}").raise_for_status()
        assert until(lambda: data["held_study_uid"] not in _ids(client, patient), 2.5) <= 2.5


def test_the_follower_costs_orthanc_little_when_nothing_changes(orthanc, data):
    with following_client(orthanc) as client:
        time.sleep(0.3)
        follower = client.app.state.followers[0]
        before = follower.feed.requests
        time.sleep(10.0)
        assert follower.feed.requests - before <= 12


def test_last_updated_is_refused_with_an_outcome(orthanc, data):
    with following_client(orthanc, pacs_kind="dicomweb") as client:
        r = client.get(f"{R4}/ImagingStudy", params={"patient": data["patient"], "_lastUpdated": "gt2020-01-01"})
        assert r.status_code == 400 and "_lastUpdated" in r.json()["issue"][0]["diagnostics"]


def _orthanc_last_updates(orthanc: OrthancServer) -> dict[str, str]:
    found = httpx.post(f"{orthanc.url}/tools/find", json={"Level": "Study", "Query": {}, "Expand": True}).json()
    return {s["MainDicomTags"]["StudyInstanceUID"]: s["LastUpdate"] for s in found}


def _instant(stamp: str) -> str:
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"


def test_last_updated_with_every_prefix_against_orthancs_own_times(orthanc, data):
    time.sleep(1.1)  # the held study's LastUpdate is a later second than every other study's
    store(orthanc.dicomweb_url, data["held_study"])
    truth = _orthanc_last_updates(orthanc)
    late = truth[data["held_study_uid"]]
    assert sum(1 for t in truth.values() if t == late) == 1
    with following_client(orthanc) as client:
        caps = client.get(f"{R4}/metadata").json()["rest"][0]["resource"]
        study_params = next(r for r in caps if r["type"] == "ImagingStudy")["searchParam"]
        assert "_lastUpdated" in {p["name"] for p in study_params}
        at = _instant(late)
        expected = {
            "gt": {u for u, t in truth.items() if t > late},
            "ge": {u for u, t in truth.items() if t >= late},
            "lt": {u for u, t in truth.items() if t < late},
            "le": {u for u, t in truth.items() if t <= late},
            "eq": {u for u, t in truth.items() if t == late},
            "ne": {u for u, t in truth.items() if t != late},
            "sa": {u for u, t in truth.items() if t > late},
            "eb": {u for u, t in truth.items() if t < late},
        }
        for prefix, uids in expected.items():
            for count in (1, 100):
                seen: list[str] = []
                url: str | None = f"{R4}/ImagingStudy?_lastUpdated={prefix}{at}&_count={count}"
                while url:
                    bundle = client.get(url).json()
                    seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
                    for e in bundle.get("entry", []):
                        assert e["resource"]["meta"]["lastUpdated"] == _instant(truth[e["resource"]["id"]])
                    url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
                assert len(seen) == len(set(seen)) and set(seen) == uids, (prefix, count)
        # with the patient, as an app syncing "what changed since I last looked" asks it
        mine = client.get(
            f"{R4}/ImagingStudy", params={"patient": data["patient"], "_lastUpdated": f"ge{at}", "_total": "accurate"}
        ).json()
        assert mine["total"] == 1 and mine["entry"][0]["resource"]["id"] == data["held_study_uid"]
        read = client.get(f"{R4}/ImagingStudy/{data['held_study_uid']}").json()
        assert read["meta"]["lastUpdated"] == at
