"""Facade vs. raw QIDO benchmark: latency (cold and cached), throughput, upstream calls per search, memory.

    python bench/run.py [--patients 100 --studies-per-patient 3 --series 3 --instances 4 --requests 200
                         --out bench/results.json]

Everything runs on 127.0.0.1: a private Orthanc (tests.support.orthanc) loaded with build_bulk data, and the
facade as a subprocess (``python -m app``). For each scenario the exact upstream requests the facade makes
are first recorded by running the facade's own code in-process (``create_app`` with a recording httpx
transport, cache off, ``Cache-Control: no-cache``); "raw QIDO" then replays those requests straight to
Orthanc, so raw and facade do the same PACS work. Phases, per scenario:

- raw vs cold: sequential, one keep-alive client each, interleaved request by request (raw first on even
  requests, facade first on odd ones) so drift and Orthanc's own caches affect both equally. Cold = facade
  request with ``Cache-Control: no-cache``, which sends every upstream request.
- warm: every distinct URL requested once (cache filled), then sequential latency.
- throughput: closed loop with ``--concurrency`` clients for ``--duration`` s, raw and warm back to back,
  with an asyncio httpx client and with ``wrk`` (if installed), same concurrency. A raw "request" is one
  whole search (all its upstream calls in order); with wrk, raw searches/s = upstream calls/s / calls per
  search.

Also recorded: the facade's RSS (before load, after the cold phases, after the warm ones), CPU per request of
the facade and of Orthanc (/proc), and the CPU other processes used meanwhile (the machine may be shared;
each phase first waits up to ``--quiet-wait`` s for a quiet moment). ``--from-json`` re-prints the tables of
a results file; ``--facade-gc-threshold`` is an experiment knob (see bench/README.md).

Every loop is bounded by a request count and by a time limit; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.fhir import patient_ids  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.support.dataset import Manifest, build_bulk  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402

FHIR = "/fhir/R4"
FHIR_HEADERS = {"Accept": "application/fhir+json"}
COLD_HEADERS = {**FHIR_HEADERS, "Cache-Control": "no-cache"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPLAYED_HEADERS = ("accept", "accept-encoding")
TARGET_COLD_RATIO = 1.10
TARGET_WARM_RATIO = 5.0
TARGET_CALLS_PER_PAGE = 2


class BenchError(RuntimeError):
    pass


# -- small helpers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds() -> float:
    """User + system CPU time of all cores since boot (/proc/stat). Interrupt and softirq time (loopback TCP
    under load: ~0.3 core) and steal are left out: they are not attributed to any process."""
    user, nice, system = (int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4])
    return (user + nice + system) / CLK_TCK


class ForeignCpu:
    """CPU used by processes other than this benchmark, its servers and its wrk runs, as a share of a core.

    A noise indicator: anything else running on the 2 cores (another test suite, a build) skews the numbers.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children: the wrk runs
        own = time.process_time() + children.ru_utime + children.ru_stime + sum(map(cpu_seconds, self._pids))
        return time.monotonic(), system_busy_seconds(), own

    def cores(self) -> float:
        t1, busy1, own1 = self._sample()
        t0, busy0, own0 = self._start
        return round(max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-6), 2)


async def wait_quiet(pids: Sequence[int], max_wait: float, threshold: float = 0.2) -> float:
    """Wait (at most ``max_wait`` s) for a 1 s window in which other processes used < ``threshold`` cores.

    Returns the seconds waited. Other sessions may run test suites on the same 2 cores; better to start a
    phase in a quiet moment than to measure them.
    """
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        meter = ForeignCpu(pids)
        await asyncio.sleep(1.0)
        if meter.cores() < threshold:
            break
    return round(time.monotonic() - start, 1)


async def settle(pid: int, max_wait: float = 15.0) -> float:
    """Wait (at most ``max_wait`` s) until process ``pid`` is idle (< 0.05 core over 0.5 s); time waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        cpu0 = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - cpu0 < 0.025:
            break
    return round(time.monotonic() - start, 1)


def code_version() -> str:
    """The commit the facade code comes from, with "+dirty" when app/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")),
        "0",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- scenarios ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    url: str  # absolute upstream URL, query exactly as the facade sent it
    headers: tuple[tuple[str, str], ...]  # the facade's Accept and Accept-Encoding, replayed as sent
    stage: int = 0  # calls the facade had in flight together share a stage; stages run one after another


@dataclass
class Scenario:
    key: str
    title: str
    paths: list[str]  # facade paths, one per request (drawn with a fixed seed)
    calls: dict[str, list[Call]] = field(default_factory=dict)  # distinct path -> upstream calls
    results: dict[str, int] = field(default_factory=dict)  # distinct path -> studies in the answer
    is_page: bool = True  # a search page (the ≤ 2 calls target applies); False for a read


def build_scenarios(manifest: Manifest, n: int, seed: int) -> list[Scenario]:
    rng = random.Random(seed)
    patients = [patient_ids.encode(pid, issuer) for pid, issuer in manifest.patients]
    ct_patients = list(
        dict.fromkeys(patient_ids.encode(s.patient_id, s.issuer) for s in manifest.studies if "CT" in s.modalities)
    )
    uids = [s.study_uid for s in manifest.studies]
    if not patients or not ct_patients or not uids:
        raise BenchError("the dataset needs patients, CT studies and studies")
    return [
        Scenario(
            "patient",
            "patient search",
            [f"{FHIR}/ImagingStudy?patient=Patient/{rng.choice(patients)}" for _ in range(n)],
        ),
        Scenario(
            "patient_ct",
            "patient + modality=CT",
            [f"{FHIR}/ImagingStudy?patient=Patient/{rng.choice(ct_patients)}&modality=CT" for _ in range(n)],
        ),
        Scenario(
            "date_range",
            "started 2019-2020, _count=50",
            [f"{FHIR}/ImagingStudy?started=ge2019-01-01&started=lt2021-01-01&_count=50"] * n,
        ),
        Scenario(
            "read",
            "read ImagingStudy/<uid>",
            [f"{FHIR}/ImagingStudy/{rng.choice(uids)}" for _ in range(n)],
            is_page=False,
        ),
        Scenario(
            "identifier",
            "identifier=urn:dicom:uid|urn:oid:<uid>",
            [f"{FHIR}/ImagingStudy?identifier=urn:dicom:uid%7Curn:oid:{rng.choice(uids)}" for _ in range(n)],
        ),
    ]


def facade_env(dicomweb_url: str, cache_ttl: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACADE_")}
    env.update(
        {
            "FACADE_DICOMWEB_URL": dicomweb_url,
            "FACADE_CACHE_TTL": str(cache_ttl),
            "FACADE_LOG_LEVEL": "warning",
            "FACADE_AUTH_MODE": "open",  # the shipped config says smart; the benchmark measures the data path
        }
    )
    return env


def studies_in(body: Any) -> int:
    if isinstance(body, dict) and body.get("resourceType") == "ImagingStudy":
        return 1
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return sum(1 for e in body.get("entry", []) if e.get("search", {}).get("mode") == "match")
    raise BenchError(f"unexpected answer {str(body)[:200]}")


class RecordingTransport(httpx.AsyncBaseTransport):
    """Forwards to the network and remembers each request the facade sends upstream, and when."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.log: list[tuple[float, float, Call]] = []  # (sent, answer headers received, call)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        call = Call(
            f"{url.scheme}://{url.netloc.decode()}{url.raw_path.decode()}",
            tuple((k, v) for k in REPLAYED_HEADERS if (v := request.headers.get(k)) is not None),
        )
        sent = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        self.log.append((sent, time.perf_counter(), call))
        return response

    def calls(self) -> list[Call]:
        """Calls in sending order; one sent before all calls of the current stage were answered joins it."""
        out: list[Call] = []
        stage, stage_end = -1, 0.0
        for sent, answered, call in sorted(self.log, key=lambda e: e[0]):
            if stage < 0 or sent >= stage_end:
                stage, stage_end = stage + 1, answered
            else:
                stage_end = min(stage_end, answered)
            out.append(Call(call.url, call.headers, stage))
        return out

    async def aclose(self) -> None:
        await self._inner.aclose()


async def record_calls(scenarios: list[Scenario], dicomweb_url: str, origin: str) -> None:
    """Run the facade's own code in-process (cache off, no-cache); record its upstream requests per path."""
    settings = Settings.load(facade_env(dicomweb_url, 0))
    transport = RecordingTransport()
    app = create_app(settings, transport=transport)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=origin) as client,
    ):
        for sc in scenarios:
            for path in dict.fromkeys(sc.paths):
                transport.log.clear()
                response = await client.get(path, headers=COLD_HEADERS)
                if response.status_code != 200:
                    raise BenchError(f"in-process facade: {path} -> {response.status_code} {response.text[:300]}")
                sc.calls[path] = transport.calls()
                sc.results[path] = studies_in(response.json())


# -- processes ---------------------------------------------------------------------------------------------


class FacadeProcess:
    """``python -m app`` on a free port. ``gc_threshold`` (an experiment, off by default) runs the same module
    after ``gc.set_threshold(...)``, to measure what the cyclic GC costs without touching app/."""

    def __init__(
        self, dicomweb_url: str, cache_ttl: float, logdir: Path, gc_threshold: tuple[int, ...] | None = None
    ) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self._log_path = logdir / "facade.log"
        self._log = open(self._log_path, "wb")  # closed in stop()
        argv = ["--host", "127.0.0.1", "--port", str(self.port)]
        if gc_threshold:
            boot = (
                f"import gc, runpy, sys; gc.set_threshold(*{gc_threshold!r}); sys.argv = ['app', *{argv!r}]; "
                "runpy.run_module('app', run_name='__main__', alter_sys=True)"
            )
            cmd = [sys.executable, "-c", boot]
        else:
            cmd = [sys.executable, "-m", "app", *argv]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=facade_env(dicomweb_url, cache_ttl),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"facade exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(self.origin + FHIR + "/metadata", headers=FHIR_HEADERS).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise BenchError(f"facade did not answer {FHIR}/metadata within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # this PID only
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


# -- one request of each kind --------------------------------------------------------------------------------


@asynccontextmanager
async def client_for(
    concurrency: int, *, base_url: str = "", upstream: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    # Orthanc closes idle keep-alive connections after 1 s (orthanc-qido.md); expire ours sooner.
    limits = httpx.Limits(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=0.8 if upstream else 4.0,
    )
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0, trust_env=False) as client:
        yield client


async def get(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    for attempt in (1, 2):
        try:
            response = await client.get(url, headers=headers)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            if attempt == 2:
                raise
            continue  # a pooled connection the server had just closed
        if response.status_code != 200:
            raise BenchError(f"GET {url[:120]} -> {response.status_code}: {response.text[:200]}")
        return response
    raise AssertionError("unreachable")


async def raw_search(client: httpx.AsyncClient, calls: list[Call]) -> None:
    """The facade's calls stage after stage (later ones need earlier answers), a stage's calls together."""
    for _, group in itertools.groupby(calls, key=lambda c: c.stage):
        stage = list(group)
        if len(stage) == 1:
            await get(client, stage[0].url, dict(stage[0].headers))
        else:
            await asyncio.gather(*(get(client, c.url, dict(c.headers)) for c in stage))


async def facade_request(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    await get(client, path, headers)


# -- phases -----------------------------------------------------------------------------------------------


@dataclass
class Series:
    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    req_s: float  # n / wall time of the phase

    @classmethod
    def of(cls, latencies: list[float], wall: float | None = None) -> Series:
        total = wall if wall is not None else sum(latencies)
        return cls(
            len(latencies),
            ms(percentile(latencies, 50)),
            ms(percentile(latencies, 95)),
            ms(sum(latencies) / len(latencies)) if latencies else float("nan"),
            round(len(latencies) / total, 1) if total > 0 else float("nan"),
        )


async def raw_vs_cold(
    sc: Scenario, facade: FacadeProcess, orthanc_pid: int, max_seconds: float
) -> tuple[Series, Series, dict[str, float]]:
    raw: list[float] = []
    cold: list[float] = []
    orthanc_cpu = {"raw": 0.0, "cold": 0.0}
    async with client_for(1, upstream=True) as rc, client_for(1, base_url=facade.origin) as fc:
        # one untimed round each, to open the connections
        await raw_search(rc, sc.calls[sc.paths[0]])
        await facade_request(fc, sc.paths[0], COLD_HEADERS)
        facade_cpu0 = cpu_seconds(facade.pid)
        deadline = time.monotonic() + max_seconds
        for i, path in enumerate(sc.paths):
            if time.monotonic() > deadline:
                break
            for kind in ("raw", "cold") if i % 2 == 0 else ("cold", "raw"):
                cpu0 = cpu_seconds(orthanc_pid)
                t0 = time.perf_counter()
                if kind == "raw":
                    await raw_search(rc, sc.calls[path])
                    raw.append(time.perf_counter() - t0)
                else:
                    await facade_request(fc, path, COLD_HEADERS)
                    cold.append(time.perf_counter() - t0)
                orthanc_cpu[kind] += cpu_seconds(orthanc_pid) - cpu0
        facade_cpu = cpu_seconds(facade.pid) - facade_cpu0
    cpu = {
        # CPU time per request, from /proc (10 ms ticks, so only meaningful summed over many requests)
        "facade_ms_per_cold_request": ms(facade_cpu / max(len(cold), 1)),
        "orthanc_ms_per_raw_request": ms(orthanc_cpu["raw"] / max(len(raw), 1)),
        "orthanc_ms_per_cold_request": ms(orthanc_cpu["cold"] / max(len(cold), 1)),
    }
    return Series.of(raw), Series.of(cold), cpu


async def prewarm(sc: Scenario, facade: str) -> int:
    """Fill the facade's cache with every distinct URL; check it answers what the in-process run did."""
    mismatches = 0
    async with client_for(1, base_url=facade) as fc:
        for path in dict.fromkeys(sc.paths):
            response = await get(fc, path, FHIR_HEADERS)
            if studies_in(response.json()) != sc.results[path]:
                mismatches += 1
    return mismatches


async def warm_sequential(sc: Scenario, facade: str, max_seconds: float) -> Series:
    latencies: list[float] = []
    async with client_for(1, base_url=facade) as fc:
        deadline = time.monotonic() + max_seconds
        t_start = time.perf_counter()
        for path in sc.paths:
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            await facade_request(fc, path, FHIR_HEADERS)
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - t_start
    return Series.of(latencies, wall)


@dataclass
class Load:
    tool: str
    concurrency: int
    seconds: float
    requests: int  # completed searches (raw) or facade requests
    errors: int
    req_s: float
    p50_ms: float | None
    p95_ms: float | None
    client_cpu: float | None  # share of one core the load generator used (httpx only)
    server_cpu: float | None  # share of one core the server under test used (facade or Orthanc)
    upstream_cpu: float | None = None  # Orthanc's share of one core during a facade run


async def closed_loop(
    op: Callable[[int], Awaitable[None]],
    n_items: int,
    concurrency: int,
    duration: float,
    max_ops: int,
    server_pid: int,
    other_pid: int | None = None,
) -> Load:
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            k = next(counter)
            if k >= max_ops:
                return
            t0 = time.perf_counter()
            try:
                await op(k % n_items)
            except (BenchError, httpx.HTTPError):
                errors += 1
                if errors > 50:
                    raise
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0, srv0 = time.process_time(), cpu_seconds(server_pid)
    oth0 = cpu_seconds(other_pid) if other_pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return Load(
        "httpx",
        concurrency,
        round(wall, 2),
        len(latencies),
        errors,
        round(len(latencies) / wall, 1),
        ms(percentile(latencies, 50)),
        ms(percentile(latencies, 95)),
        round((time.process_time() - cpu0) / wall, 2),
        round((cpu_seconds(server_pid) - srv0) / wall, 2),
        round((cpu_seconds(other_pid) - oth0) / wall, 2) if other_pid else None,
    )


async def raw_load(sc: Scenario, concurrency: int, duration: float, max_ops: int, orthanc_pid: int) -> Load:
    async with client_for(concurrency, upstream=True) as rc:
        return await closed_loop(
            lambda i: raw_search(rc, sc.calls[sc.paths[i]]),
            len(sc.paths),
            concurrency,
            duration,
            max_ops,
            orthanc_pid,
        )


async def warm_load(
    sc: Scenario,
    facade: str,
    concurrency: int,
    duration: float,
    max_ops: int,
    facade_pid: int,
    orthanc_pid: int,
) -> Load:
    async with client_for(concurrency, base_url=facade) as fc:
        return await closed_loop(
            lambda i: facade_request(fc, sc.paths[i], FHIR_HEADERS),
            len(sc.paths),
            concurrency,
            duration,
            max_ops,
            facade_pid,
            orthanc_pid,
        )


WRK_SCRIPT = """
local paths = {%(paths)s}
local headers = {%(headers)s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"status_errors\\":%%d,\\"socket_errors\\":%%d," ..
    "\\"p50_us\\":%%d,\\"p95_us\\":%%d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95)))
end
"""


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(
    origin: str,
    paths: list[str],
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    workdir: Path,
    server_pid: int,
    calls_per_op: float = 1.0,
    other_pid: int | None = None,
    cpus: str | None = None,
) -> Load:
    """wrk cycling through ``paths`` (each connection its own position); -t1 leaves a core to the server.
    ``cpus``: run wrk pinned to these cores (``taskset -c``), away from the server's."""
    script = workdir / f"wrk-{time.monotonic_ns()}.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "paths": ", ".join(lua_string(p) for p in paths),
            "headers": ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()),
        }
    )
    cmd = [
        *(["taskset", "-c", cpus] if cpus else []),
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{int(duration)}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        origin,
    ]
    srv0 = cpu_seconds(server_pid)
    oth0 = cpu_seconds(other_pid) if other_pid else 0.0
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    wall = time.perf_counter() - t0
    match = re.search(r"BENCHJSON (\{.*\})", proc.stdout)
    if proc.returncode != 0 or not match:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    data = json.loads(match.group(1))
    seconds = data["duration_us"] / 1e6
    ops = data["requests"] / calls_per_op
    per_call = calls_per_op == 1.0
    return Load(
        "wrk",
        concurrency,
        round(seconds, 2),
        int(ops),
        data["status_errors"] + data["socket_errors"],
        round(ops / seconds, 1),
        ms(data["p50_us"] / 1e6) if per_call else None,
        ms(data["p95_us"] / 1e6) if per_call else None,
        None,
        round((cpu_seconds(server_pid) - srv0) / wall, 2),
        round((cpu_seconds(other_pid) - oth0) / wall, 2) if other_pid else None,
    )


# -- the run ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--patients", type=int, default=100)
    p.add_argument("--studies-per-patient", type=int, default=3)
    p.add_argument("--series", type=int, default=3)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--requests", type=int, default=200, help="requests per scenario and sequential phase")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    p.add_argument("--phase-seconds", type=float, default=90.0, help="time cap of each sequential phase")
    p.add_argument("--scenarios", default="", help="comma list of scenario keys to run (default: all)")
    p.add_argument("--no-wrk", action="store_true", help="skip the wrk runs even if wrk is installed")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each phase, wait up to this many seconds for other processes to be idle",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--facade-gc-threshold",
        default="",
        metavar="G0,G1,G2",
        help="experiment: start the facade after gc.set_threshold(G0, G1, G2) (default: Python's)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="measure nothing: print the tables of an earlier results file",
    )
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def measure(
    args: argparse.Namespace,
    pacs: OrthancServer,
    facade: FacadeProcess,
    scenarios: list[Scenario],
    workdir: Path,
) -> dict[str, Any]:
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    rss = {"before_load_kib": rss_kib(facade.pid)}
    out: dict[str, dict[str, Any]] = {}
    for sc in scenarios:
        calls = [len(sc.calls[p]) for p in sc.paths]
        results = [sc.results[p] for p in sc.paths]
        out[sc.key] = {
            "title": sc.title,
            "example_path": sc.paths[0],
            "distinct_paths": len(sc.calls),
            "upstream_calls_per_search": {
                "min": min(calls),
                "max": max(calls),
                "mean": sum(calls) / len(calls),
            },
            "studies_per_answer": {
                "min": min(results),
                "max": max(results),
                "mean": sum(results) / len(results),
            },
            "upstream_stages_per_search": max(len({c.stage for c in cl}) for cl in sc.calls.values()),
            "example_upstream_calls": [c.url.replace(pacs.dicomweb_url, "{dicomweb}") for c in sc.calls[sc.paths[0]]],
            "is_page": sc.is_page,
        }
    for sc in scenarios:
        log(f"{sc.key}: raw vs cold, sequential, {len(sc.paths)} requests each")
        waited = {"raw_vs_cold": await wait_quiet([facade.pid, pacs.pid], args.quiet_wait)}
        foreign = ForeignCpu([facade.pid, pacs.pid])
        raw, cold, cpu = await raw_vs_cold(sc, facade, pacs.pid, args.phase_seconds)
        out[sc.key]["foreign_cpu_cores"] = {"raw_vs_cold": foreign.cores()}
        out[sc.key]["waited_for_quiet_s"] = waited
        out[sc.key]["raw_seq"] = asdict(raw)
        out[sc.key]["cold_seq"] = asdict(cold)
        out[sc.key]["cold_cpu"] = cpu
        out[sc.key]["cold_ratio_p50"] = round(cold.p50_ms / raw.p50_ms, 3)
        out[sc.key]["cold_ratio_p95"] = round(cold.p95_ms / raw.p95_ms, 3)
        out[sc.key]["cold_ratio_mean"] = round(cold.mean_ms / raw.mean_ms, 3)
        log(f"  raw p50 {raw.p50_ms} ms, cold p50 {cold.p50_ms} ms ({out[sc.key]['cold_ratio_p50']}x)")
    rss["after_cold_kib"] = rss_kib(facade.pid)
    max_ops = 1_000_000
    for sc in scenarios:
        log(f"{sc.key}: warm")
        out[sc.key]["waited_for_quiet_s"]["warm_and_load"] = await wait_quiet([facade.pid, pacs.pid], args.quiet_wait)
        foreign = ForeignCpu([facade.pid, pacs.pid])
        out[sc.key]["prewarm_mismatches"] = await prewarm(sc, facade.origin)
        out[sc.key]["warm_seq"] = asdict(await warm_sequential(sc, facade.origin, args.phase_seconds))
        loads: dict[str, Any] = {}
        loads["raw_httpx"] = asdict(await raw_load(sc, args.concurrency, args.duration, max_ops, pacs.pid))
        loads["warm_httpx"] = asdict(
            await warm_load(sc, facade.origin, args.concurrency, args.duration, max_ops, facade.pid, pacs.pid)
        )
        loads["ratio_httpx"] = round(loads["warm_httpx"]["req_s"] / loads["raw_httpx"]["req_s"], 2)
        if use_wrk:
            flat = [c.url for p in sc.paths for c in sc.calls[p]]
            raw_paths = [u[len(pacs.url) :] for u in flat]
            per_search = len(flat) / len(sc.paths)
            upstream_headers = dict(sc.calls[sc.paths[0]][0].headers)
            loads["raw_wrk"] = asdict(
                await asyncio.to_thread(
                    run_wrk,
                    pacs.url,
                    raw_paths,
                    upstream_headers,
                    args.concurrency,
                    args.duration,
                    workdir,
                    pacs.pid,
                    per_search,
                )
            )
            # wrk hangs up at the deadline, but Orthanc finishes the requests it had: let it go idle first.
            loads["raw_wrk"]["settle_s"] = await settle(pacs.pid)
            loads["warm_wrk"] = asdict(
                await asyncio.to_thread(
                    run_wrk,
                    facade.origin,
                    sc.paths,
                    FHIR_HEADERS,
                    args.concurrency,
                    args.duration,
                    workdir,
                    facade.pid,
                    1.0,
                    pacs.pid,
                )
            )
            loads["ratio_wrk"] = round(loads["warm_wrk"]["req_s"] / loads["raw_wrk"]["req_s"], 2)
        out[sc.key]["load"] = loads
        out[sc.key]["foreign_cpu_cores"]["warm_and_load"] = foreign.cores()
        log(
            f"  warm p50 {out[sc.key]['warm_seq']['p50_ms']} ms; req/s raw {loads['raw_httpx']['req_s']} "
            f"warm {loads['warm_httpx']['req_s']} (httpx)"
            + (f", raw {loads['raw_wrk']['req_s']} warm {loads['warm_wrk']['req_s']} (wrk)" if use_wrk else "")
        )
    rss["after_warm_kib"] = rss_kib(facade.pid)
    return {"scenarios": out, "rss": rss, "wrk": use_wrk}


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sc in result["scenarios"].items():
        load = sc["load"]
        ratio = load.get("ratio_wrk", load["ratio_httpx"])
        out[key] = {
            "cold_le_1.10x_raw": sc["cold_ratio_p50"] <= TARGET_COLD_RATIO,
            "warm_ge_5x_raw": ratio >= TARGET_WARM_RATIO,
            "calls_le_2": sc["upstream_calls_per_search"]["max"] <= TARGET_CALLS_PER_PAGE,
        }
    return out


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return str(value)


def pair(a: Any, b: Any) -> str:
    return f"{fmt(a)} / {fmt(b)}"


def row(*cells: Any) -> str:
    return "| " + " | ".join(fmt(c).replace("|", "\\|") for c in cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    scs = result["scenarios"]
    meta, ds, args = result["meta"], result["meta"]["dataset"], result["meta"]["args"]
    ok = {True: "ok", False: "**MISSED**"}
    c = args["concurrency"]
    machine = meta["machine"]
    lines = [
        f"Run {meta['date']} (app at {meta.get('code', 'unknown')}), {machine['cpus']} vCPU "
        f"({machine['cpu_model']}), dataset "
        f"{ds['patients']} patients / {ds['studies']} studies / {ds['series']} series / {ds['instances']} "
        f"instances; {args['requests']} requests per sequential phase, concurrency {c}, "
        f"{args['duration']:.0f} s per throughput run."
        + (
            f" EXPERIMENT: facade started after gc.set_threshold({args['facade_gc_threshold']})."
            if args["facade_gc_threshold"]
            else ""
        ),
        "",
        "Latency (sequential, one keep-alive connection; raw = the facade's own upstream calls replayed to Orthanc)",
        "",
        row(
            "scenario",
            "studies/answer",
            "upstream calls",
            "raw p50 / p95 ms",
            "cold p50 / p95 ms",
            "cold/raw p50 (p95)",
            "facade CPU ms / cold req",
            "warm p50 / p95 ms",
            "raw seq req/s",
            "warm seq req/s",
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scs.values():
        calls = sc["upstream_calls_per_search"]
        raw, cold, warm = sc["raw_seq"], sc["cold_seq"], sc["warm_seq"]
        lines.append(
            row(
                sc["title"],
                f"{sc['studies_per_answer']['mean']:.1f}",
                str(calls["max"]) if calls["min"] == calls["max"] else f"{calls['min']}-{calls['max']}",
                pair(raw["p50_ms"], raw["p95_ms"]),
                pair(cold["p50_ms"], cold["p95_ms"]),
                f"{sc['cold_ratio_p50']:.2f}x ({sc['cold_ratio_p95']:.2f}x)",
                sc["cold_cpu"]["facade_ms_per_cold_request"],
                pair(warm["p50_ms"], warm["p95_ms"]),
                raw["req_s"],
                warm["req_s"],
            )
        )
    lines += [
        "",
        f"Throughput (closed loop, {c} concurrent keep-alive clients; a raw request = one whole search)",
        "",
        row(
            "scenario",
            "raw req/s httpx",
            "warm req/s httpx",
            "ratio httpx",
            "raw req/s wrk",
            "warm req/s wrk",
            "ratio wrk",
            f"warm p50 / p95 ms (wrk c{c})",
            "facade CPU (wrk warm)",
            "client CPU (httpx warm)",
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scs.values():
        ld = sc["load"]
        rw, ww = ld.get("raw_wrk"), ld.get("warm_wrk")
        lines.append(
            row(
                sc["title"],
                ld["raw_httpx"]["req_s"],
                ld["warm_httpx"]["req_s"],
                f"{ld['ratio_httpx']:.1f}x",
                rw["req_s"] if rw else None,
                ww["req_s"] if ww else None,
                f"{ld['ratio_wrk']:.1f}x" if ww else None,
                pair(ww["p50_ms"], ww["p95_ms"]) if ww else None,
                ww["server_cpu"] if ww else None,
                ld["warm_httpx"]["client_cpu"],
            )
        )
    rss = {k: v / 1024 for k, v in result["rss"].items()}
    foreign = max(v for sc in scs.values() for v in sc["foreign_cpu_cores"].values())
    lines += [
        "",
        f"Other processes on the machine used at most {foreign:.2f} cores during any phase "
        "(noise indicator: the machine is shared).",
        f"Facade RSS: {rss['before_load_kib']:.1f} MiB before load, {rss['after_cold_kib']:.1f} MiB after "
        f"the cold phases, {rss['after_warm_kib']:.1f} MiB after the warm phases.",
        "",
        "Targets: cold <= 1.10x raw (p50), warm >= 5x raw QIDO req/s (wrk if run, else httpx), "
        "<= 2 upstream calls per page",
        "",
        row("scenario", "cold <= 1.10x raw", "warm >= 5x raw", "<= 2 calls"),
        "|---|---|---|---|",
    ]
    for key, v in result["verdicts"].items():
        sc = scs[key]
        ratio = sc["load"].get("ratio_wrk", sc["load"]["ratio_httpx"])
        lines.append(
            row(
                sc["title"],
                f"{ok[v['cold_le_1.10x_raw']]} ({sc['cold_ratio_p50']:.2f}x)",
                f"{ok[v['warm_ge_5x_raw']]} ({ratio:.1f}x)",
                f"{ok[v['calls_le_2']]} ({sc['upstream_calls_per_search']['max']})",
            )
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    t_start = time.monotonic()
    version = code_version()
    log(f"generating {args.patients}x{args.studies_per_patient}x{args.series}x{args.instances} (seed {args.seed})")
    datasets, manifest = build_bulk(
        args.patients, args.studies_per_patient, args.series, args.instances, seed=args.seed
    )
    scenarios = build_scenarios(manifest, args.requests, args.seed)
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [s for s in scenarios if s.key in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="facade-bench-"))
    try:
        with OrthancServer() as pacs:
            log(f"Orthanc pid {pacs.pid} at {pacs.url}; storing {len(datasets)} instances")
            t0 = time.monotonic()
            stored = store(pacs.dicomweb_url, datasets, batch=50, workers=2)
            load_seconds = time.monotonic() - t0
            log(f"stored {stored} instances in {load_seconds:.1f} s")
            gc_threshold = tuple(int(x) for x in args.facade_gc_threshold.split(",") if x) or None
            facade = FacadeProcess(pacs.dicomweb_url, 86400, workdir, gc_threshold)
            try:  # the facade is stopped before Orthanc
                facade.wait_ready()
                log(f"facade pid {facade.pid} at {facade.origin}; recording upstream calls in-process")
                asyncio.run(record_calls(scenarios, pacs.dicomweb_url, facade.origin))
                result = asyncio.run(measure(args, pacs, facade, scenarios, workdir))
                if facade.proc.poll() is not None:
                    raise BenchError(f"facade died during the run:\n{facade.log_tail()}")
            finally:
                facade.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "code": version,
        "dataset": {
            "patients": len(manifest.patients),
            "studies": len(manifest.studies),
            "series": manifest.n_series,
            "instances": manifest.n_instances,
            "seed": args.seed,
            "store_seconds": round(load_seconds, 1),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_seconds": round(time.monotonic() - t_start, 1),
        "targets": {
            "cold_ratio_max": TARGET_COLD_RATIO,
            "warm_ratio_min": TARGET_WARM_RATIO,
            "calls_per_page_max": TARGET_CALLS_PER_PAGE,
        },
    }
    result["verdicts"] = verdicts(result)
    table = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    log(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
