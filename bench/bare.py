"""Warm facade vs. a bare ASGI app returning the same bytes (issue 14, item 1), with wrk.

    python bench/bare.py [--patients 20 --studies-per-patient 5 --big-series 20 --big-instances 100
                          --duration 8 --rounds 4 --concurrency 8 --auth open,smart --pin 0:1 --out bench/bare.json]

A private Orthanc (tests.support.orthanc) holds ``--patients x --studies-per-patient`` studies of 3 series x 4
instances (tests.support.dataset.build_bulk) plus one large study of ``--big-series x --big-instances``
instances. For each auth mode the facade runs as a subprocess (``python -m app``, one uvicorn worker,
FACADE_CACHE_TTL=86400); every URL of a scenario is asked twice (the cache is filled), and the second answer's
bytes and content type are handed to the **bare app**: uvicorn (one worker, same options) + Starlette with one
catch-all route that returns those bytes for that path and query. Then ``wrk -t1 -c<concurrency>`` cycles
through the same URLs (with the same Authorization header in smart mode) against the facade and the bare app,
in turns (``--rounds``, each ``--duration / --rounds`` seconds), the servers on one core and wrk on the other
(``--pin``). The median of the rounds' ratios facade / bare is issue 19's warm target (>= 50 %); beside it the
same ratio per CPU-second of each server, which a busy neighbour on the server's core cannot bend.

``--serve FILE --port N`` is the bare app itself (started by this script as a subprocess).
Every process started here is stopped by PID; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.fhir import patient_ids  # noqa: E402
from bench.run import BenchError, free_port, run_wrk, wait_quiet  # noqa: E402
from tests.support.dataset import build_bulk  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer  # noqa: E402

FHIR = "/fhir/R4"
ACCEPT = {"Accept": "application/fhir+json"}
SCOPE = "user/*.read"


def serve(table_file: Path, port: int) -> None:
    """The bare app: the facade's answer bytes by path + query, nothing else."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    table = {k: (bytes.fromhex(body), ctype) for k, (body, ctype) in json.loads(table_file.read_text()).items()}

    async def answer(request: Request) -> Response:
        key = request.url.path + ("?" + request.url.query if request.url.query else "")
        found = table.get(key)
        if found is None:
            return Response(b"not found", 404)
        return Response(found[0], media_type=found[1])

    app = Starlette(routes=[Route("/{path:path}", answer)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", server_header=False, access_log=False)


def scenarios(manifest: Any, big_uid: str, seed: int) -> dict[str, tuple[str, list[str]]]:
    rng = random.Random(seed)
    five = [patient_ids.encode(pid, issuer) for pid, issuer in manifest.patients]
    uids = [s.study_uid for s in manifest.studies]
    year = f"{FHIR}/ImagingStudy?started=ge2019-01-01&started=lt2020-01-01&_count=20"
    uid = f"{FHIR}/ImagingStudy?identifier=urn:dicom:uid%7Curn:oid:"
    return {
        "patient": ("patient search (5 studies)", [f"{FHIR}/ImagingStudy?patient=Patient/{p}" for p in five[:10]]),
        "range": ("one-year range, _count=20", [year]),
        "uid": ("UID lookup (1 study)", [uid + u for u in rng.sample(uids, 10)]),
        "big_read": ("read of the large study", [f"{FHIR}/ImagingStudy/{big_uid}"]),
    }


def build_data(args: argparse.Namespace) -> tuple[list[Any], Any, str]:
    """The small studies, plus the large one under a patient of its own (build_bulk numbers every data set's
    patients from BULK000001, so without the new PatientID the large study would join that patient's search)."""
    datasets, manifest = build_bulk(args.patients, args.studies_per_patient, 3, 4, seed=args.seed)
    big, big_manifest = build_bulk(1, 1, args.big_series, args.big_instances, seed=args.seed + 1000)
    for ds in big:
        ds.PatientID = "BULKBIG001"
    return [*datasets, *big], manifest, big_manifest.studies[0].study_uid


def capture(origin: str, paths: list[str], headers: dict[str, str]) -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    with httpx.Client(base_url=origin, timeout=120, trust_env=False) as client:
        for path in paths:
            for _ in range(2):  # the first fills the cache
                response = client.get(path, headers=headers)
                if response.status_code != 200:
                    raise BenchError(f"{path} -> {response.status_code}: {response.text[:300]}")
            table[path] = (response.content.hex(), response.headers["content-type"])
    return table


class Bare:
    def __init__(self, table: dict[str, tuple[str, str]], workdir: Path) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        path = workdir / f"bare-{self.port}.json"
        path.write_text(json.dumps(table))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(path), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.origin + "/", timeout=1).status_code == 404:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise BenchError("the bare app did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # this PID only
            self.proc.wait(timeout=10)


def pin(pids: list[int], spec: str) -> str | None:
    """``spec`` "SERVER:CLIENT" (cores, e.g. "0:1"): every thread of the servers on SERVER, and the client's cores
    returned for wrk; "" leaves scheduling to the kernel."""
    if not spec:
        return None
    server, _, client = spec.partition(":")
    for pid in pids:
        subprocess.run(["taskset", "-a", "-cp", server, str(pid)], check=True, capture_output=True)
    return client or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--studies-per-patient", type=int, default=5)
    p.add_argument("--big-series", type=int, default=20)
    p.add_argument("--big-instances", type=int, default=100)
    p.add_argument("--duration", type=float, default=8.0, help="seconds of wrk per server and scenario, in all")
    p.add_argument("--rounds", type=int, default=4, help="facade and bare take turns this many times")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--auth", default="open,smart")
    p.add_argument("--scenarios", default="patient,range,uid,big_read")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pin", default="0:1", help='server cores ":" wrk cores (taskset); "" to not pin')
    p.add_argument("--quiet-wait", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "bare.json")
    return p.parse_args(argv)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| auth | scenario | facade req/s | bare req/s | **facade / bare** | per CPU-second | facade p50 ms "
        "| bare p50 ms | facade CPU | bare CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['auth']} | {r['label']} | {r['facade_rps']:,.0f} | {r['bare_rps']:,.0f} | **{r['ratio']:.1%}** "
            f"| {r.get('cpu_ratio', 0.0):.1%} | {r['facade_p50_ms']} | {r['bare_p50_ms']} | {r['facade_cpu']} "
            f"| {r.get('bare_cpu', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install wrk)")
    datasets, manifest, big_uid = build_data(args)
    chosen = scenarios(manifest, big_uid, args.seed)
    keys = [k for k in args.scenarios.split(",") if k]
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="facade-bare-"))
    try:
        with OrthancServer() as pacs:
            print(f"storing {len(datasets)} instances", file=sys.stderr)
            store(pacs.dicomweb_url, datasets, batch=50, workers=2)
            for auth in args.auth.split(","):
                env = {"FACADE_CACHE_TTL": "86400"}
                headers = dict(ACCEPT)
                if auth == "smart":
                    issuer = TokenIssuer()
                    env |= {
                        "FACADE_AUTH_MODE": "smart",
                        "FACADE_JWKS_FILE": str(issuer.write_jwks(workdir)),
                        "FACADE_TOKEN_ISSUER": ISSUER,
                        "FACADE_TOKEN_AUDIENCE": AUDIENCE,
                    }
                    headers |= issuer.headers(SCOPE, lifetime=3600, sub="bench-bare")
                with FacadeProcess(pacs.dicomweb_url, env=env, log=workdir / "facade.log") as facade:
                    origin = f"http://127.0.0.1:{facade.port}"
                    for key in keys:
                        label, paths = chosen[key]
                        bare = Bare(capture(origin, paths, headers), workdir)
                        try:
                            pids = [facade.pid, bare.proc.pid, pacs.pid]
                            asyncio.run(wait_quiet(pids, args.quiet_wait))
                            # The server on one core, wrk on the other (issue 19: "wrk ... on its own core").
                            wrk_cpus = pin([facade.pid, bare.proc.pid], args.pin)
                            # Facade and bare in turns, --rounds times: a neighbour that slows one core for a
                            # while slows both, and the median of the per-round ratios is the figure.
                            seconds = args.duration / args.rounds
                            fs, bs = [], []
                            for _ in range(args.rounds):
                                for out, where, pid in ((fs, origin, facade.pid), (bs, bare.origin, bare.proc.pid)):
                                    out.append(
                                        run_wrk(
                                            where,
                                            paths,
                                            headers,
                                            args.concurrency,
                                            seconds,
                                            workdir,
                                            pid,
                                            cpus=wrk_cpus,
                                        )
                                    )
                        finally:
                            bare.stop()
                        row = {
                            "auth": auth,
                            "scenario": key,
                            "label": label,
                            "facade_rps": statistics.mean(f.req_s for f in fs),
                            "bare_rps": statistics.mean(b.req_s for b in bs),
                            "ratio": statistics.median(f.req_s / b.req_s for f, b in zip(fs, bs, strict=True)),
                            # requests per CPU-second of the server: what a busy neighbour cannot bend
                            "cpu_ratio": statistics.median(
                                (f.req_s / f.server_cpu) / (b.req_s / b.server_cpu)
                                for f, b in zip(fs, bs, strict=True)
                                if f.server_cpu and b.server_cpu
                            ),
                            "facade_p50_ms": round(statistics.median(f.p50_ms for f in fs), 2),
                            "bare_p50_ms": round(statistics.median(b.p50_ms for b in bs), 2),
                            "facade_cpu": round(statistics.mean(f.server_cpu or 0.0 for f in fs), 2),
                            "bare_cpu": round(statistics.mean(b.server_cpu or 0.0 for b in bs), 2),
                            "errors": sum(f.errors for f in fs) + sum(b.errors for b in bs),
                        }
                        print(json.dumps(row), file=sys.stderr)
                        rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
