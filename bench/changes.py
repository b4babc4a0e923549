"""Following Orthanc's change log (issue 22): the follower's requests to the PACS, idle and per new instance while a
2,000-instance study is stored, and the cached patient-search rate against today's TTL-only facade.

    flock /tmp/bench.lock python bench/changes.py [--patients 20 --studies-per-patient 3 --ingest-series 4
        --ingest-instances 500 --idle 10 --concurrency 8 --configs orthanc,dicomweb --rounds 2
        --out bench/changes.json]

One private Orthanc (tests.support.orthanc) holds ``--patients x --studies-per-patient`` studies of 3 series x 4
instances (tests.support.dataset.build_bulk). Two facade configurations (``python -m app``, one worker, open mode)
are measured one after the other against it:

* ``dicomweb``: today's, FACADE_PACS_KIND=dicomweb, FACADE_CACHE_TTL=60 (no follower);
* ``orthanc``: FACADE_PACS_KIND=orthanc, FACADE_CACHE_TTL=3600, the change log followed every second (default).

QIDO goes straight to Orthanc; FACADE_ORTHANC_URL points at a small counting reverse proxy (a thread of this script)
in front of the same Orthanc, so every request the follower makes is counted by path (``/changes``, ``/statistics``,
and the lookups of where a change was: ``/series/{id}``, ``/instances/{id}/series``, ``/studies/{id}``).
Other requests through it (``POST /tools/find``: meta.lastUpdated, asked by a search that missed the cache with
pacs_kind = orthanc) are counted apart, as "other REST requests": they are the search's, not the follower's. The
configurations take turns ``--rounds`` times, each turn storing a study of its own (new UIDs).

Phases per configuration, after every patient-search URL was asked twice (the cache is warm):

1. idle: ``wrk -t1 -c<concurrency>`` over the patient searches of 10 patients for ``--idle`` s, nothing stored; the
   follower's requests in that window (target <= 12 per 10 s) and the cached req/s.
2. ingest: a new study of ``--ingest-series x --ingest-instances`` instances (8x8 images) for the first of those
   patients is stored through STOW-RS (``--batch`` instances per request, one at a time) by a thread, while wrk runs
   in 2 s slices until it is done: the follower's requests from the first STOW to the moment the new study showed,
   per new instance (target about <= 1), the search req/s during ingestion, and the share of answers that were
   cache hits (the facade's /metrics gauges, QIDO cache and finished-answer cache, deltas over the phase).
3. visibility: after the last STOW answered, the patient's search is asked every 0.1 s until its bundle holds the new
   study with all its instances (at most ``--visible-wait`` s): the delay is reported.

Every process started here is stopped by PID; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.fhir import patient_ids  # noqa: E402
from bench.run import BenchError, Load, code_version, cpu_seconds, free_port, run_wrk  # noqa: E402
from tests.support.dataset import build_bulk  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402

FHIR = "/fhir/R4"
ACCEPT = {"Accept": "application/fhir+json"}
CONFIGS = {
    "dicomweb": {"FACADE_PACS_KIND": "dicomweb", "FACADE_CACHE_TTL": "60"},
    "orthanc": {"FACADE_PACS_KIND": "orthanc", "FACADE_CACHE_TTL": "3600"},
}
GAUGES = ("facade_cache_hits", "facade_cache_misses", "facade_answer_cache_hits", "facade_answer_cache_misses")


class CountingProxy:
    """A reverse proxy to Orthanc's REST API that counts what passes (path without query: /changes, /statistics)."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self._host, self._port = target.hostname or "127.0.0.1", target.port or 80
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    key = self.path.split("?", 1)[0]
                    proxy.counts[key] = proxy.counts.get(key, 0) + 1
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _forward
            do_POST = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


SEARCH_PATHS = ("/tools/find",)  # the search's REST requests (meta.lastUpdated on a cache miss)


def follower(counts: dict[str, int]) -> int:
    """The follower's requests: /changes, /statistics, and the lookups of where a change was (GET /series/{id},
    /instances/{id}/series, /studies/{id}, /patients/{id}); POST /tools/find is a search's, not the follower's."""
    return sum(v for k, v in counts.items() if k not in SEARCH_PATHS)


def others(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k in SEARCH_PATHS)


def metrics(origin: str) -> dict[str, float]:
    text = httpx.get(origin + "/metrics", timeout=10, trust_env=False).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)$", line)
        if m and (m.group(1) in GAUGES or m.group(1).startswith("facade_change_feed_polls")):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def ingest_study(base: list[Any], patient_id: str, series: int, instances: int, seed: int) -> tuple[list[Any], str]:
    """A new study of ``series x instances`` for an existing patient (its name, birth date and sex copied)."""
    datasets, manifest = build_bulk(1, 1, series, instances, seed=seed)
    model = next(ds for ds in base if ds.PatientID == patient_id)
    for ds in datasets:
        ds.PatientID = patient_id
        ds.PatientName = model.PatientName
        ds.PatientBirthDate = model.PatientBirthDate
        ds.PatientSex = model.PatientSex
    return datasets, manifest.studies[0].study_uid


def shows(client: httpx.Client, path: str, study_uid: str, count: int) -> bool:
    r = client.get(path, headers=ACCEPT)
    if r.status_code != 200:
        return False
    for entry in r.json().get("entry", []):
        res = entry.get("resource", {})
        ids = [i.get("value", "") for i in res.get("identifier", [])]
        if any(v.endswith(study_uid) for v in ids) and res.get("numberOfInstances") == count:
            return True
    return False


def combine(loads: list[Load]) -> dict[str, Any]:
    total = sum(x.requests for x in loads)
    seconds = sum(x.seconds for x in loads)
    return {
        "req_s": round(total / seconds, 1) if seconds else 0.0,
        "requests": total,
        "seconds": round(seconds, 1),
        "errors": sum(x.errors for x in loads),
        "p50_ms_median_of_slices": sorted(x.p50_ms for x in loads)[len(loads) // 2] if loads else None,
        "p95_ms_of_slices": [x.p95_ms for x in loads],
        "facade_cpu": round(sum((x.server_cpu or 0.0) * x.seconds for x in loads) / seconds, 2) if seconds else 0.0,
        "slices": len(loads),
    }


def hit_share(m0: dict[str, float], m1: dict[str, float]) -> dict[str, Any]:
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in GAUGES}
    qido = d["facade_cache_hits"] + d["facade_cache_misses"]
    answers = d["facade_answer_cache_hits"] + d["facade_answer_cache_misses"]
    return {
        "qido_hits": int(d["facade_cache_hits"]),
        "qido_misses": int(d["facade_cache_misses"]),
        "answer_hits": int(d["facade_answer_cache_hits"]),
        "answer_misses": int(d["facade_answer_cache_misses"]),
        "qido_hit_share": round(d["facade_cache_hits"] / qido, 4) if qido else None,
        "answer_hit_share": round(d["facade_answer_cache_hits"] / answers, 4) if answers else None,
    }


def run_config(
    config: str,
    pacs: OrthancServer,
    proxy: CountingProxy,
    paths: list[str],
    new: tuple[list[Any], str],
    args: argparse.Namespace,
    workdir: Path,
    rnd: int,
) -> dict[str, Any]:
    env = dict(CONFIGS[config])
    if config == "orthanc":
        env["FACADE_ORTHANC_URL"] = proxy.url
    datasets, study_uid = new
    watched = paths[0]  # the patient the new study belongs to
    row: dict[str, Any] = {"config": config, "round": rnd, "cache_ttl_s": int(env["FACADE_CACHE_TTL"])}
    with FacadeProcess(pacs.dicomweb_url, env=env, log=workdir / f"facade-{config}.log") as facade:
        origin = f"http://127.0.0.1:{facade.port}"
        with httpx.Client(base_url=origin, timeout=60, trust_env=False) as client:
            for path in paths:
                for _ in range(2):
                    r = client.get(path, headers=ACCEPT)
                    if r.status_code != 200:
                        raise BenchError(f"{path} -> {r.status_code}: {r.text[:300]}")
            time.sleep(2.5)  # the follower has started and positioned itself
            # 1. idle
            c0, m0, t0 = proxy.snapshot(), metrics(origin), time.monotonic()
            idle = run_wrk(origin, paths, dict(ACCEPT), args.concurrency, args.idle, workdir, facade.pid)
            c1, m1, t1 = proxy.snapshot(), metrics(origin), time.monotonic()
            idle_requests = delta(c1, c0)
            row["idle"] = {
                "seconds": round(t1 - t0, 1),
                "follower_requests": follower(idle_requests),
                "rest_requests_by_path": idle_requests,
                "other_rest_requests": others(idle_requests),
                "follower_requests_per_10s": round(follower(idle_requests) * 10 / (t1 - t0), 1),
                "req_s": idle.req_s,
                "p50_ms": idle.p50_ms,
                "p95_ms": idle.p95_ms,
                "errors": idle.errors,
                "facade_cpu": idle.server_cpu,
                "feed_polls": delta_metrics(m1, m0, "facade_change_feed_polls"),
            } | hit_share(m0, m1)
            print(json.dumps({"config": config, "idle": row["idle"]}), file=sys.stderr)
            # 2. ingest, searched meanwhile
            stored: dict[str, Any] = {}

            def ingest() -> None:
                stored["t0"] = time.monotonic()
                try:
                    stored["n"] = store(pacs.dicomweb_url, datasets, batch=args.batch, workers=1)
                except Exception as exc:  # reported, not raised in a thread
                    stored["error"] = repr(exc)
                stored["t1"] = time.monotonic()
                stored["c3"], stored["orthanc_cpu1"] = proxy.snapshot(), cpu_seconds(pacs.pid)
                if "error" in stored:
                    return
                # 3. visibility of the new study, complete: asked from here, at once (wrk's last slice still runs)
                with httpx.Client(base_url=origin, timeout=60, trust_env=False) as own:
                    while time.monotonic() - stored["t1"] < args.visible_wait:
                        if shows(own, watched, study_uid, len(datasets)):
                            stored["seen"] = time.monotonic()
                            break
                        time.sleep(0.1)

            c2, m2, orthanc_cpu0 = proxy.snapshot(), metrics(origin), cpu_seconds(pacs.pid)
            thread = threading.Thread(target=ingest)
            thread.start()
            slices: list[Load] = []
            while "t1" not in stored:  # wrk in 2 s slices while the STOW requests go on
                slices.append(run_wrk(origin, paths, dict(ACCEPT), args.concurrency, 2, workdir, facade.pid))
            m3 = metrics(origin)
            thread.join()
            if "error" in stored:
                raise BenchError(f"ingestion failed: {stored['error']}")
            c3 = stored["c3"]
            ingest_seconds = stored["t1"] - stored["t0"]
            seen_at = stored.get("seen")
            c4 = proxy.snapshot()
            during = delta(c4, c2)
            n = stored["n"]
            row["ingest"] = {
                "instances": n,
                "stow_requests": -(-n // args.batch),
                "ingest_seconds": round(ingest_seconds, 1),
                "instances_per_s": round(n / ingest_seconds, 1),
                "orthanc_cpu_during": round((stored["orthanc_cpu1"] - orthanc_cpu0) / ingest_seconds, 2),
                "follower_requests": follower(during),
                "rest_requests_by_path": during,
                "other_rest_requests": others(during),
                "follower_requests_until_last_stored": follower(delta(c3, c2)),
                "follower_requests_per_instance": round(follower(during) / n, 4),
                "search": combine(slices),
                "visible_after_s": round(seen_at - stored["t1"], 2) if seen_at else None,
                "visible_wait_cap_s": args.visible_wait,
                "feed_polls": delta_metrics(m3, m2, "facade_change_feed_polls"),
            } | hit_share(m2, m3)
            print(json.dumps({"config": config, "ingest": row["ingest"]}), file=sys.stderr)
    return row


def delta_metrics(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, int]:
    return {
        k.removeprefix(prefix): int(v - before.get(k, 0.0))
        for k, v in after.items()
        if k.startswith(prefix) and not k.endswith("_created") and "_created{" not in k and v - before.get(k, 0.0)
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        "| round | config | idle: follower requests / 10 s | idle: cached search req/s (p50 ms) | ingest: instances, s "
        "| follower requests (per new instance) | other REST requests | search req/s in ingest (p50 / worst p95 ms) "
        "| QIDO cache hits | answer-cache hits | new study complete in search after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        i, g = r["idle"], r["ingest"]
        share = lambda v: f"{v:.1%}" if v is not None else "-"  # noqa: E731
        visible = f"{g['visible_after_s']} s" if g["visible_after_s"] is not None else f"> {g['visible_wait_cap_s']} s"
        lines.append(
            f"| {r.get('round', 1)} | {r['config']} (TTL {r['cache_ttl_s']} s) | {i['follower_requests_per_10s']} "
            f"| {i['req_s']:,.0f} ({i['p50_ms']}) | {g['instances']:,}, {g['ingest_seconds']} "
            f"| {g['follower_requests']} ({g['follower_requests_per_instance']:.3f}) | {g['other_rest_requests']} "
            f"| {g['search']['req_s']:,.0f} ({g['search']['p50_ms_median_of_slices']} / "
            f"{max(g['search'].get('p95_ms_of_slices') or [0])}) "
            f"| {share(g['qido_hit_share'])} | {share(g['answer_hit_share'])} | {visible} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--studies-per-patient", type=int, default=3)
    p.add_argument("--ingest-series", type=int, default=4)
    p.add_argument("--ingest-instances", type=int, default=500, help="per series")
    p.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase")
    p.add_argument("--visible-wait", type=float, default=65.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--configs", default="orthanc,dicomweb")
    p.add_argument("--rounds", type=int, default=2, help="the configurations take turns this many times")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "changes.json")
    p.add_argument("--from-json", type=Path, help="print the table of an earlier --out file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install wrk)")
    configs = [c for c in args.configs.split(",") if c]
    base, manifest = build_bulk(args.patients, args.studies_per_patient, 3, 4, seed=args.seed)
    patients = manifest.patients[:10]
    paths = [f"{FHIR}/ImagingStudy?patient=Patient/{patient_ids.encode(pid, issuer)}" for pid, issuer in patients]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="facade-changes-"))
    try:
        with OrthancServer() as pacs:
            print(f"storing {len(base)} instances", file=sys.stderr)
            store(pacs.dicomweb_url, base, batch=50, workers=2)
            proxy = CountingProxy(pacs.url)
            try:
                for n, config in enumerate(configs * args.rounds):
                    # a study of its own per configuration (new UIDs), for the first searched patient
                    new = ingest_study(
                        base, patients[0][0], args.ingest_series, args.ingest_instances, args.seed + 100 + n
                    )
                    rows.append(run_config(config, pacs, proxy, paths, new, args, workdir, n // len(configs) + 1))
            finally:
                proxy.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "started": started,
        "code": code_version(),
        "command": "python bench/changes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "concurrency": args.concurrency,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"run {started}, app at {result['code']}, wrk -t1 -c{args.concurrency}, unpinned")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
