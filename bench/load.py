"""Load test: many concurrent FHIR clients against the facade and a private Orthanc, all on 127.0.0.1.

    python bench/load.py [--clients 64] [--duration 60] [--patients 100 ...] [--mix KIND=WEIGHT,...]
                         [--cold-share 0.2] [--out bench/load.json] [--markdown FILE]
    python bench/load.py --clients 8 --duration 5 --patients 10       # smoke run, under a minute
    python bench/load.py --from-json bench/load.json                  # re-print the tables of a results file

What it does:

1. Generates ``build_bulk`` data (tests.support.dataset) plus a few Key Object Selection documents
   (tests.support.kos ``make_kos``: key images of every ``--kos-every``-th patient) and stores them into a private
   Orthanc (tests.support.orthanc: temp storage, free port on 127.0.0.1).
2. Starts the facade as a subprocess (``python -m app``, tests.support.facade) on a free loopback port, with the
   facade's default cache TTL (60 s, ``--cache-ttl``), so entries expire and refill during a long run, and with
   SMART authorization (``--auth smart``, the facade's default: a JWK Set file from tests.support.tokens, one
   ``user/*.read`` token per client) or none (``--auth open``).
3. ``--clients`` asyncio httpx clients, each with one keep-alive connection, run a closed loop (no think time)
   for ``--duration`` seconds over a request mix on both bases (``--mix``, see KINDS): R4 ImagingStudy by
   patient, patient + modality, a one-year date range with ``_count=20``, a study read, Patient read, search
   by identifier and by family name, R5 ImagingStudy by patient and R5 ImagingSelection by patient. A share of
   the requests (``--cold-share``) carries ``Cache-Control: no-cache`` and so goes to the PACS; the rest may
   be answered from the cache. Every ``--check-every``-th answer of each client is parsed and compared with
   the generated ground truth (match count, or the id of a read).
4. A sampler thread reads, every second, the RSS (VmRSS) and CPU time of the facade and of Orthanc, the facade's
   open file descriptors, this process's CPU (the load generator), the CPU of everything else on the machine
   (it may be shared: other sessions run test suites on the same 2 cores), the kernel's CPU and I/O pressure,
   and the facade's ``/metrics`` (QIDO cache hits, misses and bytes, PACS calls, circuit breaker).
5. Reports: requests, errors by status (or exception), throughput per ``--window`` s, p50/p95/p99 overall and
   per request kind (answered from the cache or not, and cold, apart), RSS at start/peak/end/after 5 s idle and
   its slope (least squares over the second half of the run, MiB/min), CPU of facade, Orthanc, load generator
   and other processes, kernel TCP counters, and whether a process died.

Bounded: the clients stop at the deadline (``--duration``) or after ``--max-requests`` in total, whichever
comes first; requests still in flight get ``--grace`` s and are then cancelled (counted as errors). Facade
and Orthanc are stopped by PID when their ``with`` blocks exit, whatever happened. Everything binds to and talks
to 127.0.0.1 only. Exit status 1 when there were errors, wrong answers or a process died.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.fhir import patient_ids  # noqa: E402
from bench.run import (  # noqa: E402
    COLD_HEADERS,
    FHIR_HEADERS,
    BenchError,
    ForeignCpu,
    client_for,
    code_version,
    cpu_seconds,
    fmt,
    log,
    machine_info,
    ms,
    pair,
    percentile,
    row,
    rss_kib,
    system_busy_seconds,
    wait_quiet,
)
from tests.support.dataset import Manifest, build_bulk  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.kos import PURPOSES, make_kos  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer  # noqa: E402

R4 = "/fhir/R4"
R5 = "/fhir/R5"
DATE_PAGE = 20  # _count of the date-range search
MODES = ("repeat", "first", "cold")
SCOPE = "user/*.read"  # SMART scope of every client's token (an EMR user)
FLAT_MIB_PER_MIN = 1.0  # |RSS slope| over the second half below this: "memory flat"

# kind -> (title, default weight); the mix is drawn per request with these weights
KINDS: dict[str, tuple[str, int]] = {
    "study_patient": ("R4 ImagingStudy?patient=", 25),
    "study_patient_ct": ("R4 ImagingStudy?patient=&modality=CT", 10),
    "study_dates": (f"R4 ImagingStudy?started=<one year>&_count={DATE_PAGE}", 5),
    "study_read": ("R4 ImagingStudy/<uid>", 15),
    "patient_read": ("R4 Patient/<id>", 10),
    "patient_identifier": ("R4 Patient?identifier=", 8),
    "patient_family": ("R4 Patient?family=", 2),
    "r5_study_patient": ("R5 ImagingStudy?patient=", 15),
    "r5_selection_patient": ("R5 ImagingSelection?patient=", 10),
}
DEFAULT_MIX = ",".join(f"{k}={w}" for k, (_, w) in KINDS.items())


# -- the data ------------------------------------------------------------------------------------------------


def add_kos(datasets: list[Dataset], manifest: Manifest, every: int, seed: int) -> tuple[list[Dataset], Counter[str]]:
    """Key-image documents for every ``every``-th patient: one in its first study selecting two images, and for
    every other such patient a second one in its second study. Titles cycle through the non-rejection CID 7010
    titles (a rejection note would hide instances and change the ImagingStudy answers). Returns the documents
    and the number of documents per PatientID."""
    by_study: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        by_study[str(ds.StudyInstanceUID)].append(ds)
    per_patient: Counter[str] = Counter()
    docs: list[Dataset] = []
    if every <= 0:
        return docs, per_patient
    for n, (patient_id, issuer) in enumerate(manifest.patients[::every]):
        studies = manifest.studies_of(patient_id, issuer)
        for k, study in enumerate(studies[: 1 + n % 2]):
            images = by_study[study.study_uid][:2]
            title = PURPOSES[(n + k) % len(PURPOSES)]
            docs.append(make_kos(images, title=title, description=f"load test {n}.{k}", seed=seed))
            per_patient[patient_id] += 1
    return docs, per_patient


# -- the request mix -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    path: str
    resource_type: str
    matches: int | None = None  # a searchset: the number of entries with search.mode "match"
    rid: str | None = None  # a read: the resource id


def build_targets(manifest: Manifest, kos_per_patient: Counter[str]) -> dict[str, list[Target]]:
    """Every distinct request of each kind, with the answer the generated data implies."""
    studies = manifest.studies
    pids = {(p, i): patient_ids.encode(p, i) for p, i in manifest.patients}
    of = {key: manifest.studies_of(*key) for key in pids}
    years = sorted({s.study_date[:4] for s in studies if s.study_date})
    families = sorted({s.patient_name.split("^")[0] for s in studies})
    # one name per bulk patient; no family name is the start of another, so "starts with" = "equals" here
    family_count = Counter(name.split("^")[0] for name in {s.patient_id: s.patient_name for s in studies}.values())
    targets: dict[str, list[Target]] = {
        "study_patient": [
            Target(f"{R4}/ImagingStudy?patient=Patient/{pid}", "Bundle", matches=len(of[key]))
            for key, pid in pids.items()
        ],
        "study_patient_ct": [
            Target(
                f"{R4}/ImagingStudy?patient=Patient/{pid}&modality=CT",
                "Bundle",
                matches=sum("CT" in s.modalities for s in of[key]),
            )
            for key, pid in pids.items()
            if any("CT" in s.modalities for s in of[key])
        ],
        "study_dates": [
            Target(
                f"{R4}/ImagingStudy?started=ge{y}-01-01&started=lt{int(y) + 1}-01-01&_count={DATE_PAGE}",
                "Bundle",
                matches=min(DATE_PAGE, sum(s.study_date[:4] == y for s in studies if s.study_date)),
            )
            for y in years
        ],
        "study_read": [Target(f"{R4}/ImagingStudy/{s.study_uid}", "ImagingStudy", rid=s.study_uid) for s in studies],
        "patient_read": [Target(f"{R4}/Patient/{pid}", "Patient", rid=pid) for pid in pids.values()],
        "patient_identifier": [
            Target(f"{R4}/Patient?identifier={key[0]}", "Bundle", matches=1) for key in pids if key[1] is None
        ],
        "patient_family": [Target(f"{R4}/Patient?family={f}", "Bundle", matches=family_count[f]) for f in families],
        "r5_study_patient": [
            Target(f"{R5}/ImagingStudy?patient=Patient/{pid}", "Bundle", matches=len(of[key]))
            for key, pid in pids.items()
        ],
        "r5_selection_patient": [
            Target(f"{R5}/ImagingSelection?patient=Patient/{pid}", "Bundle", matches=kos_per_patient[key[0]])
            for key, pid in pids.items()
            if kos_per_patient[key[0]]
        ],
    }
    return targets


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, weight = item.partition("=")
        if key not in KINDS:
            raise SystemExit(f"--mix: unknown kind {key!r} (known: {', '.join(KINDS)})")
        try:
            mix[key] = float(weight) if weight else float(KINDS[key][1])
        except ValueError:
            raise SystemExit(f"--mix: bad weight in {item!r}") from None
    if not mix or sum(mix.values()) <= 0:
        raise SystemExit("--mix: no kind with a positive weight")
    return {k: w for k, w in mix.items() if w > 0}


def check(target: Target, body: Any) -> str | None:
    """None if ``body`` is the answer ``target`` expects, else what is wrong."""
    if not isinstance(body, dict) or body.get("resourceType") != target.resource_type:
        got = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        return f"{target.path}: expected {target.resource_type}, got {got}"
    if target.rid is not None and body.get("id") != target.rid:
        return f"{target.path}: id {body.get('id')!r}"
    if target.matches is not None:
        n = sum(1 for e in body.get("entry", []) if e.get("search", {}).get("mode") == "match")
        if n != target.matches:
            return f"{target.path}: {n} matches, expected {target.matches}"
    return None


# -- sampling ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the start of the load
    facade_rss_kib: int
    orthanc_rss_kib: int
    facade_cpu_s: float
    orthanc_cpu_s: float
    client_cpu_s: float  # this process: the load generator (and this sampler)
    busy_s: float  # user + system CPU of the whole machine
    facade_fds: int
    io_full_us: int  # /proc/pressure/io "full" total: time every non-idle task was stalled on I/O
    cpu_some_us: int  # /proc/pressure/cpu "some" total: time some task waited for a CPU
    # from the facade's GET /metrics (None when it does not answer within 2 s)
    cache_bytes: int | None = None  # QIDO answers held in the cache (the facade's own count)
    cache_hits: int | None = None
    cache_misses: int | None = None
    upstream_ok: int | None = None  # requests to the PACS that succeeded
    upstream_failed: int | None = None  # ... that did not (timeouts, refused by the breaker, 5xx)
    breaker: int | None = None  # 0 closed, 1 half-open, 2 open


def scrape(client: httpx.Client, url: str) -> dict[str, int]:
    """The few numbers of the facade's Prometheus text (/metrics) the load report uses; {} when unavailable."""
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}
    out: Counter[str] = Counter()
    for line in response.text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("facade_upstream_requests_total"):
            out["upstream_ok" if 'outcome="ok"' in name else "upstream_failed"] += int(float(value))
        elif name in ("facade_cache_bytes", "facade_cache_hits", "facade_cache_misses"):
            out[name.removeprefix("facade_")] = int(float(value))
        elif name == "facade_upstream_breaker_state":
            out["breaker"] = int(float(value))
    return dict(out)


def pressure_total(resource_name: str, line: str) -> int:
    """A PSI stall-time counter in microseconds (0 where the kernel has no /proc/pressure)."""
    try:
        text = Path(f"/proc/pressure/{resource_name}").read_text()
    except OSError:
        return 0
    for row_text in text.splitlines():
        if row_text.startswith(line + " "):
            return int(row_text.rsplit("total=", 1)[1])
    return 0


class Sampler(threading.Thread):
    """Every ``interval`` s (on a fixed grid, in its own thread so a busy event loop cannot delay it)."""

    def __init__(self, facade_pid: int, orthanc_pid: int, origin: str, t0: float, interval: float = 1.0) -> None:
        super().__init__(name="sampler", daemon=True)
        self.facade_pid, self.orthanc_pid, self.t0, self.interval = facade_pid, orthanc_pid, t0, interval
        self.metrics_url = origin + "/metrics"
        self._http = httpx.Client(timeout=2.0, trust_env=False)
        self.samples: list[Sample] = []
        self.stopped: str | None = None  # why sampling ended early (a process went away)
        self._halt = threading.Event()

    def sample(self) -> Sample:
        sample = Sample(
            round(time.monotonic() - self.t0, 3),
            rss_kib(self.facade_pid),
            rss_kib(self.orthanc_pid),
            cpu_seconds(self.facade_pid),
            cpu_seconds(self.orthanc_pid),
            time.process_time(),
            system_busy_seconds(),
            len(os.listdir(f"/proc/{self.facade_pid}/fd")),
            pressure_total("io", "full"),
            pressure_total("cpu", "some"),
        )
        for key, value in scrape(self._http, self.metrics_url).items():  # after /proc: those are the timely ones
            setattr(sample, key, value)
        return sample

    def run(self) -> None:
        k = 0
        while not self._halt.is_set():
            try:
                self.samples.append(self.sample())
            except (OSError, BenchError) as exc:  # a process went away: the main thread reports it
                self.stopped = f"{time.monotonic() - self.t0:.1f} s: {exc}"
                return
            k += 1
            self._halt.wait(max(0.0, self.t0 + k * self.interval - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self._http.close()


def ended(pid: int) -> str | None:
    """None while our child process ``pid`` runs; else how it ended. Peeked with WNOWAIT, so its Popen object
    still reaps it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return "ended (already reaped)"
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return f"exited with status {info.si_status}"
    dumped = " (core dumped)" if info.si_code == os.CLD_DUMPED else ""
    return f"was killed by {signal.Signals(info.si_status).name}{dumped}"


# -- the load ------------------------------------------------------------------------------------------------


@dataclass
class Done:
    t: float  # completion, seconds since the start of the load
    kind: str
    path: str
    mode: str  # "cold" (no-cache), "repeat" (same URL answered within the cache TTL) or "first" (not)
    status: str  # HTTP status code, or the exception's class name
    latency: float  # seconds


@dataclass
class LoadRun:
    done: list[Done] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # answers that did not match the ground truth
    checked: int = 0
    started: int = 0
    # path -> when its answer last came from the PACS (a "first" or "cold" request): the facade's cache entry for
    # it expires a TTL later, whatever happens in between
    filled: dict[str, float] = field(default_factory=dict)


async def client_loop(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    rng: random.Random,
    mix: dict[str, list[Target]],
    weights: list[float],
    cold_share: float,
    cache_ttl: float,
    check_every: int,
    t0: float,
    deadline: float,
    budget: itertools.count[int],
    max_requests: int,
    run: LoadRun,
) -> None:
    kinds = list(mix)
    warm_headers, cold_headers = FHIR_HEADERS | headers, COLD_HEADERS | headers
    i = 0
    while time.monotonic() < deadline and next(budget) < max_requests:
        kind = rng.choices(kinds, weights)[0]
        target = rng.choice(mix[kind])
        cold = rng.random() < cold_share
        filled = run.filled.get(target.path)
        now = time.monotonic()
        # "repeat": the facade has most likely cached this answer (1 s margin for the TTL); "first" may still be
        # cached under another URL (R4 and R5 searches for one patient share the QIDO answers).
        mode = "cold" if cold else "repeat" if filled is not None and now - filled < cache_ttl - 1 else "first"
        i += 1
        run.started += 1
        start = time.perf_counter()
        try:
            response = await client.get(target.path, headers=cold_headers if cold else warm_headers)
            status = str(response.status_code)
        except httpx.HTTPError as exc:
            response, status = None, type(exc).__name__
        except asyncio.CancelledError:  # still in flight at deadline + grace
            run.done.append(
                Done(time.monotonic() - t0, kind, target.path, mode, "cancelled", time.perf_counter() - start)
            )
            raise
        end = time.monotonic()
        run.done.append(Done(end - t0, kind, target.path, mode, status, time.perf_counter() - start))
        if status == "200" and mode != "repeat":
            run.filled[target.path] = end
        if response is not None and response.status_code == 200 and i % check_every == 0:
            run.checked += 1
            try:
                problem = check(target, response.json())
            except ValueError:
                problem = f"{target.path}: not JSON"
            if problem:
                run.wrong.append(problem)


async def open_connections(clients: Sequence[httpx.AsyncClient]) -> None:
    """One untimed request per client, so every client holds its one keep-alive connection before t0."""
    answers = await asyncio.gather(*(c.get("/healthz") for c in clients))
    bad = [r.status_code for r in answers if r.status_code != 200]
    if bad:
        raise BenchError(f"/healthz answered {bad[:5]}")


async def run_load(
    args: argparse.Namespace,
    origin: str,
    auth: Sequence[dict[str, str]],
    targets: dict[str, list[Target]],
    facade_pid: int,
    orthanc_pid: int,
) -> tuple[LoadRun, Sampler, float]:
    """``auth``: one set of extra headers per client (its bearer token, or nothing)."""
    mix = {k: targets[k] for k in args.mix if targets.get(k)}
    weights = [args.mix[k] for k in mix]
    run = LoadRun()
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client_for(1, base_url=origin)) for _ in range(args.clients)]
        await open_connections(clients)
        t0 = time.monotonic()
        sampler = Sampler(facade_pid, orthanc_pid, origin, t0)
        sampler.start()
        deadline = t0 + args.duration
        budget = itertools.count()
        loops = [
            client_loop(
                c,
                auth[n],
                random.Random(args.seed * 1000 + n),
                mix,
                weights,
                args.cold_share,
                args.cache_ttl,
                args.check_every,
                t0,
                deadline,
                budget,
                args.max_requests,
                run,
            )
            for n, c in enumerate(clients)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*loops), timeout=args.duration + args.grace)
        except TimeoutError:
            log(f"requests still in flight {args.grace:.0f} s after the deadline were cancelled")
        finally:
            t_end = time.monotonic() - t0
            sampler.stop()
    await asyncio.sleep(args.idle)  # then one more sample: does RSS come back down once idle?
    return run, sampler, t_end


# -- analysis ------------------------------------------------------------------------------------------------


def latency_stats(latencies: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)) if latencies else None,
        "p95_ms": ms(percentile(latencies, 95)) if latencies else None,
        "p99_ms": ms(percentile(latencies, 99)) if latencies else None,
        "max_ms": ms(max(latencies)) if latencies else None,
    }


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return round(60 * sum((t - mt) * (y - my) for t, y in points) / var, 3)


def cores(samples: Sequence[Sample], attr: str, t_from: float, t_to: float) -> float | None:
    """CPU cores used by ``attr`` between the samples nearest to ``t_from`` and ``t_to``."""
    inside = [s for s in samples if t_from - 0.5 <= s.t <= t_to + 0.5]
    if len(inside) < 2 or inside[-1].t <= inside[0].t:
        return None
    a, b = inside[0], inside[-1]
    return round((float(getattr(b, attr)) - float(getattr(a, attr))) / (b.t - a.t), 2)


def stalled(samples: Sequence[Sample], attr: str, t_from: float, t_to: float) -> float | None:
    """Share of the time between ``t_from`` and ``t_to`` counted by the PSI counter ``attr``."""
    inside = [s for s in samples if t_from - 0.5 <= s.t <= t_to + 0.5]
    if len(inside) < 2 or inside[-1].t <= inside[0].t:
        return None
    a, b = inside[0], inside[-1]
    return round((float(getattr(b, attr)) - float(getattr(a, attr))) / 1e6 / (b.t - a.t), 3)


def metrics_delta(span: Sequence[Sample]) -> dict[str, Any]:
    """From the facade's /metrics: cache hit share, upstream calls per second (and failed ones), cache size at the
    end, breaker state seen, between the first and last sample of ``span`` that have them."""
    have = [s for s in span if s.cache_hits is not None and s.upstream_ok is not None]
    if len(have) < 2 or have[-1].t <= have[0].t:
        return {}
    a, b = have[0], have[-1]
    hits, misses = (b.cache_hits or 0) - (a.cache_hits or 0), (b.cache_misses or 0) - (a.cache_misses or 0)
    return {
        "cache_hit_share": round(hits / (hits + misses), 3) if hits + misses else None,
        "upstream_per_s": round(((b.upstream_ok or 0) - (a.upstream_ok or 0)) / (b.t - a.t), 1),
        "upstream_failed": (b.upstream_failed or 0) - (a.upstream_failed or 0),
        "cache_mib": round((b.cache_bytes or 0) / 2**20, 2),
        "breaker_max": max(s.breaker or 0 for s in have),
    }


def foreign(a: Sample, b: Sample) -> float:
    own = sum(float(getattr(b, k)) - float(getattr(a, k)) for k in ("facade_cpu_s", "orthanc_cpu_s", "client_cpu_s"))
    return round(max(0.0, (b.busy_s - a.busy_s) - own) / max(b.t - a.t, 1e-6), 2)


TCP_COUNTERS = (
    "RetransSegs",
    "TCPLossProbes",
    "DelayedACKLost",
    "ListenOverflows",
    "ListenDrops",
    "TCPTimeouts",
    "TCPSynRetrans",
    "TCPAbortOnData",
)


def tcp_counters() -> dict[str, int]:
    """A few kernel TCP counters (whole machine, /proc/net/snmp and /proc/net/netstat): retransmissions, listen
    queue overflows and timeouts show up here when a stall is the network stack's doing."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = Path(path).read_text().splitlines()
        for names, values in itertools.pairwise(lines):
            if names.split(":")[0] == values.split(":")[0] and names != values:
                for k, v in zip(names.split()[1:], values.split()[1:], strict=False):
                    if k in TCP_COUNTERS:
                        out[k] = int(v)
    return out


def memory(samples: Sequence[Sample], attr: str, duration: float, after_idle: int | None) -> dict[str, Any]:
    during = [s for s in samples if s.t <= duration + 0.5]
    mib = [(s.t, getattr(s, attr) / 1024) for s in during]
    half = [(t, y) for t, y in mib if t >= duration / 2]
    return {
        "start_mib": round(mib[0][1], 1),
        "peak_mib": round(max(y for _, y in mib), 1),
        "end_mib": round(mib[-1][1], 1),
        "after_idle_mib": round(after_idle / 1024, 1) if after_idle is not None else None,
        "slope_mib_per_min_second_half": slope_per_min(half),
        "slope_mib_per_min_whole_run": slope_per_min(mib),
    }


def analyse(
    args: argparse.Namespace, run: LoadRun, samples: list[Sample], t_end: float, idle_rss: tuple[int, int] | None
) -> dict[str, Any]:
    duration = args.duration
    ok = [d for d in run.done if d.status.startswith("2")]
    statuses = Counter(d.status for d in run.done)
    in_time = [d for d in run.done if d.t <= duration]
    overall = latency_stats([d.latency for d in ok])
    overall["requests"] = len(run.done)
    overall["ok"] = len(ok)
    overall["errors"] = len(run.done) - len(ok)
    overall["req_s"] = round(len([d for d in in_time if d.status.startswith("2")]) / duration, 1)
    overall["wall_s"] = round(t_end, 2)

    kinds: dict[str, Any] = {}
    for key in args.mix:
        mine = [d for d in run.done if d.kind == key]
        if not mine:
            continue
        kinds[key] = {
            "title": KINDS[key][0],
            "requests": len(mine),
            "share": round(len(mine) / max(len(run.done), 1), 3),
            "errors": sum(not d.status.startswith("2") for d in mine),
            **{m: latency_stats([d.latency for d in mine if d.mode == m and d.status.startswith("2")]) for m in MODES},
        }
    for m in MODES:
        overall[m] = latency_stats([d.latency for d in ok if d.mode == m])

    windows = []
    seen: set[str] = set()  # URLs requested in earlier windows: a new one means new cache entries
    w = args.window
    for k in range(int(-(-duration // w))):
        lo, hi = k * w, min((k + 1) * w, duration)
        mine = [d for d in in_time if lo < d.t <= hi or (k == 0 and d.t == 0)]
        good = [d.latency for d in mine if d.status.startswith("2")]
        at_end = [s for s in samples if s.t <= hi + 0.5]
        span = [s for s in samples if lo - 0.5 <= s.t <= hi + 0.5]
        paths = {d.path for d in mine}
        new_urls, seen = len(paths - seen), seen | paths
        windows.append(
            {
                "from_s": lo,
                "to_s": hi,
                "requests": len(mine),
                "req_s": round(len(good) / (hi - lo), 1),
                "errors": len(mine) - len(good),
                **{k2: v for k2, v in latency_stats(good).items() if k2 != "n"},
                "facade_cpu": cores(samples, "facade_cpu_s", lo, hi),
                "orthanc_cpu": cores(samples, "orthanc_cpu_s", lo, hi),
                "client_cpu": cores(samples, "client_cpu_s", lo, hi),
                "other_cpu": foreign(span[0], span[-1]) if len(span) >= 2 else None,
                "new_urls": new_urls,
                "io_stall_share": stalled(samples, "io_full_us", lo, hi),
                "cpu_wait_share": stalled(samples, "cpu_some_us", lo, hi),
                **metrics_delta(span),
                "facade_rss_mib": round(at_end[-1].facade_rss_kib / 1024, 1) if at_end else None,
                "orthanc_rss_mib": round(at_end[-1].orthanc_rss_kib / 1024, 1) if at_end else None,
            }
        )
    per_second = Counter(int(d.t) for d in in_time if d.status.startswith("2") and d.t < int(duration))
    during = [s for s in samples if s.t <= duration + 0.5]
    steps = list(itertools.pairwise(during))
    cpu = {
        "facade_cores": cores(samples, "facade_cpu_s", 0, duration),
        "orthanc_cores": cores(samples, "orthanc_cpu_s", 0, duration),
        "client_cores": cores(samples, "client_cpu_s", 0, duration),
        "other_cores_mean": foreign(during[0], during[-1]) if len(during) >= 2 else None,
        "other_cores_max_1s": max((foreign(a, b) for a, b in steps), default=None),
        "facade_cores_max_1s": max(
            (round((b.facade_cpu_s - a.facade_cpu_s) / (b.t - a.t), 2) for a, b in steps), default=None
        ),
    }
    return {
        "overall": overall,
        "statuses": dict(sorted(statuses.items())),
        "kinds": kinds,
        "windows": windows,
        "seconds_without_completion": [t for t in range(int(duration)) if per_second[t] == 0],
        "completions_per_second": [per_second[t] for t in range(int(duration))],
        "checked_answers": run.checked,
        "wrong_answers": len(run.wrong),
        "wrong_examples": run.wrong[:5],
        "cpu": cpu,
        "rss": {
            "facade": memory(samples, "facade_rss_kib", duration, idle_rss[0] if idle_rss else None),
            "orthanc": memory(samples, "orthanc_rss_kib", duration, idle_rss[1] if idle_rss else None),
        },
        "facade_fds": {"start": during[0].facade_fds, "max": max(s.facade_fds for s in during)},
        "facade_metrics": metrics_delta(during),
        "io_stall_share": stalled(samples, "io_full_us", 0, duration),
        "cpu_wait_share": stalled(samples, "cpu_some_us", 0, duration),
        "samples": [asdict(s) for s in samples],
    }


# -- report --------------------------------------------------------------------------------------------------


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def markdown(result: dict[str, Any]) -> str:
    meta, args, ds = result["meta"], result["meta"]["args"], result["meta"]["dataset"]
    machine, o = meta["machine"], result["overall"]
    rss_f, rss_o = result["rss"]["facade"], result["rss"]["orthanc"]
    cpu = result["cpu"]
    slope = rss_f["slope_mib_per_min_second_half"]
    flat = slope is not None and abs(slope) < FLAT_MIB_PER_MIN
    lines = [
        f"Run {meta['date']} (app at {meta['code']}), {machine['cpus']} vCPU ({machine['cpu_model']}), "
        f"{machine['mem_gib']} GiB, Python {machine['python']}; dataset {ds['patients']} patients / "
        f"{ds['studies']} studies / {ds['instances']} instances + {ds['kos']} KOS documents; "
        f"{args['clients']} clients x {args['duration']:.0f} s, closed loop, one keep-alive connection each; "
        f"{args['cold_share']:.0%} of requests with `Cache-Control: no-cache`; facade cache TTL "
        f"{args['cache_ttl']:.0f} s.",
        "",
        f"**{o['requests']} requests, {o['errors']} errors** (statuses: "
        + ", ".join(f"{k}: {v}" for k, v in result["statuses"].items())
        + f"); {o['req_s']} req/s; latency p50 / p95 / p99 / max {o['p50_ms']} / {o['p95_ms']} / "
        f"{o['p99_ms']} / {o['max_ms']} ms; answers checked against the generated data: {result['checked_answers']}, "
        f"wrong: {result['wrong_answers']}; seconds without a completed request: "
        f"{len(result['seconds_without_completion'])}.",
        "",
        "Per request kind (latency in ms). *repeat*: the same URL was fetched from the PACS (by a *first* or *cold* "
        "request) less than the cache TTL ago, so the facade most likely answers from its cache; *first*: not (first "
        "time in the run, or that entry expired; some are still cache hits, e.g. R5 after R4 for one patient); "
        "*cold*: `Cache-Control: no-cache`, every upstream call goes to Orthanc.",
        "",
        row(
            "kind",
            "share",
            "errors",
            "repeat n",
            "repeat p50 / p95 / p99",
            "first n",
            "first p50 / p95 / p99",
            "cold n",
            "cold p50 / p95 / p99",
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def three(s: dict[str, Any]) -> str:
        return f"{fmt(s['p50_ms'])} / {fmt(s['p95_ms'])} / {fmt(s['p99_ms'])}"

    for k in [*result["kinds"].values(), {"title": "all", "share": 1.0, "errors": o["errors"], **o}]:
        lines.append(
            row(
                k["title"],
                f"{k['share']:.0%}",
                k["errors"],
                k["repeat"]["n"],
                three(k["repeat"]),
                k["first"]["n"],
                three(k["first"]),
                k["cold"]["n"],
                three(k["cold"]),
            )
        )
    lines += [
        "",
        f"Over time ({args['window']:.0f}-s windows; CPU in cores, from /proc; cache hits, PACS calls and cache "
        "size from the facade's /metrics; cache MiB and RSS at the window's end)",
        "",
        row(
            "s",
            "req/s",
            "errors",
            "p50 / p99 ms",
            "max ms",
            "facade CPU",
            "Orthanc CPU",
            "load gen. CPU",
            "other CPU",
            "cache hits",
            "PACS calls/s",
            "cache MiB",
            "facade RSS MiB",
            "Orthanc RSS MiB",
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in result["windows"]:
        lines.append(
            row(
                f"{w['from_s']:.0f}-{w['to_s']:.0f}",
                w["req_s"],
                w["errors"],
                pair(w["p50_ms"], w["p99_ms"]),
                w["max_ms"],
                w["facade_cpu"],
                w["orthanc_cpu"],
                w["client_cpu"],
                w["other_cpu"],
                fmt_share(w.get("cache_hit_share")),
                w.get("upstream_per_s"),
                w.get("cache_mib"),
                w["facade_rss_mib"],
                w["orthanc_rss_mib"],
            )
        )
    lines += [
        "",
        "Memory (VmRSS, sampled every second; slope = least-squares fit over the second half of the run)",
        "",
        row(
            "process",
            "start MiB",
            "peak MiB",
            "end MiB",
            "after 5 s idle MiB",
            "slope 2nd half MiB/min",
            "slope whole run",
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("facade", rss_f), ("Orthanc", rss_o)):
        lines.append(
            row(
                name,
                r["start_mib"],
                r["peak_mib"],
                r["end_mib"],
                r["after_idle_mib"],
                r["slope_mib_per_min_second_half"],
                r["slope_mib_per_min_whole_run"],
            )
        )
    lines += [
        "",
        f"CPU over the run (cores): facade {fmt(cpu['facade_cores'])} (max 1-s {fmt(cpu['facade_cores_max_1s'])}), "
        f"Orthanc {fmt(cpu['orthanc_cores'])}, load generator {fmt(cpu['client_cores'])}, other processes "
        f"{fmt(cpu['other_cores_mean'])} on average (max 1-s {fmt(cpu['other_cores_max_1s'])}). Facade open fds: "
        f"{result['facade_fds']['start']} at start, at most {result['facade_fds']['max']}. "
        f"Memory flat (|facade slope| < {FLAT_MIB_PER_MIN} MiB/min over the second half): "
        f"{'yes' if flat else '**no**'} ({fmt(slope)} MiB/min). Machine-wide pressure (/proc/pressure): some task "
        f"waited for a CPU {fmt_share(result.get('cpu_wait_share'))} of the time, all waited for I/O "
        f"{fmt_share(result.get('io_stall_share'))}.",
    ]
    fm = result.get("facade_metrics") or {}
    if fm:
        lines += [
            "",
            f"Facade /metrics over the run: QIDO cache hits {fmt_share(fm['cache_hit_share'])}, "
            f"{fmt(fm['upstream_per_s'])} PACS calls/s, {fm['upstream_failed']} failed PACS calls, cache "
            f"{fmt(fm['cache_mib'])} MiB at the end, circuit breaker "
            f"{['closed', 'half-open at times', 'OPEN at times'][fm['breaker_max']]}.",
        ]
    for name, how in result.get("died", {}).items():
        lines += ["", f"**{name} {how} during the run** (sampling stopped at {result.get('sampler_stopped')})."]
        if name == "Orthanc" and result.get("orthanc_log_tail"):
            lines += ["", "Orthanc log tail:", "", "```", *result["orthanc_log_tail"][-10:], "```"]
    tcp = result.get("tcp_counters_delta")
    if tcp:
        lines += [
            "",
            "Kernel TCP counters during the run (whole machine): "
            + ", ".join(f"{k} +{v}" for k, v in tcp.items())
            + ".",
        ]
    if result["wrong_examples"]:
        lines += ["", "Wrong answers (first 5): " + "; ".join(f"`{w}`" for w in result["wrong_examples"])]
    return "\n".join(lines) + "\n"


# -- the run -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=64, help="concurrent clients, one keep-alive connection each")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="cap on the total number of requests")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds allowed after the deadline for in-flight requests"
    )
    p.add_argument("--patients", type=int, default=100)
    p.add_argument("--studies-per-patient", type=int, default=3)
    p.add_argument("--series", type=int, default=3)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--kos-every", type=int, default=5, help="key-image documents for every N-th patient (0: none)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"KIND=WEIGHT list (default {DEFAULT_MIX})")
    p.add_argument("--cold-share", type=float, default=0.2, help="share of requests sent with Cache-Control: no-cache")
    p.add_argument(
        "--auth", choices=("smart", "open"), default="smart", help="the facade's auth_mode (see facade_auth)"
    )
    p.add_argument("--cache-ttl", type=float, default=60.0, help="FACADE_CACHE_TTL (the facade's default: 60)")
    p.add_argument("--check-every", type=int, default=10, help="each client checks every N-th answer's content")
    p.add_argument("--window", type=float, default=5.0, help="seconds per row of the over-time table")
    p.add_argument("--idle", type=float, default=5.0, help="seconds idle after the load before the last RSS sample")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for an idle machine first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-requests", action="store_true", help="also write every request (t, kind, status, ms)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "load.json")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    p.add_argument("--from-json", type=Path, default=None, metavar="RESULTS", help="print the tables of a results file")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1 or args.check_every < 1:
        p.error("--clients, --duration, --max-requests and --check-every must be positive")
    if not 0 <= args.cold_share <= 1:
        p.error("--cold-share is a share between 0 and 1")
    args.mix = parse_mix(args.mix)
    return args


async def smoke(origin: str, auth: dict[str, str], targets: dict[str, list[Target]], kinds: Sequence[str]) -> None:
    """Each kind once, cold, before the load: a wrong mix or a broken facade fails here, not in the tables."""
    async with client_for(1, base_url=origin) as client:
        for key in kinds:
            if not targets.get(key):
                log(f"  {key}: no request of this kind in the generated data; left out")
                continue
            target = targets[key][0]
            response = await client.get(target.path, headers=COLD_HEADERS | auth)
            if response.status_code != 200:
                raise BenchError(f"{target.path} -> {response.status_code}: {response.text[:300]}")
            problem = check(target, response.json())
            if problem:
                raise BenchError(f"wrong answer before the load: {problem}")


def facade_auth(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The facade's authorization settings, and each client's extra headers. ``smart`` (the facade's default):
    a JWK Set file and one RS256 token per client (``user/*.read``, its own subject; same grants, so the clients
    share one cache partition, as the users of one EMR do). ``open``: no authorization."""
    if args.auth == "open":
        return {"FACADE_AUTH_MODE": "open"}, [{} for _ in range(args.clients)]
    keys = TokenIssuer()
    env = {
        "FACADE_AUTH_MODE": "smart",
        "FACADE_JWKS_FILE": str(keys.write_jwks(workdir)),
        "FACADE_TOKEN_ISSUER": ISSUER,
        "FACADE_TOKEN_AUDIENCE": AUDIENCE,
    }
    lifetime = int(args.quiet_wait + args.duration + args.grace + 600)
    return env, [keys.headers(SCOPE, lifetime=lifetime, sub=f"load-client-{n}") for n in range(args.clients)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    version = code_version()
    log(f"generating {args.patients}x{args.studies_per_patient}x{args.series}x{args.instances} (seed {args.seed})")
    datasets, manifest = build_bulk(
        args.patients, args.studies_per_patient, args.series, args.instances, seed=args.seed
    )
    kos, kos_per_patient = add_kos(datasets, manifest, args.kos_every, args.seed)
    targets = build_targets(manifest, kos_per_patient)
    workdir = Path(tempfile.mkdtemp(prefix="facade-load-"))
    try:
        auth_env, auth = facade_auth(args, workdir)
        with OrthancServer() as pacs:
            log(f"Orthanc pid {pacs.pid} at {pacs.url}; storing {len(datasets)} instances and {len(kos)} KOS")
            store(pacs.dicomweb_url, [*datasets, *kos], batch=50, workers=2)
            env = {"FACADE_CACHE_TTL": str(args.cache_ttl), **auth_env}
            try:
                # started and stopped by PID (tests.support.facade), before Orthanc; its warnings go to stderr
                with FacadeProcess(pacs.dicomweb_url, env=env) as facade:
                    origin = f"http://127.0.0.1:{facade.port}"
                    log(f"facade pid {facade.pid} at {origin} (auth {args.auth}); one request of each kind")
                    asyncio.run(smoke(origin, auth[0], targets, list(args.mix)))
                    waited = asyncio.run(wait_quiet([facade.pid, pacs.pid], args.quiet_wait))
                    log(f"{args.clients} clients for {args.duration:.0f} s (waited {waited} s for a quiet machine)")
                    meter, tcp0 = ForeignCpu([facade.pid, pacs.pid]), tcp_counters()
                    run, sampler, t_end = asyncio.run(run_load(args, origin, auth, targets, facade.pid, pacs.pid))
                    other_cores, tcp1 = meter.cores(), tcp_counters()
                    pids = (("facade", facade.pid), ("Orthanc", pacs.pid))
                    died = {name: how for name, pid in pids if (how := ended(pid))}
                    idle_rss = None if died else (rss_kib(facade.pid), rss_kib(pacs.pid))
            finally:
                orthanc_log = pacs.log_tail(30).splitlines()  # before OrthancServer deletes its directory
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, how in died.items():
        log(f"{name} {how} during the run")
    if not sampler.samples:
        raise BenchError("no samples were taken")
    result = analyse(args, run, sampler.samples, t_end, idle_rss)
    result["died"] = died
    result["sampler_stopped"] = sampler.stopped
    result["orthanc_log_tail"] = orthanc_log
    result["cpu"]["other_cores_whole_run"] = other_cores
    result["tcp_counters_delta"] = {k: tcp1[k] - tcp0[k] for k in tcp1 if k in tcp0}
    if args.keep_requests:
        result["requests"] = [[round(d.t, 4), d.path, d.mode, d.status, ms(d.latency)] for d in run.done]
    result["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "code": version,
        "waited_for_quiet_s": waited,
        "dataset": {
            "patients": len(manifest.patients),
            "studies": len(manifest.studies),
            "series": manifest.n_series,
            "instances": manifest.n_instances,
            "kos": len(kos),
            "seed": args.seed,
        },
        "distinct_requests": {k: len(targets[k]) for k in args.mix},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    table = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    log(f"results written to {args.out}")
    return 0 if result["overall"]["errors"] == 0 and not result["wrong_answers"] and not died else 1


if __name__ == "__main__":
    sys.exit(main())
