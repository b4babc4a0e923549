"""``python -m app --workers 2`` as a real server process against a real Orthanc and a real Redis (issue 19).

Which worker answers is read from the kernel, not from the app: a keep-alive connection stays with the worker that
accepted it, and /proc tells which process holds the server end of it (``/proc/net/tcp`` gives the socket's inode,
``/proc/<pid>/fd`` who holds it). So each test talks to a chosen worker through its own connection, and reads
that worker's own counters from ``/metrics`` on the same connection.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from app.fhir import patient_ids
from app.supervisor import bind_sockets
from tests.support.facade import ROOT, FacadeProcess, free_port, stop_process
from tests.support.kos import make_study
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store
from tests.support.redis import RedisServer, redis_binary

pytestmark = pytest.mark.integration

DCM = "http://dicom.nema.org/resources/ontology/DCM"
GRACE = 3.0  # FACADE_SHUTDOWN_GRACE of these servers
PID = patient_ids.encode("WRK0001", None)


@dataclass
class Pacs:
    server: OrthancServer
    study: list[Dataset]


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    study = make_study(41, "workers", patient_id="WRK0001", patient_name="Worker^Wanda", series_sizes=(2, 1))
    with OrthancServer() as server:
        store(server.dicomweb_url, study)
        yield Pacs(server, study)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    if redis_binary() is None:
        if os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
            pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def facade(pacs: Pacs, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FacadeProcess]:
    log = tmp_path_factory.mktemp("workers") / "facade.log"
    env = {"FACADE_CACHE_REDIS_URL": redis.url, "FACADE_LOG_LEVEL": "info", "FACADE_SHUTDOWN_GRACE": str(GRACE)}
    with FacadeProcess(pacs.server.dicomweb_url, env=env, log=log, args=["--workers", "2"]) as server:
        yield server


# -- which process holds a connection ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def workers(parent: int, count: int = 2, timeout: float = 20.0) -> list[int]:
    """The uvicorn worker processes of ``parent`` (spawned by multiprocessing; not its resource tracker)."""
    deadline = time.monotonic() + timeout
    found: list[int] = []
    while time.monotonic() < deadline:
        found = [c for c in children(parent) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"expected {count} workers under {parent}, found {found}")


def socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server end of the TCP connection 127.0.0.1:client_port -> 127.0.0.1:server_port."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def holder(inode: str, pids: list[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:  # closed meanwhile
                continue
    return None


class Worker:
    """One keep-alive connection to the facade and the worker process that accepted it."""

    def __init__(self, port: int, pids: list[int]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        assert self.get("/healthz")[0] == 200  # answered: a worker has accepted the connection
        client_port = self.conn.sock.getsockname()[1]
        inode = socket_inode(port, client_port)
        assert inode is not None
        self.pid = holder(inode, pids)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"Accept": "application/fhir+json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/fhir+json"
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def json(self, path: str) -> dict[str, Any]:
        status, body = self.get(path)
        assert status == 200, body[:500]
        result: dict[str, Any] = json.loads(body)
        return result

    def counters(self) -> dict[str, float]:
        """This worker's PACS calls (QIDO, metadata, STOW) and QIDO cache hits, from its own /metrics."""
        status, body = self.get("/metrics")
        assert status == 200
        out = {"qido": 0.0, "metadata": 0.0, "hits": 0.0}
        for line in body.decode().splitlines():
            if m := re.match(r'facade_upstream_requests_total\{kind="(\w+)",outcome="[^"]*"\} (\S+)', line):
                out[m[1]] = out.get(m[1], 0.0) + float(m[2])
            elif m := re.match(r"facade_cache_hits (\S+)", line):
                out["hits"] = float(m[1])
        return out

    def close(self) -> None:
        self.conn.close()


def one_per_worker(facade: FacadeProcess, tries: int = 100) -> tuple[Worker, Worker]:
    """A connection to each of the two workers (the kernel decides which worker accepts a new connection)."""
    pids = workers(facade.pid)
    chosen: dict[int, Worker] = {}
    for _ in range(tries):
        w = Worker(facade.port, pids)
        assert w.pid in pids
        if w.pid in chosen:
            w.close()
        else:
            chosen[w.pid] = w
        if len(chosen) == 2:
            a, b = chosen.values()
            return a, b
    raise AssertionError(f"{tries} connections all went to worker {list(chosen)}: the other never accepted one")


@pytest.fixture
def pair(facade: FacadeProcess) -> Iterator[tuple[Worker, Worker]]:
    a, b = one_per_worker(facade)
    yield a, b
    a.close()
    b.close()


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited, not reaped yet


# -- the tests --------------------------------------------------------------------------------------------------


def test_both_workers_started_with_their_own_lifespan_and_the_json_log(facade):
    pids = workers(facade.pid)
    assert facade.log_path is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in facade.log_path.read_text().splitlines() if line.startswith("{")]
        started = [ln for ln in lines if ln["message"] == "Application startup complete."]
        if len(started) == 2:
            break
        time.sleep(0.1)
    assert len(started) == 2  # each worker ran the lifespan (the PACS clients, the Redis client)
    servers = {int(m[1]) for ln in lines if (m := re.fullmatch(r"Started server process \[(\d+)\]", ln["message"]))}
    assert servers == set(pids)
    # Redis is set: no warning about per-worker caches; the open-mode warning comes from each worker's lifespan.
    assert not [ln for ln in lines if "in-process cache" in ln["message"]]
    assert sum("AUTH_MODE=open" in ln["message"] for ln in lines) == 2


def test_a_miss_in_one_worker_is_a_redis_hit_in_the_other(facade, pacs, pair):
    a, b = pair
    assert a.pid != b.pid
    uid = pacs.study[0].StudyInstanceUID
    before_a, before_b = a.counters(), b.counters()
    first = a.json(f"/fhir/R4/ImagingStudy/{uid}")
    after_a = a.counters()
    assert after_a["qido"] > before_a["qido"]  # worker A asked Orthanc
    second = b.json(f"/fhir/R4/ImagingStudy/{uid}")
    after_b = b.counters()
    assert after_b["qido"] == before_b["qido"]  # worker B did not: Redis had A's rows
    assert after_b["hits"] > before_b["hits"]
    assert second == first
    # And a search B makes first is a hit for A.
    search = f"/fhir/R4/ImagingStudy?patient=Patient/{PID}"
    assert len(b.json(search)["entry"]) == 1
    before_a = a.counters()
    assert len(a.json(search)["entry"]) == 1
    assert a.counters()["qido"] == before_a["qido"]


def test_a_manifest_created_through_one_worker_is_in_the_next_search_through_the_other(facade, pacs, pair):
    a, b = pair
    study = pacs.study
    search = f"/fhir/R4/ImagingStudy?patient=Patient/{PID}"
    selections = f"/fhir/R5/ImagingSelection?patient=Patient/{PID}"
    for round_, (writer, reader) in enumerate([(a, b), (b, a), (a, b)], start=1):
        # Both workers have the current answers cached (in Redis) before the write.
        for w in (writer, reader):
            series = w.json(search)["entry"][0]["resource"]["numberOfSeries"]
            assert series == 2 + round_ - 1  # the CT series, plus one KO series per manifest made so far
            w.json(selections)
        body = {
            "resourceType": "ImagingSelection",
            "status": "available",
            "code": {"coding": [{"system": DCM, "code": "113004"}]},
            "studyUid": study[0].StudyInstanceUID,
            "seriesUid": study[0].SeriesInstanceUID,
            "instance": [{"uid": study[round_ % 2].SOPInstanceUID}],
        }
        status, created = writer.request("POST", "/fhir/R5/ImagingSelection", body)
        assert status == 201, created[:500]
        created_id = json.loads(created)["id"]
        # At once, through the other worker: no waiting for expiry.
        found = reader.json(selections)
        assert created_id in {e["resource"]["id"] for e in found["entry"]}
        assert reader.json(search)["entry"][0]["resource"]["numberOfSeries"] == 2 + round_


def test_connections_are_spread_over_the_workers(facade):
    """Each worker listens on a socket of its own (app.supervisor, SO_REUSEPORT): the kernel spreads connections by
    address hash, instead of the first worker awake taking every waiting connection of a shared socket."""
    pids = workers(facade.pid)
    opened = [Worker(facade.port, pids) for _ in range(16)]
    try:
        held = Counter(w.pid for w in opened)
    finally:
        for w in opened:
            w.close()
    assert set(held) == set(pids), held  # all 16 on one worker: 1 in 32,768 by chance


def test_the_sockets_share_one_port_and_a_port_in_use_is_refused():
    sockets = bind_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1
        port = ports.pop()
        with pytest.raises(OSError):  # a second facade on the same port, even one that also sets SO_REUSEPORT
            bind_sockets("127.0.0.1", port, 2)
    finally:
        for s in sockets:
            s.close()
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError):
            bind_sockets("127.0.0.1", plain.getsockname()[1], 2)


def test_sigterm_stops_every_process_within_shutdown_grace(pacs, tmp_path):
    # The in-process cache this time: the parent warns once that each worker has its own.
    log = tmp_path / "facade.log"
    env = {"FACADE_LOG_LEVEL": "info", "FACADE_SHUTDOWN_GRACE": str(GRACE)}
    with FacadeProcess(pacs.server.dicomweb_url, env=env, log=log, args=["--workers", "2"]) as facade:
        pids = [facade.pid, *children(facade.pid)]
        assert len(workers(facade.pid)) == 2
        a, b = one_per_worker(facade)
        started = time.monotonic()
        os.kill(facade.pid, signal.SIGTERM)
        while time.monotonic() - started < GRACE + 1 and not all(gone(p) for p in pids):
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        a.close()
        b.close()
        assert [p for p in pids if not gone(p)] == []
        assert elapsed < GRACE  # idle keep-alive connections do not hold the shutdown up
    warnings = [line for line in log.read_text().splitlines() if "in-process cache" in line]
    assert len(warnings) == 1 and json.loads(warnings[0])["level"] == "warning"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--workers", "2"], {"FACADE_DICOMWEB_URL": "ftp://pacs.example.org/dicom-web"}),
        (["--workers", "2"], {"FACADE_DICOMWEB_URL": "http://pacs.example.org", "FACADE_CACHE_TTL": "soon"}),
        (["--workers", "0"], {"FACADE_DICOMWEB_URL": "http://pacs.example.org"}),
    ],
)
def test_a_bad_configuration_with_workers_exits_2_with_one_line(args, env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACADE_")}
    run = subprocess.run(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", "9", *args],
        cwd=ROOT,
        env=base | {"FACADE_AUTH_MODE": "open"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("facade: configuration error: ")


def test_workers_that_cannot_start_stop_the_parent_with_status_3(tmp_path):
    """The configuration file is gone between the parent's check and the workers' start: the parent stops
    instead of starting them again and again, with uvicorn's startup-failure status (as one process does)."""
    config = tmp_path / "facade.toml"
    config.write_text('[facade]\ndicomweb_url = "http://127.0.0.1:9/dicom-web"\nauth_mode = "open"\n')
    log = tmp_path / "facade.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACADE_")}
    cmd = [sys.executable, "-m", "app", "--port", str(free_port()), "--workers", "2", "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=base, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        # The parent logs its one warning (no Redis) after it read the file and before it starts the workers.
        while "in-process cache" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        config.unlink()
        assert proc.wait(timeout=60) == 3
    finally:
        stop_process(proc)
    errors = [json.loads(line) for line in log.read_text().splitlines() if '"level": "error"' in line]
    assert any(e["message"] == f"configuration error: config file {config} does not exist" for e in errors)
