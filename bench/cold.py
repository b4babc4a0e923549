"""Cold facade answers vs. the raw QIDO-RS calls behind them (issue 14, item 2; issue 19, the cold path).

    flock /tmp/bench.lock python bench/cold.py [--patients 20 --studies-per-patient 5 --big-series 20
                          --big-instances 100 --requests 120 --splits 2,1 --out bench/cold.json]

Same data and the same four scenarios as bench/bare.py (patient search, one-year range ``_count=20``, UID lookup,
read of a 2,000-instance study) in a private Orthanc. Each facade request is sent with ``Cache-Control: no-cache``,
so every upstream call is made again. Two references, timed in the same loop, request by request, in a shuffled
order (one keep-alive connection each):

* **chain**: the QIDO-RS calls a DICOMweb client needs for the same content, made as such a client must make them:
  the study query first, then one instance query for the StudyInstanceUIDs the first answer gave (concurrent
  only when the UIDs are known up front: the UID lookup and the read). These are exactly the upstream calls the
  facade made at c610b7f (``--check-chain`` prints the facade's recorded calls, to compare). Issue 19's
  targets: cold ≤ 0.90 x chain for the patient search and the range, ≤ 1.10 x for the UID lookup, ≤ 1.00 x for the
  read of the large study.
* **replay**: the facade's own upstream calls now (recorded in-process with the default settings, as bench/run.py
  does), replayed to Orthanc with the same concurrency: what the facade adds on top of the PACS work it asks for.

The facade runs once per ``--splits`` value (``instance_query_split``; default 2 and 1, two processes), every one
timed in the same shuffled loop, so "split 2 vs split 1" is a same-run comparison. Also the number of upstream calls
per request (recorded) and Orthanc's CPU ms per request for each kind (from /proc: whether the facade asks the PACS
for more work or only waits less; issue 19: PACS CPU per page ≤ 1.10 x split 1's). Every process started here is
stopped by PID; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.dicom.qido import INSTANCE_FIELDS, STUDY_FIELDS, QidoQuery, uid_list  # noqa: E402
from app.fhir import patient_ids  # noqa: E402
from bench.bare import build_data, scenarios  # noqa: E402
from bench.run import (  # noqa: E402
    COLD_HEADERS,
    BenchError,
    Call,
    Scenario,
    client_for,
    cpu_seconds,
    get,
    raw_search,
    record_calls,
    wait_quiet,
)
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402

DICOM_JSON = {"Accept": "application/dicom+json"}
INSTANCE_LIMIT = 20000  # the facade's default instance_limit: rows per instance-level request


def _url(base: str, query: QidoQuery) -> str:
    return f"{base}/{query.path}"


def _instances(uids: list[str]) -> QidoQuery:
    keys = {"StudyInstanceUID": uid_list(sorted(uids))}
    return QidoQuery.build("instances", keys, fields=INSTANCE_FIELDS, limit=INSTANCE_LIMIT)


def _study_uids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["0020000D"]["Value"][0] for r in rows if r.get("0020000D", {}).get("Value")]


async def chain(client: httpx.AsyncClient, base: str, path: str, count: int) -> int:
    """The calls a DICOMweb client makes for the content of one facade answer; returns the number of calls."""
    keys, known = _chain_keys(path)
    if known is not None:
        study = QidoQuery.build("studies", {"StudyInstanceUID": uid_list(known)}, fields=STUDY_FIELDS)
        await asyncio.gather(
            get(client, _url(base, study), DICOM_JSON), get(client, _url(base, _instances(known)), DICOM_JSON)
        )
        return 2
    study = QidoQuery.build("studies", keys, fields=STUDY_FIELDS, limit=count + 1)
    rows = (await get(client, _url(base, study), DICOM_JSON)).json()
    uids = _study_uids(rows)[:count]
    if not uids:
        return 1
    await get(client, _url(base, _instances(uids)), DICOM_JSON)
    return 2


def _chain_keys(path: str) -> tuple[dict[str, str], list[str] | None]:
    """The QIDO keys of the scenario's facade path (bench/bare.py's four shapes only)."""
    parts = urlsplit(path)
    if "/ImagingStudy/" in parts.path:
        return {}, [unquote(parts.path.rsplit("/", 1)[1])]
    query = parse_qsl(parts.query)
    for name, value in query:
        if name == "patient":
            pid, issuer = patient_ids.decode(value.split("/", 1)[1])
            return {"PatientID": pid} | ({"IssuerOfPatientID": issuer} if issuer else {}), None
        if name == "identifier":
            return {}, [value.rsplit(":", 1)[1]]
    dates = [v for n, v in query if n == "started"]
    if dates == ["ge2019-01-01", "lt2020-01-01"]:
        return {"StudyDate": "20181231-20200102"}, None  # as the facade asks: widened by a day each side (zones)
    raise BenchError(f"no chain for {path}")


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2) if values else float("nan")


def mean_ms(values: list[float]) -> float:
    return round(statistics.fmean(values) * 1000, 2) if values else float("nan")


async def measure(
    sc: Scenario,
    base: str,
    facades: dict[int, str],
    orthanc_pid: int,
    requests: int,
    count: int,
    max_seconds: float,
) -> dict[str, Any]:
    """``facades``: instance_query_split -> the facade's origin; the first is "cold", each also "cold<split>"."""
    splits = list(facades)
    kinds = ["chain", "replay", *(f"cold{k}" for k in splits)]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    pacs_cpu = dict.fromkeys(times, 0.0)
    rng = random.Random(11)
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(client_for(2, upstream=True))
        clients = {k: await stack.enter_async_context(client_for(1, base_url=url)) for k, url in facades.items()}
        paths = (sc.paths * (requests // len(sc.paths) + 1))[:requests]
        # one untimed round of each, to open the connections
        await chain(upstream, base, paths[0], count)
        await raw_search(upstream, sc.calls[paths[0]])
        for fc in clients.values():
            await get(fc, paths[0], COLD_HEADERS)
        deadline = time.monotonic() + max_seconds
        for path in paths:
            if time.monotonic() > deadline:
                break
            order = list(kinds)
            rng.shuffle(order)
            for kind in order:
                cpu0 = cpu_seconds(orthanc_pid)
                t0 = time.perf_counter()
                if kind == "chain":
                    await chain(upstream, base, path, count)
                elif kind == "replay":
                    await raw_search(upstream, sc.calls[path])
                else:
                    await get(clients[int(kind.removeprefix("cold"))], path, COLD_HEADERS)
                times[kind].append(time.perf_counter() - t0)
                pacs_cpu[kind] += cpu_seconds(orthanc_pid) - cpu0
    n = len(times["chain"])
    calls = [len(sc.calls[p]) for p in dict.fromkeys(sc.paths)]
    main, ref = f"cold{splits[0]}", f"cold{splits[-1]}"
    p50 = {k: statistics.median(v) for k, v in times.items()}
    cpu = {k: v / n * 1000 for k, v in pacs_cpu.items()}
    return {
        "scenario": sc.key,
        "label": sc.title,
        "requests": n,
        "splits": splits,
        "facade_calls": max(calls),
        "chain_p50_ms": median_ms(times["chain"]),
        "replay_p50_ms": median_ms(times["replay"]),
        "cold_p50_ms": median_ms(times[main]),
        **{f"cold_split{k}_p50_ms": median_ms(times[f"cold{k}"]) for k in splits},
        "cold_over_chain_p50": round(p50[main] / p50["chain"], 3),
        "cold_over_chain_mean": round(statistics.fmean(times[main]) / statistics.fmean(times["chain"]), 3),
        **{f"split{k}_over_chain_p50": round(p50[f"cold{k}"] / p50["chain"], 3) for k in splits},
        "cold_over_replay_p50": round(p50[main] / p50["replay"], 3),
        "pacs_cpu_ms": {k: round(v, 2) for k, v in cpu.items()},
        "pacs_cpu_cold_over_chain": round(cpu[main] / cpu["chain"], 3) if cpu["chain"] else None,
        "pacs_cpu_cold_over_reference": round(cpu[main] / cpu[ref], 3) if cpu[ref] else None,
        "example_calls": [c.url.split("/", 3)[-1] for c in sc.calls[sc.paths[0]]],
    }


def check_chain(sc: Scenario, base: str) -> None:
    """Before issue 14 item 2 the facade's calls were the chain; say where they differ now."""
    for path in dict.fromkeys(sc.paths):
        calls: list[Call] = sc.calls[path]
        print(f"{sc.key}: {path} -> {[c.url.removeprefix(base) for c in calls]}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--studies-per-patient", type=int, default=5)
    p.add_argument("--big-series", type=int, default=20)
    p.add_argument("--big-instances", type=int, default=100)
    p.add_argument(
        "--requests", type=int, default=120, help="facade requests per scenario (each with its two references)"
    )
    p.add_argument("--phase-seconds", type=float, default=90.0, help="at most this long per scenario")
    p.add_argument("--scenarios", default="patient,range,uid,big_read")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet-wait", type=float, default=20.0)
    p.add_argument("--check-chain", action="store_true", help="print the facade's recorded calls per path")
    p.add_argument(
        "--splits",
        default="2,1",
        help="instance_query_split of each facade process; the first is the one measured against the chain, "
        "the last the CPU reference",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "cold.json")
    return p.parse_args(argv)


def markdown(rows: list[dict[str, Any]]) -> str:
    splits = rows[0]["splits"] if rows else [2, 1]
    main, ref = splits[0], splits[-1]
    lines = [
        f"| request (cold, no-cache) | upstream calls (split {main}) | chain p50 ms | replay p50 ms "
        + "".join(f"| facade split {k} p50 ms " for k in splits)
        + f"| **split {main} / chain** p50 (mean) | split {ref} / chain | facade / replay "
        f"| Orthanc CPU ms per page: chain / split {main}"
        + (f" / split {ref} | CPU split {main} / split {ref} |" if ref != main else " |"),
        "|---|---:|---:|---:|" + "---:|" * len(splits) + "---:|---:|---:|---:|" + ("---:|" if ref != main else ""),
    ]
    for r in rows:
        cpu = r["pacs_cpu_ms"]
        cpu_cells = f"{cpu['chain']} / {cpu[f'cold{main}']}" + (f" / {cpu[f'cold{ref}']}" if ref != main else "")
        lines.append(
            f"| {r['label']} | {r['facade_calls']} | {r['chain_p50_ms']} | {r['replay_p50_ms']} "
            + "".join(f"| {r[f'cold_split{k}_p50_ms']} " for k in splits)
            + f"| **{r['cold_over_chain_p50']:.2f}x** ({r['cold_over_chain_mean']:.2f}x) "
            f"| {r[f'split{ref}_over_chain_p50']:.2f}x | {r['cold_over_replay_p50']:.2f}x | {cpu_cells} "
            + (f"| {r['pacs_cpu_cold_over_reference']:.2f}x |" if ref != main else "|")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets, manifest, big_uid = build_data(args)
    chosen = scenarios(manifest, big_uid, args.seed)
    keys = [k for k in args.scenarios.split(",") if k]
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="facade-cold-"))
    origin = "http://facade.bench"
    try:
        with OrthancServer() as pacs:
            print(f"storing {len(datasets)} instances", file=sys.stderr)
            store(pacs.dicomweb_url, datasets, batch=50, workers=2)
            plans = [Scenario(k, chosen[k][0], chosen[k][1]) for k in keys]
            asyncio.run(record_calls(plans, pacs.dicomweb_url, origin))
            env = {"FACADE_CACHE_TTL": "86400", "FACADE_AUTH_MODE": "open", "FACADE_LOG_LEVEL": "warning"}
            splits = [int(k) for k in args.splits.split(",") if k]
            with contextlib.ExitStack() as stack:
                facades = {
                    k: stack.enter_context(
                        FacadeProcess(
                            pacs.dicomweb_url,
                            env=env | {"FACADE_INSTANCE_QUERY_SPLIT": str(k)},
                            log=workdir / f"facade-{k}.log",
                        )
                    )
                    for k in splits
                }
                for sc in plans:
                    if args.check_chain:
                        check_chain(sc, pacs.dicomweb_url)
                    asyncio.run(wait_quiet([*(f.pid for f in facades.values()), pacs.pid], args.quiet_wait))
                    row = asyncio.run(
                        measure(
                            sc,
                            pacs.dicomweb_url,
                            {k: f"http://127.0.0.1:{f.port}" for k, f in facades.items()},
                            pacs.pid,
                            args.requests,
                            20,
                            args.phase_seconds,
                        )
                    )
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
