"""Cached req/s of ``python -m app --workers N``: 1 vs 2 workers, with the Redis cache and the in-memory cache, wrk.

    python bench/workers.py [--patients 20 --studies-per-patient 5 --big-series 20 --big-instances 100
                             --duration 8 --concurrency 8 --configs memory-1,redis-1,redis-2,memory-2
                             --out bench/workers.json]

The data and the request shapes are bench/bare.py's (a private Orthanc, ``--patients x --studies-per-patient``
studies of 3 series x 4 instances plus one study of ``--big-series x --big-instances``): patient search, one-year
range, UID lookup, read of the large study, and a read of a small study. For each configuration the facade runs as a
subprocess (``python -m app --workers N``, FACADE_CACHE_TTL=86400, open mode), with its own empty cache (memory, or a
Redis of its own: tests.support.redis). Every URL of a scenario is asked twice (the second is a cache hit), then
``wrk -t1 -c<concurrency>`` cycles through the URLs for 2 s (each worker's caches warm: with the memory cache each
worker has its own) and then for ``--duration`` s, measured.

Nothing is pinned: with 2 workers the server needs both cores, so wrk (one thread) shares them with the workers,
and so does Redis. The 1-worker runs are unpinned too, so the two are measured the same way. Reported per run: the
workers' CPU (sum, and each, in cores), Redis's and wrk's; RSS of each worker, of the supervisor and of
multiprocessing's resource tracker after the runs. Every process started here is stopped by PID; all binds to
127.0.0.1. Run it under ``flock /tmp/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bare import ACCEPT, FHIR, build_data, capture, scenarios  # noqa: E402
from bench.run import BenchError, ForeignCpu, code_version, cpu_seconds, rss_kib, run_wrk, wait_quiet  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402

CONFIGS = {  # key: (cache, workers)
    "memory-1": ("memory", 1),
    "redis-1": ("redis", 1),
    "redis-2": ("redis", 2),
    "memory-2": ("memory", 2),
}


def worker_pids(parent: int, count: int, log: Path, timeout: float = 60.0) -> tuple[list[int], list[int]]:
    """(the processes serving requests, the others): the parent itself with one worker; else its spawned
    workers, once each has logged its startup, and its resource tracker."""
    if count == 1:
        return [parent], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        spawned = [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
        started = log.read_text().count("Application startup complete.") if log.exists() else 0
        if len(spawned) == count and started >= count:
            return spawned, [k for k in kids if k not in spawned]
        time.sleep(0.2)
    raise BenchError(f"{count} workers did not start within {timeout:.0f} s")


@contextmanager
def cache_for(kind: str) -> Iterator[dict[str, str]]:
    """The facade's environment for this cache: a Redis of its own, or nothing (the in-process default)."""
    if kind == "memory":
        yield {}
        return
    with RedisServer() as redis:
        yield {"FACADE_CACHE_REDIS_URL": redis.url, "_REDIS_PID": str(redis.pid)}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children waited for: the wrk runs
    return usage.ru_utime + usage.ru_stime


def measure(
    config: str,
    paths: list[str],
    origin: str,
    serving: list[int],
    redis_pid: int | None,
    ours: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``ours``: the other processes of this run (Orthanc, the supervisor), not counted as foreign CPU."""
    workdir = Path(tempfile.mkdtemp(prefix="facade-workers-wrk-"))
    try:
        watched = [*serving, *([redis_pid] if redis_pid else [])]
        run_wrk(origin, paths, dict(ACCEPT), args.concurrency, 2.0, workdir, serving[0])  # warm every worker
        waited = asyncio.run(wait_quiet(watched, args.quiet_wait))
        cpu0 = [cpu_seconds(p) for p in serving]
        redis0 = cpu_seconds(redis_pid) if redis_pid else 0.0
        wrk0 = children_cpu()
        foreign = ForeignCpu([*watched, *ours])
        t0 = time.perf_counter()
        load = run_wrk(origin, paths, dict(ACCEPT), args.concurrency, args.duration, workdir, serving[0])
        wall = time.perf_counter() - t0
        other_cores = foreign.cores()
        per_worker = [round((cpu_seconds(p) - c) / wall, 2) for p, c in zip(serving, cpu0, strict=True)]
        return {
            "config": config,
            "req_s": load.req_s,
            "p50_ms": load.p50_ms,
            "p95_ms": load.p95_ms,
            "errors": load.errors,
            "workers_cpu": round(sum(per_worker), 2),
            "per_worker_cpu": per_worker,
            "redis_cpu": round((cpu_seconds(redis_pid) - redis0) / wall, 2) if redis_pid else None,
            "wrk_cpu": round((children_cpu() - wrk0) / wall, 2),
            "quiet_wait_s": waited,
            "foreign_cpu": other_cores,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_config(
    config: str, pacs: OrthancServer, chosen: dict[str, tuple[str, list[str]]], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kind, count = CONFIGS[config]
    rows: list[dict[str, Any]] = []
    logdir = Path(tempfile.mkdtemp(prefix="facade-workers-"))
    log = logdir / "facade.log"
    try:
        with cache_for(kind) as cache_env:
            redis_pid = int(cache_env.pop("_REDIS_PID")) if "_REDIS_PID" in cache_env else None
            env = {"FACADE_CACHE_TTL": "86400", "FACADE_LOG_LEVEL": "info"} | cache_env
            with FacadeProcess(pacs.dicomweb_url, env=env, log=log, args=["--workers", str(count)]) as facade:
                serving, others = worker_pids(facade.pid, count, log)
                memory: dict[str, Any] = {"start_kib": [rss_kib(p) for p in serving]}
                origin = f"http://127.0.0.1:{facade.port}"
                for key in args.scenarios.split(","):
                    label, paths = chosen[key]
                    capture(origin, paths, dict(ACCEPT))  # each URL twice: misses, then hits
                    row = {"scenario": key, "label": label} | measure(
                        config, paths, origin, serving, redis_pid, [pacs.pid, facade.pid, *others], args
                    )
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
                memory["end_kib"] = [rss_kib(p) for p in serving]
                if count > 1:
                    memory["supervisor_kib"] = rss_kib(facade.pid)
                    memory["other_kib"] = [rss_kib(p) for p in others]  # multiprocessing's resource tracker
                if redis_pid:
                    memory["redis_kib"] = rss_kib(redis_pid)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return rows, memory


def markdown(rows: list[dict[str, Any]], memory: dict[str, dict[str, Any]], configs: list[str]) -> str:
    by = {(r["scenario"], r["config"]): r for r in rows}
    scenarios_seen = list(dict.fromkeys(r["scenario"] for r in rows))
    head = "| request (warm) | " + " | ".join(f"{c} req/s" for c in configs)
    ratio = "redis-1" in configs and "redis-2" in configs
    head += " | **redis 2/1** |" if ratio else " |"
    lines = [head, "|---|" + "---:|" * (len(configs) + ratio)]
    for s in scenarios_seen:
        label = next(r["label"] for r in rows if r["scenario"] == s)
        cells = [f"{by[(s, c)]['req_s']:,.0f}" if (s, c) in by else "" for c in configs]
        line = f"| {label} | " + " | ".join(cells)
        if ratio and (s, "redis-1") in by and (s, "redis-2") in by:
            line += f" | **{by[(s, 'redis-2')]['req_s'] / by[(s, 'redis-1')]['req_s']:.2f}x** |"
        else:
            line += " |"
        lines.append(line)
    lines += [
        "",
        "| run | p50 / p95 ms | workers CPU (each) | Redis CPU | wrk CPU | other processes CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        each = " + ".join(f"{c:.2f}" for c in r["per_worker_cpu"])
        lines.append(
            f"| {r['config']} {r['scenario']} | {r['p50_ms']} / {r['p95_ms']} | {r['workers_cpu']:.2f} ({each}) "
            f"| {r['redis_cpu'] if r['redis_cpu'] is not None else '-'} | {r['wrk_cpu']:.2f} "
            f"| {r.get('foreign_cpu', '-')} | {r['errors']} |"
        )
    lines += [
        "",
        "| config | RSS per worker at start MiB | after the runs MiB | supervisor MiB | resource tracker MiB |",
    ]
    lines.append("|---|---:|---:|---:|---:|")
    for c in configs:
        m = memory.get(c)
        if not m:
            continue
        lines.append(
            f"| {c} | {', '.join(map(mib, m['start_kib']))} | {', '.join(map(mib, m['end_kib']))} "
            f"| {mib(m['supervisor_kib']) if 'supervisor_kib' in m else '-'} "
            f"| {', '.join(map(mib, m.get('other_kib', []))) or '-'} |"
        )
    return "\n".join(lines)


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--studies-per-patient", type=int, default=5)
    p.add_argument("--big-series", type=int, default=20)
    p.add_argument("--big-instances", type=int, default=100)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--scenarios", default="patient,range,uid,read,big_read")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet-wait", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "workers.json")
    p.add_argument("--from-json", type=Path, help="print the tables of an earlier --out file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(markdown(saved["rows"], saved["memory"], saved["configs"]))
        return 0
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install wrk)")
    configs = [c for c in args.configs.split(",") if c]
    datasets, manifest, big_uid = build_data(args)
    chosen = scenarios(manifest, big_uid, args.seed)
    small = [s.study_uid for s in manifest.studies][:10]
    chosen["read"] = ("read of a small study", [f"{FHIR}/ImagingStudy/{u}" for u in small])
    rows: list[dict[str, Any]] = []
    memory: dict[str, dict[str, Any]] = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with OrthancServer() as pacs:
        print(f"storing {len(datasets)} instances", file=sys.stderr)
        store(pacs.dicomweb_url, datasets, batch=50, workers=2)
        for config in configs:
            config_rows, memory[config] = run_config(config, pacs, chosen, args)
            rows += config_rows
    result = {
        "started": started,
        "code": code_version(),
        "command": "python bench/workers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "configs": configs,
        "rows": rows,
        "memory": memory,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"run {started}, app at {result['code']}, wrk -t1 -c{args.concurrency} -d{args.duration:.0f}s, unpinned")
    print(markdown(rows, memory, configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
