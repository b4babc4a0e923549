"""WADO-RS gateway benchmark (issue 12): a full-study retrieve through the facade vs straight to Orthanc, in one run.

    python bench/wado.py [--series 20 --instances 100 --rounds 5 --concurrency 8] [--out bench/wado.json]

One study of ``series x instances`` small synthetic instances (tests.support.dataset.build_bulk, 8x8 pixels) is
stored in a private Orthanc; the facade runs as a subprocess in open mode (``python -m app``, defaults otherwise).
Each round asks both for ``GET /studies/{uid}`` with ``Accept: multipart/related; type="application/dicom";
transfer-syntax=*`` (the stored bytes), interleaved (direct first on even rounds), reading the body as it
streams: time to first body byte, total time, bytes, throughput. The facade's RSS (``/proc/<pid>/status``) is
sampled every 20 ms while it streams. Then ``--concurrency`` retrieves at once, each way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dataset import build_bulk  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssPeak:
    """Samples a process's RSS in a thread while in the ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self) -> RssPeak:
        self.start = rss_mib(self.pid)
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def retrieve(url: str) -> dict[str, float]:
    """One streamed GET: seconds to the first body byte, total seconds, bytes."""
    started = time.perf_counter()
    first = None
    n = 0
    with httpx.stream("GET", url, headers={"Accept": ACCEPT}, timeout=120) as r:
        assert r.status_code == 200, r.status_code
        for chunk in r.iter_raw(65536):
            if first is None:
                first = time.perf_counter() - started
            n += len(chunk)
    total = time.perf_counter() - started
    return {"ttfb": first or total, "seconds": total, "bytes": n}


def concurrent(url: str, k: int) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(k) as pool:
        results = list(pool.map(retrieve, [url] * k))
    seconds = time.perf_counter() - started
    total = sum(r["bytes"] for r in results)
    return {
        "seconds": seconds,
        "bytes": total,
        "mb_per_s": total / seconds / 1e6,
        "ttfb_p50_ms": statistics.median(r["ttfb"] for r in results) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "wado.json"))
    args = ap.parse_args()
    datasets, manifest = build_bulk(1, 1, args.series, args.instances, seed=12)
    (study,) = manifest.studies
    with OrthancServer() as orthanc:
        t = time.perf_counter()
        for i in range(0, len(datasets), 200):
            store(orthanc.dicomweb_url, datasets[i : i + 200])
        print(f"stored {len(datasets)} instances in {time.perf_counter() - t:.1f} s", flush=True)
        with FacadeProcess(orthanc.dicomweb_url) as facade:
            root = facade.base.removesuffix("/fhir/R4")
            gateway = f"{root}/dicomweb/studies/{study.study_uid}"
            direct = f"{orthanc.dicomweb_url}/studies/{study.study_uid}"
            retrieve(gateway), retrieve(direct)  # warm-up: the facade's QIDO cache, Orthanc's file cache
            rows: dict[str, list[dict[str, float]]] = {"gateway": [], "direct": []}
            peaks: list[float] = []
            base_rss = rss_mib(facade.pid)
            for i in range(args.rounds):
                order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                for way in order:
                    if way == "gateway":
                        with RssPeak(facade.pid) as peak:
                            rows[way].append(retrieve(gateway))
                        peaks.append(peak.peak - peak.start)
                    else:
                        rows[way].append(retrieve(direct))
            with RssPeak(facade.pid) as peak_c:
                conc_gateway = concurrent(gateway, args.concurrency)
            conc_direct = concurrent(direct, args.concurrency)
            end_rss = rss_mib(facade.pid)

    def summary(way: str) -> dict[str, float]:
        r = rows[way]
        return {
            "bytes": r[0]["bytes"],
            "seconds_p50": statistics.median(x["seconds"] for x in r),
            "mb_per_s_p50": statistics.median(x["bytes"] / x["seconds"] / 1e6 for x in r),
            "ttfb_ms_p50": statistics.median(x["ttfb"] for x in r) * 1000,
        }

    g, d = summary("gateway"), summary("direct")
    result = {
        "instances": len(datasets),
        "rounds": args.rounds,
        "gateway": g,
        "direct": d,
        "throughput_ratio": g["mb_per_s_p50"] / d["mb_per_s_p50"],
        "ttfb_delta_ms": g["ttfb_ms_p50"] - d["ttfb_ms_p50"],
        "rss_growth_mib_max": max(peaks),
        "rss_mib_start": base_rss,
        "rss_mib_end": end_rss,
        "concurrent": {
            "k": args.concurrency,
            "gateway": conc_gateway,
            "direct": conc_direct,
            "throughput_ratio": conc_gateway["mb_per_s"] / conc_direct["mb_per_s"],
            "rss_growth_mib": peak_c.peak - peak_c.start,
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
