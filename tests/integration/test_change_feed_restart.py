"""Issue 22, the follower's faults and an incremental-sync client, against a real Orthanc of the test's own (temporary
storage, one port kept across restarts): Orthanc stopped while the facade runs (errors, never an answer missing what
was stored before), started again on its storage (what is stored right after shows within 2 s with ``cache_ttl``
3600), started on an empty or another database (its ``/changes`` restarts: no answer cached from the old database
is served), an answer Orthanc gave before a change but that arrives after the follower cleared the cache (not kept),
and a client polling ``patient=…&_lastUpdated=gt<last check>`` while studies, series and instances are stored and
deleted directly in Orthanc.

Orthanc's ``LastUpdate`` is to the second: a check at time ``t`` asks ``gt`` the second ``floor(t)``, so every store
here waits until a later second has begun (a change within the check's own second would be missed by ``gt``: that
is the client's 1-second window, not the facade's).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from pydicom.uid import UID, generate_uid

from app.fhir import patient_ids
from tests.support.change_feed import following_client, until
from tests.support.dataset import build_dataset
from tests.support.orthanc import OrthancServer, store

pytestmark = pytest.mark.integration
R4 = "/fhir/R4"
PATIENT = ("MRN0001", None)  # two studies: 2 series (3 + 2 instances) and 3 series (2 + 4 + 1)
VISIBLE = 2.0  # a change stored directly shows within this many seconds (cache_ttl 3600)
DELETED = 1.0 + 5.0  # a deletion goes within change_poll_interval + 5 s
ORTHANC = {"StableAge": 3600}  # no Stable* entries during a test: the log holds exactly what the test stored


def _derive(ds: Dataset, *, study: str | None = None, series: str | None = None) -> Dataset:
    """A copy of ``ds`` as a new instance (a new SOP Instance UID), moved to ``study``/``series`` when given."""
    new = copy.deepcopy(ds)
    new.SOPInstanceUID = new.file_meta.MediaStorageSOPInstanceUID = UID(generate_uid())
    if study is not None:
        new.StudyInstanceUID = study
    if series is not None:
        new.SeriesInstanceUID = series
    return new


def _shifted(uid: str) -> str:
    """Another UID of the same length (the last digit moved by one): a database of the same byte size."""
    return uid[:-1] + str((int(uid[-1]) + 1) % 10)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    datasets, _ = build_dataset()
    mine = [ds for ds in datasets if (str(ds.PatientID), getattr(ds, "IssuerOfPatientID", None) or None) == PATIENT]
    by_study: dict[str, dict[str, list[Dataset]]] = {}
    for ds in mine:
        by_study.setdefault(str(ds.StudyInstanceUID), {}).setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    a, b = sorted(by_study, key=lambda uid: len(by_study[uid]))  # A: 2 series, B: 3 series
    new_study = generate_uid()
    new_series = {uid: generate_uid() for uid in by_study[a]}
    study_n = [_derive(ds, study=new_study, series=new_series[s]) for s, group in by_study[a].items() for ds in group]
    series_in_a = generate_uid()
    first_a = by_study[a][sorted(by_study[a])[0]]
    series_a = [_derive(ds, series=series_in_a) for ds in first_a[:2]]
    series_b = sorted(by_study[b])[0]
    instance_b = _derive(by_study[b][series_b][0])
    # Another database of the same shape and byte size, so the same /changes Last and /statistics counts.
    other = []
    for ds in datasets:
        twin = copy.deepcopy(ds)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            setattr(twin, keyword, _shifted(str(getattr(ds, keyword))))
        twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = UID(_shifted(str(ds.SOPInstanceUID)))
        other.append(twin)
    return {
        "patient": patient_ids.encode(*PATIENT),
        "all": datasets,
        "a": a,
        "b": b,
        "study_n": study_n,
        "study_n_uid": new_study,
        "series_a": series_a,
        "series_a_uid": series_in_a,
        "instance_b": instance_b,
        "series_b_uid": series_b,
        "other": other,
        "other_a": _shifted(a),
    }


@pytest.fixture
def orthanc(data) -> Iterator[OrthancServer]:
    with OrthancServer(extra_config=ORTHANC) as server:
        store(server.dicomweb_url, data["all"])
        yield server


def _search(client, **params: str) -> dict[str, dict[str, Any]]:
    """Every ImagingStudy of the search, every page followed: id → resource."""
    found: dict[str, dict[str, Any]] = {}
    url: str | None = f"{R4}/ImagingStudy"
    query: dict[str, str] | None = params | {"_count": "100"}
    while url:
        r = client.get(url, params=query)
        assert r.status_code == 200, r.text
        bundle = r.json()
        found |= {e["resource"]["id"]: e["resource"] for e in bundle.get("entry", [])}
        url, query = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None), None
    return found


def _ids(client, patient: str) -> set[str]:
    return set(_search(client, patient=patient))


def _series(study: dict[str, Any]) -> dict[str, set[str]]:
    return {s["uid"]: {i["uid"] for i in s.get("instance", [])} for s in study.get("series", [])}


def _orthanc_id(orthanc: OrthancServer, uid: str) -> str:
    found = httpx.post(f"{orthanc.url}/tools/lookup", content=uid).json()
    assert len(found) == 1, found
    return str(found[0]["ID"])


def _instant(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _next_second(after: int) -> None:
    """Sleep until the second after ``after`` (a Unix second) has begun, so what is stored now is ``gt`` it."""
    time.sleep(max(0.0, after + 1 + 0.02 - time.time()))


# -- Orthanc stopped and started again -----------------------------------------------------------------------------


@pytest.mark.parametrize("breaker_failures", [0, 5], ids=["no-breaker", "breaker"])
def test_stopped_orthanc_errors_or_full_answers_then_its_new_data_within_2_s(orthanc, data, breaker_failures):
    """With the circuit breaker (the default, 5 failures) the facade answers 503 + Retry-After for the breaker's open
    period after Orthanc is back (by design, up to breaker_reset): then the 2 s count from its first answer."""
    patient = data["patient"]
    with following_client(orthanc, breaker_failures=breaker_failures) as client:
        before = _ids(client, patient)
        assert {data["a"], data["b"]} <= before

        def answer() -> set[str] | None:
            """The patient's studies, or None for an error (a 502/503/504 OperationOutcome)."""
            r = client.get(f"{R4}/ImagingStudy", params={"patient": patient})
            if r.status_code == 200:
                return {e["resource"]["id"] for e in r.json().get("entry", [])}
            assert r.status_code in (502, 503, 504) and r.json()["resourceType"] == "OperationOutcome", r.text
            return None

        orthanc.halt()
        seen: list[set[str] | None] = []
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # three of the follower's polls meet a stopped Orthanc
            seen.append(answer())
            assert seen[-1] in (None, before), "an answer missed what was stored before Orthanc stopped"
            time.sleep(0.2)
        assert None in seen, "the stopped Orthanc was never noticed"
        orthanc.resume()  # the same port and storage
        store(orthanc.dicomweb_url, data["study_n"])  # directly, right after it is back
        stored = time.monotonic()
        while (ids := answer()) is None:
            assert breaker_failures and time.monotonic() - stored < 30.0
            time.sleep(0.05)
        answering = time.monotonic()
        assert before <= ids
        until(lambda: (ids := answer()) is not None and data["study_n_uid"] in ids, VISIBLE)
        assert time.monotonic() - (stored if not breaker_failures else answering) <= VISIBLE
        assert answer() == before | {data["study_n_uid"]}
        polls = client.get("/metrics").text
        assert 'facade_change_feed_polls_total{outcome="error",source="pacs"}' in polls


def test_orthanc_started_on_an_empty_database_leaves_no_answer_of_the_old_one(orthanc, data):
    patient = data["patient"]
    with following_client(orthanc) as client:
        assert {data["a"], data["b"]} <= _ids(client, patient)
        assert client.get(f"{R4}/ImagingStudy/{data['a']}").status_code == 200
        orthanc.halt()
        orthanc.resume(storage_dir=orthanc.workdir / "other")  # its /changes starts again from 0
        store(orthanc.dicomweb_url, data["study_n"])
        assert httpx.get(f"{orthanc.url}/changes?last").json()["Last"] < 10
        assert until(lambda: _ids(client, patient) == {data["study_n_uid"]}, VISIBLE) <= VISIBLE
        assert client.get(f"{R4}/ImagingStudy/{data['a']}").status_code == 404


def _step(client) -> str:
    """One poll of the (only) follower, on the app's event loop: what it led to."""
    (follower,) = client.app.state.followers
    return str(client.portal.call(follower.step))


def test_a_restart_between_two_polls_on_a_database_with_fewer_changes_is_a_reset(orthanc, data):
    """The follower never sees Orthanc down (its polls are the test's): the new log's ``Last`` went backwards."""
    patient = data["patient"]
    with following_client(orthanc, change_poll_interval=3600.0) as client:
        time.sleep(0.2)  # the follower has read where the log is
        assert _step(client) == "idle"
        assert {data["a"], data["b"]} <= _ids(client, patient)
        orthanc.halt()
        orthanc.resume(storage_dir=orthanc.workdir / "other")
        store(orthanc.dicomweb_url, data["study_n"])
        assert _step(client) == "lost"
        assert _ids(client, patient) == {data["study_n_uid"]}


def test_a_restart_between_two_polls_on_another_database_of_the_same_size_is_a_reset(orthanc, data):
    patient = data["patient"]
    with following_client(orthanc, change_poll_interval=3600.0) as client:
        time.sleep(0.2)
        last = httpx.get(f"{orthanc.url}/changes?last").json()["Last"]
        size = httpx.get(f"{orthanc.url}/statistics").json()
        assert _step(client) == "idle"
        assert data["a"] in _ids(client, patient)
        orthanc.halt()
        orthanc.resume(storage_dir=orthanc.workdir / "other")
        store(orthanc.dicomweb_url, data["other"])
        assert httpx.get(f"{orthanc.url}/changes?last").json()["Last"] == last
        assert httpx.get(f"{orthanc.url}/statistics").json() == size
        outcomes = {_step(client) for _ in range(5)}  # five polls: /statistics read once
        assert outcomes & {"lost", "change"}, outcomes
        assert data["other_a"] in _ids(client, patient)


class _HoldingProxy:
    """A TCP proxy in front of Orthanc (its own thread and event loop) that, once :meth:`arm`-ed, holds the next answer
    Orthanc sends: Orthanc has answered (the answer says what the archive held then), the facade receives it only
    at :meth:`release`, as over a slow network or for a large answer."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._armed = False
        self.holding = threading.Event()
        self._release = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="holding-proxy", daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def arm(self) -> None:
        self.holding.clear()
        self._release.clear()
        self._armed = True

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _shutdown(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._loop.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers = [writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if answers and self._armed:
                        self._armed = False
                        self.holding.set()
                        while not self._release.is_set():
                            await asyncio.sleep(0.01)
                    dst.write(data)
                    await dst.drain()

        pipes: list[asyncio.Task[None]] = []
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            writers.append(up_writer)
            pipes += [self._loop.create_task(pipe(reader, up_writer, False))]
            pipes += [self._loop.create_task(pipe(up_reader, writer, True))]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in writers:
                w.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await w.wait_closed()


def _polls(client, outcome: str) -> float:
    line = f'facade_change_feed_polls_total{{outcome="{outcome}",source="pacs"}} '
    return sum(float(x[len(line) :]) for x in client.get("/metrics").text.splitlines() if x.startswith(line))


@pytest.mark.parametrize("change", ["stored", "deleted"])
def test_an_answer_read_before_a_change_and_arriving_after_it_is_not_kept(orthanc, data, change):
    """A QIDO answer on its way while a study is stored or deleted and the follower clears the cache: it may answer its
    own request, it must not be kept for the next ones."""
    patient, study = data["patient"], (data["study_n_uid"] if change == "stored" else data["a"])
    proxy = _HoldingProxy(orthanc.port)
    try:
        with following_client(orthanc, dicomweb_url=proxy.url + "/dicom-web", orthanc_url=orthanc.url) as client:
            time.sleep(1.2)  # the follower is past its start
            before = {data["a"], data["b"]}  # the patient's studies; not asked yet: the next search asks Orthanc
            proxy.arm()
            asked: dict[str, set[str]] = {}
            search = threading.Thread(target=lambda: asked.update(ids=_ids(client, patient)))
            search.start()
            assert proxy.holding.wait(5.0), "no answer went through the proxy"
            changes = _polls(client, "change")
            if change == "stored":
                store(orthanc.dicomweb_url, data["study_n"])
            else:
                httpx.delete(f"{orthanc.url}/studies/{_orthanc_id(orthanc, study)}").raise_for_status()
            until(lambda: _polls(client, "change") > changes, DELETED)  # the follower has cleared the cache
            proxy.release()
            search.join(10.0)
            assert asked["ids"] == before  # what Orthanc held when it was asked
            shown = (lambda ids: study in ids) if change == "stored" else (lambda ids: study not in ids)
            assert until(lambda: shown(_ids(client, patient)), VISIBLE) <= VISIBLE
    finally:
        proxy.close()


# -- an incremental-sync client: patient=…&_lastUpdated=gt<last check> --------------------------------------------


def _since(client, patient: str, second: int) -> dict[str, dict[str, Any]]:
    return _search(client, patient=patient, _lastUpdated=f"gt{_instant(second)}")


def _until_synced(
    client, patient: str, since: int, changed: str, shown: Callable[[dict[str, Any]], bool]
) -> tuple[float, int]:
    """Polls ``_lastUpdated=gt<since>`` until ``changed`` is shown as ``shown`` says; every answer holds ``changed``
    at most (studies unchanged since the check never come back). Returns the seconds it took and the second of the
    check that showed it (the client's next ``since``)."""
    started = time.monotonic()
    while time.monotonic() - started < VISIBLE:
        checked = int(time.time())
        found = _since(client, patient, since)
        assert set(found) <= {changed}, f"unchanged studies came back: {set(found) - {changed}}"
        if changed in found and shown(found[changed]):
            return time.monotonic() - started, checked
        time.sleep(0.05)
    pytest.fail(f"{changed} not shown as stored within {VISIBLE} s of gt{_instant(since)}")


def test_a_client_polling_last_updated_gt_its_last_check_sees_every_change_within_2_s(orthanc, data):
    patient, a, b = data["patient"], data["a"], data["b"]
    with following_client(orthanc) as client:
        time.sleep(1.2)  # the follower is past its start
        first = int(time.time())
        everything = _search(client, patient=patient)
        assert {a, b} <= set(everything) and data["study_n_uid"] not in everything
        assert _since(client, patient, first) == {}  # nothing changed since the first check
        took: list[float] = []

        _next_second(first)  # a new study
        store(orthanc.dicomweb_url, data["study_n"])
        n_series = {str(ds.SeriesInstanceUID) for ds in data["study_n"]}
        n_instances = {str(ds.SOPInstanceUID) for ds in data["study_n"]}
        seconds, check = _until_synced(
            client,
            patient,
            first,
            data["study_n_uid"],
            lambda s: set(_series(s)) == n_series and set().union(*_series(s).values()) == n_instances,
        )
        took.append(seconds)

        _next_second(check)  # a new series in an existing study
        store(orthanc.dicomweb_url, data["series_a"])
        a_instances = {str(ds.SOPInstanceUID) for ds in data["series_a"]}
        seconds, check = _until_synced(
            client,
            patient,
            check,
            a,
            lambda s: (
                _series(s).get(data["series_a_uid"]) == a_instances and set(_series(everything[a])) < set(_series(s))
            ),
        )
        took.append(seconds)

        _next_second(check)  # a new instance in an existing series
        store(orthanc.dicomweb_url, [data["instance_b"]])
        series_b = _series(everything[b])[data["series_b_uid"]] | {str(data["instance_b"].SOPInstanceUID)}
        seconds, check = _until_synced(
            client,
            patient,
            check,
            b,
            lambda s: (
                _series(s)[data["series_b_uid"]] == series_b
                and s["numberOfInstances"] == everything[b]["numberOfInstances"] + 1
            ),
        )
        took.append(seconds)
        _next_second(check)
        assert _since(client, patient, check) == {}  # nothing since the last check
        assert max(took) <= VISIBLE, took

        # Deletions do not move a study's LastUpdate on Orthanc 1.10: they go from every answer that showed them.
        httpx.delete(f"{orthanc.url}/series/{_orthanc_id(orthanc, data['series_a_uid'])}").raise_for_status()
        until(lambda: data["series_a_uid"] not in _series(_since(client, patient, first)[a]), DELETED)
        assert data["series_a_uid"] not in _series(_search(client, patient=patient)[a])
        assert data["series_a_uid"] not in _series(client.get(f"{R4}/ImagingStudy/{a}").json())
        httpx.delete(f"{orthanc.url}/studies/{_orthanc_id(orthanc, data['study_n_uid'])}").raise_for_status()
        until(lambda: data["study_n_uid"] not in _since(client, patient, first), DELETED)
        assert set(_since(client, patient, first)) == {a, b}
        assert _ids(client, patient) == set(everything)
        assert client.get(f"{R4}/ImagingStudy/{data['study_n_uid']}").status_code == 404
