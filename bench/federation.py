"""A patient search over three archives vs. the same search over one (issue 21), cold and cached, in one run.

    flock /tmp/bench.lock python bench/federation.py [--patients 20 --layout 2,2,2 --series 3 --instances 4
                          --requests 120 --duration 8 --rounds 5 --concurrency 8 --pin 0:1 --compare-split 0
                          --out bench/federation.json]

Three private Orthancs ("north", "south", "east"; tests.support.orthanc) hold the studies of the same ``--patients``
patients: ``--layout`` gives each patient's studies per archive (default 2 in each) of ``--series x --instances``
(tests.support.dataset.build_bulk; a patient's studies are dealt to the archives in that order). The patient is the
same person everywhere: north's copies carry no IssuerOfPatientID (north's issuer is NORTH), south's and east's carry
IssuerOfPatientID "NORTH" explicitly, as studies sent over from north would. Four facades run as subprocesses
(``python -m app``, one uvicorn worker, cache TTL 86400, open mode):

* **three**: ``--config`` with three ``[[sources]]`` (issuers NORTH, SOUTH, EAST): every source asked at once;
* **one-north / one-south / one-east**: one-PACS mode, ``FACADE_DICOMWEB_URL`` = that archive: the same patient's
  search there (``patient=<id>`` of PatientID + "NORTH"; in north, whose rows carry no issuer, PatientID alone).

Two references without a facade are timed in the same loop, sent straight to the archives (one keep-alive pool):
**replay-three**, the three-source facade's own upstream calls (recorded in-process with its code, as bench/run.py
does, and replayed with the same concurrency: bench.run.raw_search), and **chains-three**, the three one-PACS
facades' calls (each archive asked only for its own studies) sent to the three archives at once. So three / replay
is what the facade adds, replay / chains what its choice of calls costs, and chains / one what asking three archives
at once costs on this machine (three Orthancs on 2 vCPUs). ``--compare-split N`` (an experiment) adds a second
three-source facade with ``instance_query_split`` N to the cold loop.

Phases:

1. **Cold**: every facade request with ``Cache-Control: no-cache`` (every upstream call made again), ``--requests``
   rounds, each round one patient asked of every facade and reference, in a shuffled order (one keep-alive
   connection per facade).
   The reference is **the slowest single source** by measured p50 (with equal layouts the three are the same work,
   so which one is slowest is noise; the ratio to the mean of the three is reported too). Target three / slowest
   <= 1.15 (p50). Also per kind: facade CPU ms and each Orthanc's CPU ms per request (/proc), and upstream calls per
   request (the facades' ``facade_upstream_requests_total`` from /metrics, by ``source`` label in three-source mode).
2. **Cached**: each patient URL asked twice of the three-source facade and of the reference facade (the second is a
   cache hit), then ``wrk -t1 -c<concurrency> -d<duration>s`` cycles through the patient URLs (bench.run.run_wrk),
   three and reference in turns for ``--rounds`` rounds (who goes first alternates), the facades pinned to one
   core and wrk to the other (``--pin``, as bench/bare.py). Target three / one >= 0.8 (median of the per-round
   ratios).

Other processes' CPU during each phase is recorded (bench.run.ForeignCpu; the machine may be shared), and each phase
first waits up to ``--quiet-wait`` s for a quiet second. Every process started here is stopped by PID; everything
binds to 127.0.0.1. ``--from-json`` re-prints the tables of an earlier ``--out`` file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
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
from bench.bare import pin  # noqa: E402
from bench.run import (  # noqa: E402
    COLD_HEADERS,
    FHIR,
    FHIR_HEADERS,
    BenchError,
    Call,
    ForeignCpu,
    RecordingTransport,
    Scenario,
    client_for,
    code_version,
    cpu_seconds,
    get,
    machine_info,
    ms,
    percentile,
    raw_search,
    record_calls,
    run_wrk,
    studies_in,
    wait_quiet,
)
from tests.support.dataset import build_bulk  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402

SOURCES = (("north", "NORTH"), ("south", "SOUTH"), ("east", "EAST"))
DOMAIN = "NORTH"  # the patients' assigning authority, in every archive
TARGET_COLD = 1.15  # three / slowest one, p50, at most
TARGET_CACHED = 0.8  # three / one, req/s, at least
THREE = "three"
LABELS = {
    "replay-three": "replay of three's calls (no facade)",
    "chains-three": "three one-PACS chains at once (no facade)",
}
UPSTREAM_LINE = re.compile(r"^facade_upstream_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$", re.M)


# -- data ------------------------------------------------------------------------------------------------------


def build_data(args: argparse.Namespace) -> tuple[dict[str, list[Any]], list[str], dict[str, int]]:
    """(datasets per archive, the PatientIDs, studies per patient per archive): build_bulk's studies of each patient
    dealt to north, south, east as ``--layout`` says; south's and east's copies carry IssuerOfPatientID NORTH."""
    layout = dict(zip((name for name, _ in SOURCES), args.layout, strict=True))
    per_patient = sum(layout.values())
    datasets, manifest = build_bulk(args.patients, per_patient, args.series, args.instances, seed=args.seed)
    where: dict[str, str] = {}  # StudyInstanceUID -> archive
    patients: list[str] = []
    for pid, _ in manifest.patients:
        patients.append(pid)
        studies = manifest.studies_of(pid)
        names = [name for name, count in layout.items() for _ in range(count)]
        where |= {s.study_uid: name for s, name in zip(studies, names, strict=True)}
    out: dict[str, list[Any]] = {name: [] for name in layout}
    for ds in datasets:
        name = where[ds.StudyInstanceUID]
        if name != "north":
            ds.IssuerOfPatientID = DOMAIN
        out[name].append(ds)
    return out, patients, layout


def patient_paths(patients: list[str], issuer: str | None) -> list[str]:
    return [f"{FHIR}/ImagingStudy?patient={patient_ids.encode(pid, issuer)}" for pid in patients]


def config_toml(pacs: dict[str, OrthancServer]) -> str:
    lines = ["[facade]", 'auth_mode = "open"', "cache_ttl = 86400", ""]
    for name, issuer in SOURCES:
        lines += ["[[sources]]", f'name = "{name}"', f'dicomweb_url = "{pacs[name].dicomweb_url}"']
        lines += [f'issuer = "{issuer}"', ""]
    return "\n".join(lines)


async def record_three(config: Path, paths: list[str]) -> dict[str, list[Call]]:
    """The three-source facade's upstream calls per path: its own code in-process (cache off, no-cache), as
    bench.run.record_calls does for one PACS."""
    inherited = {k: v for k, v in os.environ.items() if k.startswith("FACADE_")}  # as the subprocess gets them
    env = inherited | {"FACADE_CACHE_TTL": "0", "FACADE_LOG_LEVEL": "warning", "FACADE_DICOMWEB_URL": ""}
    settings = Settings.load(env, config_file=config)
    transport = RecordingTransport()
    app = create_app(settings, transport=transport)
    out: dict[str, list[Call]] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://facade.bench") as client,
    ):
        for path in paths:
            transport.log.clear()
            response = await client.get(path, headers=COLD_HEADERS)
            if response.status_code != 200:
                raise BenchError(f"in-process facade: {path} -> {response.status_code} {response.text[:300]}")
            out[path] = transport.calls()
    return out


def record_singles(pacs: dict[str, OrthancServer], paths: dict[str, list[str]]) -> dict[str, dict[str, list[Call]]]:
    """Each one-PACS facade's upstream calls per path (bench.run.record_calls)."""
    out = {}
    for name, server in pacs.items():
        sc = Scenario(name, name, paths[f"one-{name}"])
        asyncio.run(record_calls([sc], server.dicomweb_url, "http://facade.bench"))
        out[name] = sc.calls
    return out


# -- measuring -------------------------------------------------------------------------------------------------


def upstream_counts(origin: str) -> dict[str, float]:
    """facade_upstream_requests_total from /metrics, summed by ``source`` label ("" with one PACS)."""
    text = httpx.get(origin + "/metrics", timeout=10, trust_env=False).text
    out: dict[str, float] = defaultdict(float)
    for m in UPSTREAM_LINE.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        out[labels.get("source", "")] += float(m.group("value"))
    return dict(out)


def check_answers(origins: dict[str, str], paths: dict[str, list[str]], expected: dict[str, int]) -> None:
    """Every facade's answer for every patient holds the studies it should (cold, so from the archives)."""
    with httpx.Client(timeout=60, trust_env=False) as client:
        for kind, origin in origins.items():
            for path in paths[kind]:
                response = client.get(origin + path, headers=COLD_HEADERS)
                if response.status_code != 200:
                    raise BenchError(f"{kind} {path} -> {response.status_code}: {response.text[:300]}")
                if (found := studies_in(response.json())) != expected[kind]:
                    raise BenchError(f"{kind} {path}: {found} studies, expected {expected[kind]}")


async def cold(
    origins: dict[str, str],
    paths: dict[str, list[str]],
    replays: dict[str, list[list[list[Call]]]],
    facade_pids: dict[str, int],
    pacs: dict[str, OrthancServer],
    requests: int,
    max_seconds: float,
) -> dict[str, Any]:
    """``origins``: the facades; ``replays``: kind -> per patient, the call chains sent straight to the archives
    (the chains together, each chain's stages one after the other: bench.run.raw_search)."""
    kinds = [*origins, *replays]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    facade_cpu = dict.fromkeys(origins, 0.0)
    pacs_cpu = {k: dict.fromkeys(pacs, 0.0) for k in kinds}
    rng = random.Random(11)
    async with contextlib.AsyncExitStack() as stack:
        clients = {k: await stack.enter_async_context(client_for(1, base_url=origins[k])) for k in origins}
        upstream = await stack.enter_async_context(client_for(16, upstream=True))

        async def one(kind: str, i: int) -> None:
            if kind in clients:
                await get(clients[kind], paths[kind][i % len(paths[kind])], COLD_HEADERS)
            else:
                chains = replays[kind][i % len(replays[kind])]
                await asyncio.gather(*(raw_search(upstream, chain) for chain in chains))

        for k in kinds:  # one untimed request each, to open the connections
            await one(k, 0)
        calls0 = {k: upstream_counts(origins[k]) for k in origins}
        deadline = time.monotonic() + max_seconds
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            order = list(kinds)
            rng.shuffle(order)
            for kind in order:
                f0 = cpu_seconds(facade_pids[kind]) if kind in facade_pids else 0.0
                o0 = {name: cpu_seconds(server.pid) for name, server in pacs.items()}
                t0 = time.perf_counter()
                await one(kind, i)
                times[kind].append(time.perf_counter() - t0)
                if kind in facade_pids:
                    facade_cpu[kind] += cpu_seconds(facade_pids[kind]) - f0
                for name, server in pacs.items():
                    pacs_cpu[kind][name] += cpu_seconds(server.pid) - o0[name]
        calls1 = {k: upstream_counts(origins[k]) for k in origins}
    out: dict[str, Any] = {}
    for k in kinds:
        n = len(times[k])
        if k in origins:
            calls = {s: round((v - calls0[k].get(s, 0.0)) / n, 2) for s, v in calls1[k].items()}
        else:  # the replayed chains, by archive
            sent = [c.url for chains in replays[k] for chain in chains for c in chain]
            per = len(replays[k])
            calls = {a: round(sum(u.startswith(s.dicomweb_url) for u in sent) / per, 2) for a, s in pacs.items()}
        out[k] = {
            "requests": n,
            "p50_ms": ms(percentile(times[k], 50)),
            "p95_ms": ms(percentile(times[k], 95)),
            "mean_ms": ms(statistics.fmean(times[k])),
            "facade_cpu_ms": ms(facade_cpu[k] / n) if k in facade_cpu else None,
            "orthanc_cpu_ms": {s: ms(v / n) for s, v in pacs_cpu[k].items()},
            "orthanc_cpu_ms_total": ms(sum(pacs_cpu[k].values()) / n),
            "upstream_calls": calls,
            "upstream_calls_total": round(sum(calls.values()), 2),
        }
    return out


def cached(
    origins: dict[str, str],
    paths: dict[str, list[str]],
    facade_pids: dict[str, int],
    args: argparse.Namespace,
    wrk_cpus: str | None,
    workdir: Path,
) -> dict[str, Any]:
    """wrk against each facade's warm patient URLs, the facades in turns (who goes first alternates)."""
    kinds = list(origins)
    sizes: dict[str, list[int]] = {k: [] for k in kinds}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for k in kinds:
            for path in paths[k] * 2:  # the first fills the caches
                if (r := client.get(origins[k] + path, headers=FHIR_HEADERS)).status_code != 200:
                    raise BenchError(f"{k} {path} -> {r.status_code}: {r.text[:300]}")
                sizes[k].append(len(r.content))
    runs: dict[str, list[Any]] = {k: [] for k in kinds}
    for rnd in range(args.rounds):
        for k in kinds if rnd % 2 == 0 else kinds[::-1]:
            runs[k].append(
                run_wrk(
                    origins[k],
                    paths[k],
                    FHIR_HEADERS,
                    args.concurrency,
                    args.duration,
                    workdir,
                    facade_pids[k],
                    cpus=wrk_cpus,
                )
            )
    three, one = kinds
    return {
        "runs": {k: [vars(x) for x in v] for k, v in runs.items()},
        **{
            k: {
                "req_s": round(statistics.mean(x.req_s for x in v), 1),
                "p50_ms": round(statistics.median(x.p50_ms for x in v), 2),
                "p95_ms": round(statistics.median(x.p95_ms for x in v), 2),
                "server_cpu": round(statistics.mean(x.server_cpu or 0.0 for x in v), 2),
                "errors": sum(x.errors for x in v),
                "answer_bytes": round(statistics.mean(sizes[k])),
            }
            for k, v in runs.items()
        },
        "ratio": round(statistics.median(a.req_s / b.req_s for a, b in zip(runs[three], runs[one], strict=True)), 3),
        "cpu_ratio": round(
            statistics.median(
                (a.req_s / a.server_cpu) / (b.req_s / b.server_cpu)
                for a, b in zip(runs[three], runs[one], strict=True)
                if a.server_cpu and b.server_cpu
            ),
            3,
        ),
    }


# -- report ----------------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    meta, c, w = result["meta"], result["cold"], result["cached"]
    ref = result["reference"]
    ok = {True: "met", False: "**missed**"}
    d = meta["dataset"]
    lines = [
        f"Run {meta['date']}, app at {meta['code']}, {meta['machine']['cpus']} vCPU ({meta['machine']['cpu_model']}); "
        f"{d['patients']} patients, studies per patient north/south/east {d['layout']}, {d['series']} series x "
        f"{d['instances']} instances each ({d['instances_total']} instances in all). Reference = the slowest single "
        f"source by cold p50: **{ref}**.",
        "",
        f"Cold (`Cache-Control: no-cache`, {c[THREE]['requests']} rounds, every facade and reference "
        "once per round, shuffled)",
        "",
        "| facade | studies/answer | p50 / p95 ms | mean ms | upstream calls / request | facade CPU ms / req "
        "| Orthanc CPU ms / req (north + south + east) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for k, v in c.items():
        calls = v["upstream_calls"]
        per = ", ".join(f"{s}: {n:g}" for s, n in calls.items() if s) if len(calls) > 1 else ""
        cpu = v["orthanc_cpu_ms"]
        fcpu = v["facade_cpu_ms"]
        lines.append(
            f"| {LABELS.get(k, k)}{' (reference)' if k == ref else ''} | {result['studies'].get(k, '')} "
            f"| {v['p50_ms']} / {v['p95_ms']} | {v['mean_ms']} | {v['upstream_calls_total']:g}"
            f"{f' ({per})' if per else ''} | {'-' if fcpu is None else fcpu} "
            f"| {v['orthanc_cpu_ms_total']} ({' + '.join(str(cpu[s]) for s, _ in SOURCES)}) |"
        )
    r = result["ratios"]
    lines += [
        "",
        f"Three / slowest one ({ref}): **{r['cold_p50']:.2f}x** p50, {r['cold_mean']:.2f}x mean; three / the mean "
        f"of the three single sources: {r['cold_p50_vs_mean_single']:.2f}x p50. Target <= {TARGET_COLD:.2f}x: "
        f"{ok[r['cold_p50'] <= TARGET_COLD]}. Other processes: {result['foreign_cpu']['cold']} cores.",
    ]
    variants = {k: v for k, v in r.get("three_kinds_over_one", {}).items() if k != THREE}
    if variants:
        lines += ["", "Experiment: " + "; ".join(f"{k} / {ref} **{v:.2f}x** p50" for k, v in variants.items()) + "."]
    if "chains_over_one" in r:
        lines += [
            "",
            f"Where the time goes (p50 ratios): the facade on top of its own calls (three / replay) "
            f"{r['three_over_replay']:.2f}x; its calls against each archive's one-PACS chain sent at once (replay / "
            f"chains) {r['replay_over_chains']:.2f}x; those chains against the slowest one alone (chains / "
            f"{ref}) {r['chains_over_one']:.2f}x.",
        ]
    lines += [
        "",
        f"Cached (wrk -t1 -c{meta['args']['concurrency']} -d{meta['args']['duration']:g}s x {meta['args']['rounds']} "
        f"rounds each, in turns; facades on core {meta['args']['pin'].partition(':')[0] or '-'}, wrk on "
        f"{meta['args']['pin'].partition(':')[2] or '-'})",
        "",
        "| facade | answer bytes | req/s (mean of rounds) | p50 / p95 ms | facade CPU | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in (THREE, ref):
        v = w[k]
        lines.append(
            f"| {k} | {v['answer_bytes']:,} | {v['req_s']:,.0f} | {v['p50_ms']} / {v['p95_ms']} | {v['server_cpu']} "
            f"| {v['errors']} |"
        )
    lines += [
        "",
        f"Three / one: **{w['ratio']:.2f}x** req/s (median of the rounds' ratios; per facade CPU-second "
        f"{w['cpu_ratio']:.2f}x). Target >= {TARGET_CACHED:.2f}x: {ok[w['ratio'] >= TARGET_CACHED]}. "
        f"Other processes: {result['foreign_cpu']['cached']} cores.",
    ]
    return "\n".join(lines) + "\n"


# -- the run ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--patients", type=int, default=20)
    p.add_argument(
        "--layout",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[2, 2, 2],
        help="studies per patient in north,south,east",
    )
    p.add_argument("--series", type=int, default=3)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--requests", type=int, default=120, help="cold rounds (one request to each facade per round)")
    p.add_argument("--phase-seconds", type=float, default=240.0, help="time cap of the cold phase")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of each wrk run")
    p.add_argument("--rounds", type=int, default=5, help="wrk runs per facade, in turns")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--compare-split",
        type=int,
        default=0,
        metavar="N",
        help="experiment: also time a three-source facade with instance_query_split N in the cold loop",
    )
    p.add_argument("--pin", default="0:1", help='facade cores ":" wrk cores (taskset); "" to not pin')
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet-wait", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "federation.json")
    p.add_argument("--from-json", type=Path, help="measure nothing: print the tables of an earlier --out file")
    args = p.parse_args(argv)
    if len(args.layout) != len(SOURCES) or min(args.layout) < 1:
        p.error("--layout takes three positive counts (north,south,east)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install wrk)")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    version = code_version()
    data, patients, layout = build_data(args)
    workdir = Path(tempfile.mkdtemp(prefix="facade-federation-"))
    try:
        with contextlib.ExitStack() as stack:
            pacs = {name: stack.enter_context(OrthancServer()) for name, _ in SOURCES}
            for name, server in pacs.items():
                print(f"storing {len(data[name])} instances in {name} (pid {server.pid})", file=sys.stderr)
                store(server.dicomweb_url, data[name], batch=50, workers=2)
            config = workdir / "federation.toml"
            config.write_text(config_toml(pacs))
            env = {"FACADE_CACHE_TTL": "86400", "FACADE_LOG_LEVEL": "warning"}
            facades = {
                THREE: stack.enter_context(
                    FacadeProcess(
                        "",  # no FACADE_DICOMWEB_URL: [[sources]] and dicomweb_url are mutually exclusive
                        env=env,
                        log=workdir / "three.log",
                        args=["--config", str(config)],
                    )
                )
            }
            if args.compare_split:  # experiment: a second three-source facade, another instance_query_split
                facades[f"{THREE}-split{args.compare_split}"] = stack.enter_context(
                    FacadeProcess(
                        "",
                        env=env | {"FACADE_INSTANCE_QUERY_SPLIT": str(args.compare_split)},
                        log=workdir / "three-split.log",
                        args=["--config", str(config)],
                    )
                )
            for name, _ in SOURCES:
                facades[f"one-{name}"] = stack.enter_context(
                    FacadeProcess(pacs[name].dicomweb_url, env=env, log=workdir / f"one-{name}.log")
                )
            origins = {k: f"http://127.0.0.1:{f.port}" for k, f in facades.items()}
            fpids = {k: f.pid for k, f in facades.items()}
            opids = {name: s.pid for name, s in pacs.items()}
            paths = {k: patient_paths(patients, DOMAIN) for k in facades if k.startswith(THREE)}
            paths |= {f"one-{n}": patient_paths(patients, None if n == "north" else DOMAIN) for n, _ in SOURCES}
            studies = {k: sum(layout.values()) for k in paths} | {f"one-{n}": layout[n] for n, _ in SOURCES}
            check_answers(origins, paths, studies)
            everyone = [*fpids.values(), *opids.values()]
            three_calls = asyncio.run(record_three(config, paths[THREE]))
            single_calls = record_singles(pacs, paths)
            replays = {
                # the three-source facade's own calls, straight to the archives
                "replay-three": [[three_calls[p]] for p in paths[THREE]],
                # each archive asked only its one-PACS chain (its own studies), the three at once
                "chains-three": [
                    [single_calls[n][paths[f"one-{n}"][i]] for n, _ in SOURCES] for i in range(len(patients))
                ],
            }

            print(f"cold: {args.requests} rounds", file=sys.stderr)
            waited = {"cold": asyncio.run(wait_quiet(everyone, args.quiet_wait))}
            foreign = ForeignCpu(everyone)
            cold_result = asyncio.run(cold(origins, paths, replays, fpids, pacs, args.requests, args.phase_seconds))
            foreign_cpu = {"cold": foreign.cores()}
            singles = {k: v for k, v in cold_result.items() if k.startswith("one-")}
            ref = max(singles, key=lambda k: singles[k]["p50_ms"])
            print(json.dumps({k: v["p50_ms"] for k, v in cold_result.items()}), file=sys.stderr)

            print(f"cached: three vs {ref}, {args.rounds} x {args.duration:g} s each", file=sys.stderr)
            waited["cached"] = asyncio.run(wait_quiet(everyone, args.quiet_wait))
            foreign = ForeignCpu(everyone)
            wrk_cpus = pin([fpids[THREE], fpids[ref]], args.pin)
            pair = [THREE, ref]
            cached_result = cached(
                {k: origins[k] for k in pair}, paths, {k: fpids[k] for k in pair}, args, wrk_cpus, workdir
            )
            foreign_cpu["cached"] = foreign.cores()
            for k, f in facades.items():
                if not f.alive:
                    raise BenchError(f"facade {k} died during the run")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    three = cold_result[THREE]
    result: dict[str, Any] = {
        "meta": {
            "date": started,
            "code": version,
            "machine": machine_info(),
            "command": "python bench/federation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "dataset": {
                "patients": len(patients),
                "layout": "/".join(str(layout[n]) for n, _ in SOURCES),
                "series": args.series,
                "instances": args.instances,
                "instances_total": sum(len(v) for v in data.values()),
            },
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "waited_for_quiet_s": waited,
            "targets": {"cold_three_over_slowest_one_max": TARGET_COLD, "cached_three_over_one_min": TARGET_CACHED},
        },
        "studies": studies | dict.fromkeys(replays, studies[THREE]),
        "reference": ref,
        "cold": cold_result,
        "cached": cached_result,
        "ratios": {
            "cold_p50": round(three["p50_ms"] / cold_result[ref]["p50_ms"], 3),
            "cold_mean": round(three["mean_ms"] / cold_result[ref]["mean_ms"], 3),
            "cold_p50_vs_mean_single": round(
                three["p50_ms"] / statistics.mean(v["p50_ms"] for v in singles.values()), 3
            ),
            "cached": cached_result["ratio"],
            "three_over_replay": round(three["p50_ms"] / cold_result["replay-three"]["p50_ms"], 3),
            "replay_over_chains": round(
                cold_result["replay-three"]["p50_ms"] / cold_result["chains-three"]["p50_ms"], 3
            ),
            "chains_over_one": round(cold_result["chains-three"]["p50_ms"] / cold_result[ref]["p50_ms"], 3),
            "three_kinds_over_one": {
                k: round(v["p50_ms"] / cold_result[ref]["p50_ms"], 3)
                for k, v in cold_result.items()
                if k.startswith(THREE)
            },
        },
        "foreign_cpu": foreign_cpu,
    }
    result["verdicts"] = {
        "cold": result["ratios"]["cold_p50"] <= TARGET_COLD,
        "cached": result["ratios"]["cached"] >= TARGET_CACHED,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
